"""Runs sharded over several devices and processes (devices.py) on forced CPU devices. XLA_FLAGS must force the
devices before JAX is imported, so every run here is a subprocess: tests/forced_devices.py for one process with 4
devices, the entry script for two processes of 2 devices each joined by jax.distributed.initialize on localhost.

The runs take one seed's update at a time (update_seed_batch=1), so a seed's training arithmetic is the same
wherever it runs and the training records are compared exactly. The model diagnostics are vmapped over a device's
runs, whose float rounding depends on how many a device holds: they are compared to float32 rounding."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from output_records import assert_same_run_records, records_without_timing

from experiment.config import ConfigError
from runtime import devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    folder = tmp_path_factory.mktemp("forced_devices")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "forced_devices.py"),
                             str(folder / "result.json"), str(folder)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((folder / "result.json").read_text())


def assert_same_records(actual, expected):
    key = lambda record: (record["seed"], record["env_steps"])  # noqa: E731
    actual, expected = sorted(actual, key=key), sorted(expected, key=key)
    assert [key(r) for r in actual] == [key(r) for r in expected]
    assert any("diag_kl" in r for r in expected) and any(r["updates"] > 0 for r in expected)
    assert_same_run_records(actual, expected)  # the same runs, to float rounding (output_records)


def test_four_seeds_on_four_and_two_devices_match_one_device(one_process):
    # run on 4 devices to env step 150 (3 blocks, the last one training), saved, resumed on 2 devices from the
    # sharded checkpoint to 200: the same records as on one device
    assert one_process["devices"] == 4
    reference = one_process["one_device"]
    assert len(reference) == 4 * 4  # 4 seeds x 4 blocks
    assert sum(r["env_steps"] == 150 and r["updates"] > 0 for r in reference) == 4
    assert_same_records(one_process["four_then_two_devices"], reference)


def test_a_seed_count_the_devices_cannot_share_is_refused_with_one_sentence(one_process):
    assert one_process["refused"] == ("3 seeds cannot be shared evenly by 4 devices; num_seeds must be a multiple "
                                      "of 4 (4, 8, 12, ...) on 4 devices, or make fewer devices visible "
                                      "(CUDA_VISIBLE_DEVICES)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_processes(folder, *args, devices_each=2, seeds=4):
    """The entry script as 2 processes of `devices_each` CPU devices each, joined on localhost: their (exit code,
    stderr)."""
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                                      + f" --xla_force_host_platform_device_count={devices_each}").strip())
    port = free_port()
    command = [sys.executable, os.path.join(ROOT, "dreamer_multiseed.py"), "-c",
               os.path.join(ROOT, "configs", "debug.json"), "--set", f"num_seeds={seeds}",
               "--set", "update_seed_batch=1", "--wandb", "disabled", "--no_progress", "-o", "run.out",
               "--save_checkpoint", "run.ckpt", "--coordinator_address", f"localhost:{port}", "--num_processes", "2",
               *args]
    processes = [subprocess.Popen(command + ["--process_id", str(i)], cwd=folder, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    return [(p.wait(timeout=600), p.communicate()[1]) for p in processes]


def test_two_processes_match_one_process_and_write_each_file_once(one_process, tmp_path):
    for code, stderr in two_processes(tmp_path, "--set", "num_steps=150"):
        assert code == 0, stderr[-3000:]
    for code, stderr in two_processes(tmp_path, "--load_checkpoint", "run.ckpt"):  # the same processes resume
        assert code == 0, stderr[-3000:]
    files = sorted(os.listdir(tmp_path))
    assert files == ["run.process0-of-2.ckpt", "run.process0-of-2.out", "run.process1-of-2.ckpt",
                     "run.process1-of-2.out"]
    first, second = (records_without_timing(tmp_path / f"run.process{i}-of-2.out") for i in range(2))
    assert {r["seed"] for r in first} == {0, 1} and {r["seed"] for r in second} == {2, 3}
    assert_same_records(first + second, one_process["one_device"])

    # one process cannot resume what two wrote: one sentence, exit 2, nothing written
    result = subprocess.run([sys.executable, os.path.join(ROOT, "dreamer_multiseed.py"), "-c",
                             os.path.join(ROOT, "configs", "debug.json"), "--set", "num_seeds=4", "--wandb", "disabled",
                             "-o", "run.out", "--load_checkpoint", "run.ckpt"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: checkpoint 'run.ckpt' was written by 2 processes (files run.process0-of-2.ckpt, ...), and this run "
        "has 1; resume it with 2 processes")
    assert sorted(os.listdir(tmp_path)) == files


def test_process_files_and_seed_count_multiple():
    assert devices.process_path("dreamer.out", 0, 1) == "dreamer.out"
    assert devices.process_path("out/run.ckpt", 1, 4) == "out/run.process1-of-4.ckpt"
    assert devices.process_path("", 1, 4) == ""
    assert devices.seed_count_multiple(8, 1) == 8
    assert devices.seed_count_multiple(8, 2) == 4  # 2 variants: 4 seeds make 8 runs
    assert devices.seed_count_multiple(4, 3) == 4


def test_two_processes_step_their_own_python_environments(one_process, tmp_path):
    # Catch through the Python drivers: each process holds the env object of its one seed, on its one device.
    # The Python drivers' float rounding differs from the compiled block's (tests/test_python_environments.py).
    for code, stderr in two_processes(tmp_path, "--set", "jax_env=false", "--set", "num_steps=150",
                                      devices_each=1, seeds=2):
        assert code == 0, stderr[-3000:]
    records = [records_without_timing(tmp_path / f"run.process{i}-of-2.out") for i in range(2)]
    assert [{r["seed"] for r in rs} for rs in records] == [{0}, {1}]
    reference = {(r["seed"], r["env_steps"]): r for r in one_process["one_device"]}
    trained = 0
    for record in records[0] + records[1]:
        expected = reference[record["seed"], record["env_steps"]]
        assert (record["episodes"], record["episode_return"], record["updates"]) == \
            (expected["episodes"], expected["episode_return"], expected["updates"])
        for name in (k for k in expected if k.endswith("loss") and expected[k] is not None):
            np.testing.assert_allclose(record[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)
            trained += 1
    assert trained > 0


class TwoProcesses:
    """What devices.checkpoint_to_load and check_checkpoint_runs read of a Placement: process 1 of 2."""
    process_index, process_count = 1, 2

    def process_path(self, path):
        return devices.process_path(path, 1, 2)


def test_a_checkpoint_is_resumed_by_as_many_processes_as_wrote_it(tmp_path):
    path = str(tmp_path / "run.ckpt")
    assert devices.checkpoint_process_count(path) is None
    assert devices.checkpoint_to_load(path, TwoProcesses()) is None  # nothing written yet: a fresh run
    for i in range(4):
        (tmp_path / f"run.process{i}-of-4.ckpt").write_bytes(b"")
    assert devices.checkpoint_process_count(path) == 4
    with pytest.raises(ConfigError, match=r"^checkpoint '.*run.ckpt' was written by 4 processes \(files "
                       r".*run.process0-of-4.ckpt, \.\.\.\), and this run has 2; resume it with 4 processes$"):
        devices.checkpoint_to_load(path, TwoProcesses())
    (tmp_path / "run.process1-of-2.ckpt").write_bytes(b"")
    assert devices.checkpoint_to_load(path, TwoProcesses()) == str(tmp_path / "run.process1-of-2.ckpt")

    header = {"processes": {"count": 2, "index": 1, "runs": [4, 8]}}
    devices.check_checkpoint_runs(path, header, TwoProcesses(), range(4, 8))
    with pytest.raises(ConfigError, match=r"holds runs \[4, 8\] of process 1 of 2, but this process 1 of 2 "
                       r"holds runs \[2, 4\]; resume it with the same processes and devices per process$"):
        devices.check_checkpoint_runs(path, header, TwoProcesses(), range(2, 4))


def test_joining_a_distributed_run_is_asked_for_and_checked():
    assert devices.initialize_distributed(environ={}) is False  # no flag, no launcher: one process
    assert devices.initialize_distributed(environ={"SLURM_NTASKS": "1"}) is False
    with pytest.raises(devices.DistributedError, match=r"^--process_id must be in 0\.\.1 for 2 processes, not 2$"):
        devices.initialize_distributed("localhost:1234", 2, 2, environ={})
    with pytest.raises(devices.DistributedError, match=r"^--num_processes must be at least 1, not 0$"):
        devices.initialize_distributed("localhost:1234", 0, 0, environ={})
