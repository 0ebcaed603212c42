"""Checkpoints: a resumed run is the same run (every leaf bit-equal, the same output records), after a stop,
a SIGTERM or a SIGKILL at any moment including mid-save; bad files are refused with one sentence, exit 2 and
nothing written; a pickle is never unpickled."""

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from agent_environment_interaction_loop import jit_block, make_block_function
from environments import environment_from_config, seed_environments
from experiment import cli, runner
from experiment.config import load_config
from initialization import make_agent
from runtime import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG = os.path.join(ROOT, "configs", "debug.json")
COMMON = ["-c", DEBUG, "--wandb", "disabled", "--no_progress", "--set", "checkpoint_frequency=50"]


def run_main(*args, single_seed=False) -> int:
    return cli.script_main([*COMMON, *args], description="test", single_seed=single_seed)


def start_script(*args, sleep_in_save: float):
    env = {**os.environ, checkpoint.TEST_SLEEP_ENV: str(sleep_in_save), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "dreamer_multiseed.py"), *COMMON, *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout=120.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def arrays(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files if key != checkpoint.HEADER_KEY}


def header(path) -> dict:
    return checkpoint.read_header(str(path))


def records(path) -> list[dict]:
    """Output records without their wall-clock field."""
    lines = [json.loads(line) for line in open(path)]
    return [{k: v for k, v in r.items() if k != "steps_per_second"} for r in lines]


def assert_same_run(ckpt_a, out_a, ckpt_b, out_b):
    a, b = arrays(ckpt_a), arrays(ckpt_b)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
    assert records(out_a) == records(out_b)


def file_hash(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, debug_run):
    """An uninterrupted 200-step run (started with --load_checkpoint of a missing file: the suite's shared
    debug_run) and a run stopped at 100 steps, one seed each."""
    folder = tmp_path_factory.mktemp("reference")
    for name in ("full.out", "full.ckpt"):
        shutil.copyfile(debug_run / name, folder / name)
    half = folder / "half"
    assert run_main("-o", f"{half}.out", "--save_checkpoint", f"{half}.ckpt", "--set", "num_steps=100") == 0
    return folder


def test_missing_checkpoint_warns_and_starts_fresh(reference):
    assert header(reference / "full.ckpt")["env_steps"] == 200
    assert len(records(reference / "full.out")) == 4


@pytest.mark.parametrize("num_seeds", [1, 2])
def test_stop_and_resume_is_the_uninterrupted_run(reference, tmp_path, num_seeds):
    if num_seeds == 1:
        full = reference / "full"
    else:
        full = tmp_path / "full"
        assert run_main("-o", f"{full}.out", "--save_checkpoint", f"{full}.ckpt", "--set", "num_seeds=2") == 0
        half = tmp_path / "half"
        assert run_main("-o", f"{half}.out", "--save_checkpoint", f"{half}.ckpt", "--set", "num_seeds=2",
                        "--set", "num_steps=100") == 0
    half = tmp_path / "half"
    if num_seeds == 1:
        for suffix in (".out", ".ckpt"):
            (tmp_path / f"half{suffix}").write_bytes((reference / f"half{suffix}").read_bytes())
    assert header(f"{half}.ckpt")["env_steps"] == 100
    # Raising num_steps (200 is the config's value) is what "run for more steps" does.
    assert run_main("-o", f"{half}.out", "--save_checkpoint", f"{half}.ckpt", "--load_checkpoint", f"{half}.ckpt",
                    "--set", f"num_seeds={num_seeds}") == 0
    assert_same_run(f"{full}.ckpt", f"{full}.out", f"{half}.ckpt", f"{half}.out")
    assert len(records(f"{half}.out")) == 4 * num_seeds


def test_sigkill_during_a_save_resumes_to_the_same_run(reference, tmp_path):
    ckpt, out = tmp_path / "run.ckpt", tmp_path / "run.out"
    temp = tmp_path / "run.ckpt.tmp"
    process = start_script("-o", str(out), "--save_checkpoint", str(ckpt), sleep_in_save=1.0)
    try:
        # The checkpoint of step 50 exists and the one of step 100 is being written: the output file already
        # holds the records of step 100, which the resume must drop and write again.
        wait_for(lambda: ckpt.exists() and temp.exists() or process.poll() is not None)
        process.kill()
        process.wait()
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL
    assert header(ckpt)["env_steps"] == 50
    assert len(records(out)) == 2
    assert run_main("-o", str(out), "--save_checkpoint", str(ckpt), "--load_checkpoint", str(ckpt)) == 0
    assert_same_run(reference / "full.ckpt", reference / "full.out", ckpt, out)


def test_sigkill_between_saves_resumes_to_the_same_run(reference, tmp_path):
    ckpt, out = tmp_path / "run.ckpt", tmp_path / "run.out"
    process = start_script("-o", str(out), "--save_checkpoint", str(ckpt), sleep_in_save=0.5)
    try:
        wait_for(lambda: ckpt.exists() or process.poll() is not None)  # just after the save of step 50
        process.kill()
        process.wait()
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL and header(ckpt)["env_steps"] == 50
    assert run_main("-o", str(out), "--save_checkpoint", str(ckpt), "--load_checkpoint", str(ckpt)) == 0
    assert_same_run(reference / "full.ckpt", reference / "full.out", ckpt, out)


def test_sigterm_saves_exits_0_and_resumes(reference, tmp_path):
    ckpt, out = tmp_path / "run.ckpt", tmp_path / "run.out"
    process = start_script("-o", str(out), "--save_checkpoint", str(ckpt), sleep_in_save=1.0)
    try:
        wait_for(lambda: ckpt.exists() or process.poll() is not None)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "SIGTERM" in stderr and "--load_checkpoint" in stderr
    steps = header(ckpt)["env_steps"]
    assert 50 <= steps < 200 and len(records(out)) == steps // 50
    assert run_main("-o", str(out), "--save_checkpoint", str(ckpt), "--load_checkpoint", str(ckpt)) == 0
    assert_same_run(reference / "full.ckpt", reference / "full.out", ckpt, out)


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def rewrite(source, target, change):
    """Writes to `target` the checkpoint `source` with its arrays and header passed through change(arrays, header)."""
    entries = arrays(source)
    head = header(source)
    change(entries, head)
    entries[checkpoint.HEADER_KEY] = np.frombuffer(json.dumps(head).encode(), np.uint8)
    with open(target, "wb") as file:
        np.savez(file, **entries)


def make_bad_file(kind, good, path, marker):
    data = open(good, "rb").read()
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:])
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(RunsCodeWhenUnpickled(str(marker))))
    elif kind == "pickled_leaf":
        rewrite(good, path, lambda a, h: a.__setitem__(".obs", np.array([RunsCodeWhenUnpickled(str(marker))])))
    elif kind == "no_header":
        with open(path, "wb") as file:
            np.savez(file, **arrays(good))
    elif kind == "missing_leaf":
        rewrite(good, path, lambda a, h: a.pop(".rssm_h"))
    elif kind == "extra_leaf":
        rewrite(good, path, lambda a, h: a.__setitem__(".surplus", np.zeros(3)))
    elif kind == "shape":
        rewrite(good, path, lambda a, h: a.__setitem__(".rssm_h", np.zeros((1, 33), np.float32)))
    elif kind == "dtype":
        rewrite(good, path, lambda a, h: a.__setitem__(".rssm_h", a[".rssm_h"].astype(np.float64)))
    elif kind == "version":
        rewrite(good, path, lambda a, h: h.__setitem__("format_version", 99))


@pytest.mark.parametrize("kind,args,expected", [
    ("text", [], "not a checkpoint"),
    ("truncated", [], "truncated or corrupt"),
    ("corrupt", [], "corrupt"),
    ("pickle", [], "pickle"),
    ("pickled_leaf", [], "pickled data in leaf '.obs'"),
    ("no_header", [], "not a checkpoint"),
    ("missing_leaf", [], "'.rssm_h'"),
    ("extra_leaf", [], "'.surplus'"),
    ("shape", [], "'.rssm_h'"),
    ("dtype", [], "'.rssm_h'"),
    ("version", [], "format version 99"),
    ("good", ["--set", "num_seeds=2"], "num_seeds"),
    ("good", ["--set", "batch_size=8"], "batch_size"),
    ("good", ["--set", "num_steps=50"], "num_steps"),
    ("good", ["-s", "3"], "seed"),
])
def test_bad_checkpoint_exits_2_and_writes_nothing(reference, tmp_path, capsys, kind, args, expected):
    ckpt, out, marker = tmp_path / "bad.ckpt", tmp_path / "run.out", tmp_path / "pwned"
    if kind == "good":
        ckpt.write_bytes((reference / "half.ckpt").read_bytes())
    else:
        make_bad_file(kind, reference / "half.ckpt", ckpt, marker)
    out.write_text('{"seed": 0}\n')
    before = {path: file_hash(path) for path in (ckpt, out)}
    capsys.readouterr()
    assert run_main("-o", str(out), "--save_checkpoint", str(ckpt), "--load_checkpoint", str(ckpt), *args) == 2
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and str(ckpt) in lines[0] and expected in lines[0], stderr
    assert "Traceback" not in stderr
    assert {path: file_hash(path) for path in (ckpt, out)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt", "run.out"]
    assert not marker.exists()


def test_resume_refuses_an_output_file_that_is_not_the_runs(reference, tmp_path, capsys):
    for suffix in (".out", ".ckpt"):
        (tmp_path / f"half{suffix}").write_bytes((reference / f"half{suffix}").read_bytes())
    out = tmp_path / "half.out"
    out.write_text("")
    assert run_main("-o", str(out), "--load_checkpoint", str(tmp_path / "half.ckpt"),
                    "--save_checkpoint", str(tmp_path / "half.ckpt")) == 2
    assert "does not start with" in capsys.readouterr().err and out.read_text() == ""


def test_block_schedule_matches_an_uninterrupted_run():
    assert runner.block_schedule(0, 200, 50) == [50, 50, 50, 50]
    assert runner.block_schedule(100, 200, 50) == [50, 50]
    assert runner.block_schedule(0, 120, 50) == [50, 50, 20]
    assert runner.block_schedule(120, 200, 50) == [30, 50]
    assert runner.block_schedule(200, 200, 50) == []


def test_a_resumed_run_compiles_the_fresh_runs_program(tmp_path):
    # The persistent compilation cache finds a program by its text. MinAtar's env state has leaves gymnax
    # builds from Python ints (weak-typed), which a checkpoint gives back strong: the fresh state must already
    # be strong, or a resume lowers to another program and compiles it again (as it did before).
    config = load_config(DEBUG, ["env_config.env_name=SpaceInvaders-MinAtar", "binary_state=true"])
    env = environment_from_config(config)
    agent = make_agent(config, env)
    envs = seed_environments(env, range(1), jax_env=True)
    fresh = runner.initial_state(config, agent, envs, seed=0)
    assert not [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(fresh) if x.weak_type]
    path = str(tmp_path / "run.ckpt")
    checkpoint.save(path, fresh, {})
    loaded, _ = checkpoint.load(path, runner.state_shapes(config, agent, envs))
    block = jit_block(make_block_function(config, agent, envs, 10))
    assert block.lower(loaded).as_text() == block.lower(fresh).as_text()


def test_unwritable_checkpoint_path_exits_2_before_running(tmp_path, capsys):
    assert run_main("-o", str(tmp_path / "run.out"), "--save_checkpoint", str(tmp_path / "no" / "run.ckpt")) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "run.out").exists()


def test_a_resume_may_change_the_update_seed_batch_but_not_the_model():
    # update_seed_batch is a speed and memory setting (its default differs between CPU and GPU), so a run
    # saved on one device resumes on another; checkpoints written before the key existed resume too.
    stored = {"num_seeds": 2, "batch_size": 50, "env_config": {"env_name": "Catch-bsuite"}}
    assert checkpoint.config_differences(stored, {**stored, "update_seed_batch": 2}) == []
    assert checkpoint.config_differences({**stored, "update_seed_batch": 1}, {**stored, "update_seed_batch": 0}) == []
    assert checkpoint.config_differences(stored, {**stored, "batch_size": 8}) == ["batch_size (checkpoint 50, now 8)"]


def leafwise_moments(entries: dict, head: dict) -> None:
    """Rewrites a checkpoint's optimizer moments into the layout written before they were flat vectors: one
    array per parameter, keyed below the moment's path like the parameter below `.params.NETWORK`."""
    rewritten = {}
    for key, value in entries.items():
        match = re.fullmatch(r"\.opt_states\.(\w+)\[1\]\[0\]\.(mu|nu)", key)
        if not match:
            rewritten[key] = value
            continue
        prefix = f".params.{match.group(1)}"
        params = [(k, v) for k, v in entries.items() if k.startswith(prefix + "[")]
        assert len(params) > 1 and sum(v.size for _, v in params) == value.size
        offsets = np.cumsum([v[0].size for _, v in params])[:-1]
        for (name, param), part in zip(params, np.split(value, offsets, axis=-1)):
            rewritten[key + name[len(prefix):]] = part.reshape(param.shape)
    entries.clear()
    entries.update(rewritten)


def test_a_checkpoint_with_leafwise_optimizer_moments_resumes_to_the_same_run(reference, tmp_path):
    # Checkpoints written before the optimizer ran on flat vectors hold one moment array per parameter.
    half = tmp_path / "half"
    rewrite(reference / "half.ckpt", f"{half}.ckpt", leafwise_moments)
    assert any(k.startswith(".opt_states.world_model[1][0].mu['") for k in arrays(f"{half}.ckpt"))
    (tmp_path / "half.out").write_bytes((reference / "half.out").read_bytes())
    assert run_main("-o", f"{half}.out", "--save_checkpoint", f"{half}.ckpt", "--load_checkpoint", f"{half}.ckpt") == 0
    assert_same_run(reference / "full.ckpt", reference / "full.out", f"{half}.ckpt", f"{half}.out")


OPTIONS_ADDED_SINCE = ("return_normalization", "return_scale_decay", "actor_unimix", "sweep")


def test_a_checkpoint_older_than_the_return_scale_resumes_with_it_at_zero(reference, tmp_path):
    # Checkpoints written before the return scale (the EMA of the imagined returns' spread) was part of the run
    # state, and before the config keys added with and after it: a resume starts the scale at 0, its initial
    # value, and reads the missing keys as their defaults. The reference stops at env step 100, before its first
    # update, where the scale is still 0: so the resume is the uninterrupted run, leaf for leaf.
    assert arrays(reference / "half.ckpt")[".return_scale"] == 0
    half = tmp_path / "half"

    def make_older(entries, head):
        entries.pop(".return_scale")
        for key in OPTIONS_ADDED_SINCE:
            head["config"].pop(key)

    rewrite(reference / "half.ckpt", f"{half}.ckpt", make_older)
    assert ".return_scale" not in arrays(f"{half}.ckpt")
    (tmp_path / "half.out").write_bytes((reference / "half.out").read_bytes())
    assert run_main("-o", f"{half}.out", "--save_checkpoint", f"{half}.ckpt", "--load_checkpoint", f"{half}.ckpt") == 0
    assert arrays(reference / "full.ckpt")[".return_scale"] > 0  # tracked once training runs
    assert_same_run(reference / "full.ckpt", reference / "full.out", f"{half}.ckpt", f"{half}.out")
