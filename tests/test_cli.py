"""End-to-end tests of the entry scripts: user mistakes exit 2 with one sentence and no traceback, nothing
is written; the debug config runs through both scripts and writes the documented JSON-lines records."""

import json
import os
import subprocess
import sys

import pytest

from experiment import cli

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


def test_config_mistakes_are_reported_before_jax_is_imported(tmp_path):
    # The scripts check the command line and config first (experiment/cli.py): a typo costs no JAX import (seconds).
    config = write_config(tmp_path, num_step=10)
    for script in ("dreamer_multiseed", "dreamer_single_seed"):
        code = f"import sys, {script}; print({script}.main(['-c', sys.argv[1]]), 'jax' in sys.modules)"
        result = subprocess.run([sys.executable, "-c", code, config], cwd=ROOT, capture_output=True, text=True,
                                timeout=600)
        assert result.stdout.split() == ["2", "False"], result.stderr
        assert result.stderr.strip() == "error: unknown config key 'num_step'; did you mean 'num_steps'?"


def test_a_config_from_a_pipe_is_read_once():
    # -c /dev/stdin (or <(jq ...)): the config is read once, before JAX, and reaches the env check intact.
    result = subprocess.run([sys.executable, os.path.join(ROOT, "dreamer_multiseed.py"), "-c", "/dev/stdin"],
                            input=json.dumps({"env_config": {"env_name": "Catchh-bsuite"}}), cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "'Catchh-bsuite' is not a registered gymnax environment" in result.stderr


def test_missing_config_file_exits_2(tmp_path):
    result = run_script("dreamer_multiseed.py", "-c", str(tmp_path / "nope.json"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "nope.json" in result.stderr


def test_debug_config_runs_end_to_end_and_writes_records(tmp_path, monkeypatch):
    # Run under the scripts' default compilation cache (cli.use_compilation_cache), not the suite's shared one,
    # then again: the second run loads every program it compiles and writes the same records.
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache = tmp_path / "xdg" / "dreamer-jax" / "xla"
    runs = []
    for run in range(2):
        output = tmp_path / f"metrics{run}.jsonl"
        result = run_script("dreamer_multiseed.py", "-c", "configs/debug.json", "-s", "7", "-o", str(output),
                            "--set", "num_seeds=2", "--set", "num_steps=150", "--wandb", "disabled",
                            "--save_checkpoint", "")
        assert result.returncode == 0, result.stderr
        runs.append([json.loads(line) for line in output.read_text().splitlines()])
        if run == 0:
            entries = {p.name for p in cache.iterdir()}
            assert any(name.startswith("jit_block-") for name in entries), entries
            assert cache.stat().st_mode & 0o777 == 0o700
    assert {p.name for p in cache.iterdir()} == entries  # nothing compiled anew: every program was loaded

    records = runs[0]
    assert len(records) == 2 * 3  # 2 seeds x 3 blocks of 50 steps
    assert {r["seed"] for r in records} == {7, 8}
    last = records[-1]
    assert last["env_steps"] == 150 and last["updates"] == (150 - 100) // 10
    for key in ("episodes", "episode_return", "model_loss", "actor_loss", "critic_loss", "actor_entropy"):
        assert key in last
    assert records[0]["model_loss"] is None  # no training in the first block
    assert "seed 7" in result.stdout and "seed 8" in result.stdout
    for first, second in zip(*runs, strict=True):  # the loaded programs compute the same numbers
        first.pop("steps_per_second"), second.pop("steps_per_second")
        assert first == second


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


def test_default_compilation_cache_folder(tmp_path):
    home_cache = os.path.join(os.path.expanduser("~"), ".cache", "dreamer-jax", "xla")
    assert cli.default_compilation_cache({}) == home_cache
    assert cli.default_compilation_cache({"XDG_CACHE_HOME": "/x"}) == os.path.join("/x", "dreamer-jax", "xla")
    assert cli.default_compilation_cache({"XDG_CACHE_HOME": "relative"}) == home_cache  # ignored, as XDG says
    assert cli.default_compilation_cache({"JAX_COMPILATION_CACHE_DIR": "/mine"}) is None  # the user's stands
    assert cli.default_compilation_cache({"DREAMER_NO_COMPILATION_CACHE": "1"}) is None

    environ = {"XDG_CACHE_HOME": str(tmp_path)}
    folder = cli.prepare_compilation_cache(environ)
    assert folder == environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "dreamer-jax" / "xla")
    assert os.stat(folder).st_mode & 0o777 == os.stat(os.path.dirname(folder)).st_mode & 0o777 == 0o700
    assert cli.prepare_compilation_cache(environ) == folder  # set: used as it is
    assert cli.prepare_compilation_cache({"DREAMER_NO_COMPILATION_CACHE": "1"}) is None
    assert cli.use_compilation_cache() is None  # jax is imported in this process: nothing is set


@pytest.mark.parametrize("writable", ["dreamer-jax", "dreamer-jax/xla"])
def test_a_cache_folder_others_can_write_to_is_not_used(tmp_path, capsys, writable):
    (tmp_path / "dreamer-jax" / "xla").mkdir(parents=True)
    (tmp_path / writable).chmod(0o777)
    environ = {"XDG_CACHE_HOME": str(tmp_path)}
    assert cli.prepare_compilation_cache(environ) is None
    assert "JAX_COMPILATION_CACHE_DIR" not in environ
    assert "writable by group or others; compiling without a cache" in capsys.readouterr().err


def test_a_cache_folder_that_cannot_be_created_is_not_used(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    environ = {"XDG_CACHE_HOME": str(tmp_path / "file")}
    assert cli.prepare_compilation_cache(environ) is None and "JAX_COMPILATION_CACHE_DIR" not in environ
    assert "unusable" in capsys.readouterr().err
