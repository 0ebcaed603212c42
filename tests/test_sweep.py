"""Hyper-parameter sweeps (--sweep KEY=V1,V2): every variant x seed is one run of one program, the same run as a
plain run with that value and seed; its records, wandb runs, plots and checkpoints name the variant; keys
that change shapes or control flow, and values their key refuses, are refused with one sentence."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from output_records import assert_same_run_records
from wandb_file_reader import read_offline_run

from experiment import cli
from experiment.config import SWEEPABLE_KEYS, ConfigError, load_config, sweep_variants, variant_name, with_sweep
from outputs import plot_metric
from outputs.wandb_runs import Tracker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG = os.path.join(ROOT, "configs", "debug.json")
COMMON = ["-c", DEBUG, "--wandb", "disabled", "--no_progress", "--set", "num_steps=300"]
SWEEP = ["--sweep", "beta=0.001,0.3", "--sweep", "pi_alpha=0.0001,0.001"]
WALL_CLOCK = ("steps_per_second",)


def run_main(*args, single_seed=False) -> int:
    return cli.script_main([*COMMON, *args], description="test", single_seed=single_seed)


def records(path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in open(path)]


def by_run(path) -> dict[tuple[str, int], list[dict]]:
    runs = {}
    for record in records(path):
        runs.setdefault((record.get("variant", ""), record["seed"]), []).append(record)
    return runs


def without_variant(rows):
    return [{k: v for k, v in r.items() if k not in ("variant", "hparams")} for r in rows]


def test_the_variants_are_the_grid_of_the_swept_values():
    config = with_sweep(load_config(DEBUG), ["beta=0.001,0.3", "pi_alpha=1e-4,1e-3", "discount=0.9"])
    assert config.sweep == {"beta": [0.001, 0.3], "pi_alpha": [1e-4, 1e-3], "discount": [0.9]}
    assert [variant_name(v) for v in sweep_variants(config)] == [
        "beta=0.001,pi_alpha=0.0001,discount=0.9", "beta=0.001,pi_alpha=0.001,discount=0.9",
        "beta=0.3,pi_alpha=0.0001,discount=0.9", "beta=0.3,pi_alpha=0.001,discount=0.9"]
    assert config.num_runs == 4 * config.num_seeds
    assert sweep_variants(load_config(DEBUG)) == [{}] and load_config(DEBUG).num_runs == 1
    # a config file may hold the sweep itself; --sweep replaces the file's list of the same key
    from_file = load_config(DEBUG, ['sweep={"beta": [0.01, 0.02]}'])
    assert with_sweep(from_file, ["beta=0.5,0.6"]).sweep == {"beta": [0.5, 0.6]}


@pytest.mark.parametrize("option,expected", [
    ("batch_size=8,16", "sweep key 'batch_size' changes shapes or control flow; the sweepable keys are model_alpha"),
    ("return_normalization=true,false", "sweep key 'return_normalization' changes shapes or control flow"),
    ("bta=0.1,0.2", "sweep key 'bta' is not a config key; the sweepable keys are"),
    ("beta=0.1,-1", "sweep.beta values must be >= 0, got -1.0"),
    ("discount=0.9,1.5", "sweep.discount values must be in [0, 1], got 1.5"),
    ("beta=0.1,high", "sweep.beta must be a finite number, got 'high'"),
    ("beta=0.1,0.1", "sweep.beta lists a value twice"),
    ("beta", "--sweep 'beta' must have the form KEY=V1,V2,..."),
])
def test_sweep_mistakes_exit_2_with_one_sentence(tmp_path, option, expected):
    output = tmp_path / "out.jsonl"
    for script in ("dreamer_multiseed.py", "dreamer_single_seed.py"):
        result = subprocess.run([sys.executable, os.path.join(ROOT, script), "-c", DEBUG, "-o", str(output),
                                 "--sweep", option], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
        assert not output.exists()


def test_every_sweepable_key_is_a_number_the_program_can_trace():
    # Each sweepable key is a float option; the swept config keeps the base config's other keys.
    config = load_config(DEBUG)
    for key in SWEEPABLE_KEYS:
        assert isinstance(getattr(config, key), float), key
        value = getattr(config, key)
        with_sweep(config, [f"{key}={value},{value / 2 if value else 0.5}"])
    with pytest.raises(ConfigError):
        with_sweep(config, ["num_seeds=1,2"])


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """4 variants x 2 seeds, updates one run at a time, and the plain single-seed runs of two of its runs."""
    folder = tmp_path_factory.mktemp("sweep")
    assert run_main("-o", str(folder / "sweep.out"), "--save_checkpoint", str(folder / "sweep.ckpt"),
                    "--set", "num_seeds=2", "--set", "update_seed_batch=1", *SWEEP) == 0
    for beta, pi_alpha, seed in (("0.3", "0.001", 1), ("0.001", "0.0001", 0)):
        assert run_main("-o", str(folder / f"plain_{beta}_{seed}.out"), "--save_checkpoint", "", "-s", str(seed),
                        "--set", f"beta={beta}", "--set", f"pi_alpha={pi_alpha}", single_seed=True) == 0
    return folder


def test_a_variant_and_seed_is_the_plain_run_of_its_values_and_seed(sweep_run):
    runs = by_run(sweep_run / "sweep.out")
    assert sorted(runs) == sorted((f"beta={b},pi_alpha={p}", s) for b in ("0.001", "0.3") for p in ("0.0001", "0.001")
                                  for s in (0, 1))
    first = runs[("beta=0.3,pi_alpha=0.001", 1)][0]
    assert first["hparams"] == {"beta": 0.3, "pi_alpha": 0.001}
    # one run at a time, the update is the plain run's program with the values as inputs: the same run, to the
    # float rounding a program of another shape brings (output_records.assert_same_run_records)
    for variant, seed, plain in (("beta=0.3,pi_alpha=0.001", 1, "plain_0.3_1.out"),
                                 ("beta=0.001,pi_alpha=0.0001", 0, "plain_0.001_0.out")):
        assert_same_run_records(without_variant(runs[(variant, seed)]), records(sweep_run / plain))
    # and the variants differ from one another once training starts
    last = {run: rows[-1] for run, rows in runs.items()}
    assert last[("beta=0.3,pi_alpha=0.001", 1)]["actor_loss"] != last[("beta=0.001,pi_alpha=0.001", 1)]["actor_loss"]


def test_vmapped_updates_give_the_plain_runs_to_float_tolerance(sweep_run, tmp_path):
    out = tmp_path / "vmapped.out"
    assert run_main("-o", str(out), "--save_checkpoint", "", "--set", "num_seeds=2", *SWEEP) == 0
    vmapped = without_variant(by_run(out)[("beta=0.3,pi_alpha=0.001", 1)])
    plain = records(sweep_run / "plain_0.3_1.out")
    assert [r["env_steps"] for r in vmapped] == [r["env_steps"] for r in plain]
    for a, b in zip(vmapped, plain):
        for key, value in b.items():
            if isinstance(value, float):
                assert a[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
            else:
                assert a[key] == value, key


def test_a_sweep_resumes_from_its_checkpoint_and_refuses_another_sweep(sweep_run, tmp_path):
    half = tmp_path / "half"
    args = ["--set", "num_seeds=2", "--set", "update_seed_batch=1", *SWEEP]
    assert run_main("-o", f"{half}.out", "--save_checkpoint", f"{half}.ckpt", "--set", "num_steps=150", *args) == 0
    assert run_main("-o", f"{half}.out", "--save_checkpoint", f"{half}.ckpt", "--load_checkpoint", f"{half}.ckpt",
                    *args) == 0
    assert records(f"{half}.out") == records(sweep_run / "sweep.out")
    with np.load(f"{half}.ckpt") as resumed, np.load(sweep_run / "sweep.ckpt") as full:
        assert all(np.array_equal(resumed[k], full[k]) for k in full.files if k != "__header__")
        assert ".hparams['beta']" in full.files
    before = open(f"{half}.out").read()
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "dreamer_multiseed.py"), *COMMON, "-o", f"{half}.out",
         "--save_checkpoint", f"{half}.ckpt", "--load_checkpoint", f"{half}.ckpt", "--set", "num_seeds=2",
         "--sweep", "beta=0.001,0.2", "--sweep", "pi_alpha=0.0001,0.001"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "another config, differing in sweep.beta (checkpoint [0.001, 0.3], now [0.001, 0.2])" in result.stderr
    assert open(f"{half}.out").read() == before


def test_plot_metric_draws_and_ranks_the_variants(sweep_run, tmp_path, capsys):
    assert plot_metric.main([str(sweep_run / "sweep.out"), "--metric", "actor_loss", "--summary",
                             "-o", str(tmp_path / "plot.png")]) == 0
    table = capsys.readouterr().out.strip().splitlines()[2:]
    names = [line.split()[0] for line in table]
    assert sorted(names) == sorted(f"beta={b},pi_alpha={p}" for b in ("0.001", "0.3") for p in ("0.0001", "0.001"))
    finals = [float(line.split()[2]) for line in table]
    assert finals == sorted(finals, reverse=True) and all(line.split()[1] == "2" for line in table)
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_each_variant_and_seed_is_a_wandb_run_named_by_both(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    variants = [{"beta": 0.001}, {"beta": 0.001}, {"beta": 0.3}, {"beta": 0.3}]
    tracker = Tracker({"num_seeds": 2, "beta": 0.01, "env_config": {"env_name": "Catch-bsuite"}}, [0, 1, 0, 1], "g",
                      mode="offline", directory=str(tmp_path), variants=variants)
    tracker.log_block([{"seed": s, "variant": variant_name(v), "hparams": v, "env_steps": 50, "actor_loss": float(i)}
                       for i, (s, v) in enumerate(zip([0, 1, 0, 1], variants))])
    tracker.finish()
    files = sorted(str(p) for p in tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    runs = {run.name: run for run in map(read_offline_run, files)}
    assert set(runs) == {"g-beta=0.001-seed0", "g-beta=0.001-seed1", "g-beta=0.3-seed0", "g-beta=0.3-seed1"}
    run = runs["g-beta=0.3-seed1"]
    assert run.group == "g" and run.config["beta"] == 0.3 and run.config["variant"] == "beta=0.3"
    assert run.config["seed"] == 1 and run.config["num_seeds"] == 2
    assert [row["actor_loss"] for row in run.history] == [3.0]
