"""plot_metric.py: a PNG from two synthetic output files, --summary equal to a hand computation, errors exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from outputs import plot_metric

REPO = Path(__file__).resolve().parent.parent


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _record(seed, steps, value):
    return {"seed": seed, "env_steps": steps, "updates": steps // 10, "episodes": 1, "episode_return": value,
            "steps_per_second": 100.0, "model_loss": None}


@pytest.fixture
def outputs(tmp_path):
    """a.out: seed s returns s + t/100 at t = 100, 200, 300, except seed 0 at 300 (null) and seed 3 at 300 (20).
    b.out: every seed returns 3.0 at every block."""
    a_rows, b_rows = [], []
    for steps in (100, 200, 300):
        for seed in range(4):
            value = seed + steps / 100
            if steps == 300 and seed == 0:
                value = None
            if steps == 300 and seed == 3:
                value = 20.0
            a_rows.append(_record(seed, steps, value))
            b_rows.append(_record(seed, steps, 3.0))
    return _write(tmp_path / "a.out", a_rows), _write(tmp_path / "b.out", b_rows)


def _summary_rows(text):
    rows = {}
    for line in text.strip().splitlines()[2:]:
        label, seeds, *numbers = line.split()
        rows[label] = dict(zip(("final", "iqm", "ci_low", "ci_high"), map(float, numbers)), seeds=int(seeds))
    return rows


def test_cli_writes_a_png_from_two_files(outputs, tmp_path):
    png = tmp_path / "plot.png"
    done = subprocess.run([sys.executable, os.path.join("outputs", "plot_metric.py"), *outputs, "--metric",
                           "episode_return", "-o", str(png), "--smooth", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5_000


def test_summary_equals_hand_computation(outputs, capsys):
    assert plot_metric.main([*outputs, "--summary"]) == 0
    rows = _summary_rows(capsys.readouterr().out)
    # Last numeric value per seed of a.out: 2 (seed 0's last block is null), 4, 5, 20.
    finals = np.array([2.0, 4.0, 5.0, 20.0])
    a = rows["a.out"]
    assert a["seeds"] == 4
    assert a["final"] == pytest.approx(31 / 4, rel=1e-5)
    assert a["iqm"] == pytest.approx((4 + 5) / 2, rel=1e-5)  # 4 seeds: drop the lowest and highest
    interval = scipy.stats.bootstrap((finals,), np.mean, n_resamples=2000, method="percentile",
                                     rng=np.random.default_rng(plot_metric.RNG_SEED)).confidence_interval
    assert (a["ci_low"], a["ci_high"]) == (pytest.approx(interval.low, rel=1e-5),
                                           pytest.approx(interval.high, rel=1e-5))
    assert 2.0 <= a["ci_low"] < a["final"] < a["ci_high"] <= 20.0
    assert rows["b.out"] == {"seeds": 4, "final": 3.0, "iqm": 3.0, "ci_low": 3.0, "ci_high": 3.0}


def test_summary_over_last_k_values(outputs, capsys):
    assert plot_metric.main([outputs[0], "--summary", "--last", "2"]) == 0
    a = _summary_rows(capsys.readouterr().out)["a.out"]
    # Per seed, mean of the last two numeric values: 1.5, 3.5, 4.5, 12.5.
    assert a["final"] == pytest.approx(22 / 4, rel=1e-5)
    assert a["iqm"] == pytest.approx(4.0, rel=1e-5)


def test_smooth_and_iqm():
    smoothed = plot_metric.smooth(np.array([[1.0, np.nan, 3.0, 5.0, np.nan, np.nan]]), 2)
    np.testing.assert_allclose(smoothed, [[1.0, 1.0, 3.0, 4.0, 5.0, np.nan]])
    assert plot_metric.interquartile_mean(np.array([2.0, 4.0, 5.0, 20.0])) == pytest.approx(4.5)
    assert plot_metric.interquartile_mean(np.array([100.0, 1.0, 2.0, 3.0, 4.0])) == pytest.approx(3.0)


@pytest.mark.parametrize("case, message", [
    ("missing", "cannot read"),
    ("absent", "is not in"),
    ("null", "no numeric values"),
    ("badjson", "not valid JSON"),
    ("nothing", "nothing to do"),
])
def test_errors_exit_2_with_one_line(outputs, tmp_path, capsys, case, message):
    png = str(tmp_path / "x.png")
    argv = {
        "missing": [str(tmp_path / "missing.out"), "-o", png],
        "absent": [outputs[0], "--metric", "no_such_metric", "-o", png],
        "null": [outputs[0], "--metric", "model_loss", "--summary"],
        "badjson": [str(tmp_path / "bad.out"), "-o", png],
        "nothing": [outputs[0]],
    }[case]
    if case == "badjson":
        Path(argv[0]).write_text('{"seed": 0, "env_steps": 1}\n{not json\n')
    assert plot_metric.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("plot_metric.py: error:")
    assert not Path(png).exists()


def test_bootstrap_ci_per_column():
    # Column 0: every seed the same value, so every resample's mean is that value. Column 1: no numeric value.
    # Column 2: the CI lies inside the values' range and holds their mean. One seed: its value at both ends.
    values = np.array([[3.0, np.nan, 0.0], [3.0, np.nan, 1.0], [3.0, np.nan, 4.0], [3.0, np.nan, 7.0]])
    low, high = plot_metric.bootstrap_mean_ci(values)
    assert (low[0], high[0]) == (3.0, 3.0)
    assert np.isnan(low[1]) and np.isnan(high[1])
    assert 0.0 <= low[2] < 3.0 < high[2] <= 7.0
    np.testing.assert_array_equal(plot_metric.bootstrap_mean_ci(values[:1])[0], values[0])
