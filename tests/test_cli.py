"""End-to-end tests of the entry scripts: user mistakes exit 2 with one sentence and no traceback, nothing
is written; the debug config runs through both scripts and writes the documented JSON-lines records."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, *args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def write_config(tmp_path, **entries):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(entries))
    return str(path)


@pytest.mark.parametrize("entries,overrides,expected", [
    ({"num_step": 10}, [], "num_step"),
    ({"num_steps": "many"}, [], "num_steps"),
    ({"discount": 1.5}, [], "discount"),
    ({"env_config": {"env_name": "Catchh-bsuite"}}, [], "Catchh-bsuite"),
    ({"env_config": {"env_name": "Pendulum-v1"}}, [], "Pendulum-v1"),
    ({"env_config": {"env_name": "CartPole-v1"}}, [], "binary_state"),
    ({}, ["batch_size=abc"], "batch_size"),
    ({}, ["nonsense"], "nonsense"),
])
def test_user_mistakes_exit_2_with_one_sentence(tmp_path, entries, overrides, expected):
    config = write_config(tmp_path, **entries)
    output = tmp_path / "out.jsonl"
    set_args = [arg for o in overrides for arg in ("--set", o)]
    for script in ("dreamer_multiseed.py", "dreamer_single_seed.py"):
        result = run_script(script, "-c", config, "-o", str(output), *set_args)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
        assert not output.exists()


def test_missing_config_file_exits_2(tmp_path):
    result = run_script("dreamer_multiseed.py", "-c", str(tmp_path / "nope.json"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "nope.json" in result.stderr


def test_debug_config_runs_end_to_end_and_writes_records(tmp_path):
    output = tmp_path / "metrics.jsonl"
    result = run_script("dreamer_multiseed.py", "-c", "configs/debug.json", "-s", "7", "-o", str(output),
                        "--set", "num_seeds=2", "--set", "num_steps=150", "--wandb", "disabled")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 2 * 3  # 2 seeds x 3 blocks of 50 steps
    assert {r["seed"] for r in records} == {7, 8}
    last = records[-1]
    assert last["env_steps"] == 150 and last["updates"] == (150 - 100) // 10
    for key in ("episodes", "episode_return", "model_loss", "actor_loss", "critic_loss", "actor_entropy"):
        assert key in last
    assert records[0]["model_loss"] is None  # no training in the first block
    assert "seed 7" in result.stdout and "seed 8" in result.stdout


def test_two_seeds_log_two_offline_wandb_runs_in_one_group(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    result = run_script("dreamer_multiseed.py", "-c", os.path.join(ROOT, "configs", "debug.json"), "-g", "mygroup",
                        "--set", "num_seeds=2", "--set", "num_steps=100", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wandb group mygroup (offline)" in result.stdout
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert "wandb sync" in result.stderr
