"""Tracker: one offline wandb run per seed, grouped; offline without a key; disabled; failures become no-ops."""

import glob
import os
import struct
import subprocess
import sys
import time

import pytest
from wandb_file_reader import BLOCK_SIZE, FILE_HEADER, read_offline_run, read_record_bytes

from outputs import wandb_runs
from outputs.wandb_runs import Tracker, make_group_name, numeric_metrics

CONFIG = {"num_seeds": 2, "eval_frequency": 500, "env_config": {"env_name": "Breakout-MinAtar"}}


def _records(env_steps, returns):
    return [
        {"seed": seed, "env_steps": env_steps, "updates": env_steps // 10, "episodes": 3,
         "episode_return": ret, "steps_per_second": 123.5, "model_loss": None, "kl": None}
        for seed, ret in zip((0, 1), returns)
    ]


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No key, no WANDB_MODE, wandb's home folders inside tmp_path, cwd = tmp_path."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL",
                 "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_RUN_ID",
                 "WANDB_RESUME", "WANDB_NAME", "WANDB_TAGS"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_files(directory):
    return sorted(glob.glob(os.path.join(str(directory), "wandb", "offline-run-*", "run-*.wandb")))


def test_two_seeds_offline_grouped_runs_with_metrics(wandb_env, capsys):
    out = wandb_env / "runs"
    tracker = Tracker(CONFIG, [0, 1], "mygroup", mode="offline", tags=["smoke"], directory=str(out))
    assert tracker.active and tracker.mode == "offline" and tracker.group == "mygroup"
    tracker.log_block(_records(500, [1.0, 2.0]))
    tracker.log_block(_records(1000, [None, 4.0]))
    tracker.finish()
    tracker.finish()  # idempotent

    err = capsys.readouterr().err
    assert err.count("wandb sync") == 1

    files = _run_files(out)
    assert len(files) == 2
    runs = {run.name: run for run in map(read_offline_run, files)}
    assert set(runs) == {"mygroup-seed0", "mygroup-seed1"}
    assert sorted(run.run_id for run in runs.values()) == sorted(tracker.run_ids)
    for seed, name in enumerate(("mygroup-seed0", "mygroup-seed1")):
        run = runs[name]
        assert run.group == "mygroup" and run.project == "dreamer-jax" and run.tags == ["smoke"]
        assert run.config["seed"] == seed and run.config["num_seeds"] == 2
        assert run.config["env_name"] == "Breakout-MinAtar" and run.config["eval_frequency"] == 500
        assert run.metrics.get("*") == "env_steps"
        assert [row["env_steps"] for row in run.history] == [500, 1000]
        assert all(row["steps_per_second"] == 123.5 and row["episodes"] == 3 for row in run.history)
        assert not any("model_loss" in row or "seed" in row for row in run.history)
    assert [row.get("episode_return") for row in runs["mygroup-seed0"].history] == [1.0, None]
    assert [row.get("episode_return") for row in runs["mygroup-seed1"].history] == [2.0, 4.0]


def test_no_mode_no_key_runs_offline_and_quickly(wandb_env):
    start = time.monotonic()
    tracker = Tracker(CONFIG, [3, 4], None, directory=str(wandb_env))
    assert tracker.mode == "offline" and tracker.active
    assert tracker.group.startswith("breakout-minatar-")
    tracker.log_block(_records(500, [1.0, 2.0]))
    tracker.finish()
    assert time.monotonic() - start < 30
    names = sorted(read_offline_run(path).name for path in _run_files(wandb_env))
    assert names == [f"{tracker.group}-seed3", f"{tracker.group}-seed4"]


def test_online_without_key_falls_back_to_offline(wandb_env, capsys):
    tracker = Tracker(CONFIG, [0], "g", mode="online", directory=str(wandb_env))
    tracker.finish()
    assert tracker.mode == "offline"
    assert "no wandb API key" in capsys.readouterr().err
    assert len(_run_files(wandb_env)) == 1


def test_wandb_mode_env_var_is_the_default(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert Tracker(CONFIG, [0], "g").mode == "disabled"
    assert not (wandb_env / "wandb").exists()


def test_resume_reuses_given_run_ids(wandb_env):
    ids = ["resumea1", "resumeb2"]
    tracker = Tracker(CONFIG, [0, 1], "g", mode="offline", run_ids=ids, directory=str(wandb_env))
    tracker.finish()
    assert tracker.run_ids == ids
    assert sorted(read_offline_run(path).run_id for path in _run_files(wandb_env)) == ids


def test_disabled_writes_nothing_and_never_imports_wandb(tmp_path):
    code = (
        "import sys; from outputs.wandb_runs import Tracker\n"
        f"t = Tracker({{}}, [0, 1], 'g', mode='disabled', directory={str(tmp_path)!r})\n"
        "t.log_block([{'seed': 0, 'env_steps': 1, 'episode_return': 1.0}]); t.finish()\n"
        "assert not t.active and t.run_ids == [None, None]\n"
        "print('wandb' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__)),
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert os.listdir(tmp_path) == []


def test_init_failure_warns_once_and_turns_into_a_no_op(wandb_env, monkeypatch, capsys):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("simulated wandb failure\nsecond line")

    monkeypatch.setattr(wandb, "init", broken_init)
    tracker = Tracker(CONFIG, [0, 1], "g", mode="offline", directory=str(wandb_env))
    tracker.log_block(_records(500, [1.0, 2.0]))
    tracker.finish()
    assert not tracker.active
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: wandb tracking turned off")
    assert "simulated wandb failure" in lines[0]


def test_import_failure_warns_and_no_ops(wandb_env, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    tracker = Tracker(CONFIG, [0], "g", mode="offline", directory=str(wandb_env))
    tracker.log_block(_records(500, [1.0, 2.0])[:1])
    tracker.finish()
    assert not tracker.active
    err = capsys.readouterr().err
    assert err.count("warning: wandb tracking turned off") == 1 and "ModuleNotFoundError" in err


def test_log_failure_mid_run_warns_once(wandb_env, capsys):
    tracker = Tracker(CONFIG, [0, 1], "g", mode="offline", directory=str(wandb_env))

    class Broken:
        def log(self, metrics):
            raise OSError("disk full")

        def finish(self, exit_code=None):
            raise OSError("still full")

    real = tracker._runs
    tracker._runs = [Broken(), Broken()]
    tracker.log_block(_records(500, [1.0, 2.0]))
    tracker.log_block(_records(1000, [1.0, 2.0]))
    tracker.finish()
    for run in real:
        run.finish()
    assert capsys.readouterr().err.count("warning: wandb tracking turned off") == 1


def test_numeric_metrics_and_group_names():
    import numpy as np

    record = {"seed": 1, "env_steps": 10, "episode_return": None, "kl": np.float32(0.5), "flag": True, "s": "x"}
    assert numeric_metrics(record) == {"env_steps": 10, "kl": 0.5, "flag": 1}
    assert make_group_name("Catch-bsuite").startswith("catch-bsuite-")
    assert make_group_name(None) != make_group_name(None)
    with pytest.raises(ValueError):
        Tracker({}, [0, 1], "g", mode="disabled", run_ids=["a"])
    with pytest.raises(ValueError):
        Tracker({}, [0], "g", mode="sometimes")
    assert wandb_runs.default_mode() in wandb_runs.MODES


def _chunk(kind, payload):
    return struct.pack("<IHB", 0, len(payload), kind) + payload


def test_reader_reassembles_records_across_blocks(tmp_path):
    big = bytes(range(256)) * 200  # 51200 bytes: spans two block boundaries
    data = bytearray(FILE_HEADER)
    data += _chunk(1, b"small")
    first = BLOCK_SIZE - len(data) - 7
    data += _chunk(2, big[:first])
    data += _chunk(3, big[first:first + BLOCK_SIZE - 7])
    data += _chunk(4, big[first + BLOCK_SIZE - 7:])
    tail = BLOCK_SIZE - len(data) % BLOCK_SIZE
    data += _chunk(1, b"x" * (tail - 7 - 3))  # leaves 3 bytes: padding
    data += b"\0\0\0"
    data += _chunk(1, b"after padding")
    path = tmp_path / "run-test.wandb"
    path.write_bytes(bytes(data))
    records = read_record_bytes(path)
    assert records[0] == b"small" and records[1] == big and records[3] == b"after padding"


def test_online_without_network_falls_back_to_offline(wandb_env, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setattr(wandb_runs, "_can_reach_server", lambda timeout=3.0: False)
    tracker = Tracker(CONFIG, [0], "g", mode="online", directory=str(wandb_env))
    tracker.finish()
    assert tracker.mode == "offline"
    assert "cannot reach the wandb server" in capsys.readouterr().err
    assert len(_run_files(wandb_env)) == 1


def test_resumed_run_continues_each_seeds_wandb_run_without_duplicate_steps(wandb_env):
    """2 seeds offline, stopped by SIGTERM after a checkpoint, then resumed: each seed's second part logs into
    the same run id, and env_steps (also the wandb step) go on strictly increasing, every block once."""
    import signal

    from runtime import checkpoint

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ckpt = wandb_env / "run.ckpt"
    command = [sys.executable, os.path.join(root, "dreamer_multiseed.py"), "-c",
               os.path.join(root, "configs", "debug.json"), "--set", "num_seeds=2", "--set", "checkpoint_frequency=50",
               "--wandb", "offline", "-g", "grp", "-o", "run.out", "--save_checkpoint", str(ckpt), "--no_progress"]
    # The second part reuses compiled programs through the suite's JAX persistent cache (tests/conftest.py).
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = subprocess.Popen(command, cwd=wandb_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**env, checkpoint.TEST_SLEEP_ENV: "1.0"})
    try:
        deadline = time.time() + 300
        while not ckpt.exists() and first.poll() is None:
            assert time.time() < deadline, "timed out"
            time.sleep(0.01)
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    stopped = checkpoint.read_header(str(ckpt))
    assert 50 <= stopped["env_steps"] < 200
    run_ids = stopped["wandb"]["run_ids"]
    assert len(set(run_ids)) == 2 and stopped["wandb"]["group"] == "grp"

    second = subprocess.run([*command, "--load_checkpoint", str(ckpt)], cwd=wandb_env, env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert checkpoint.read_header(str(ckpt))["wandb"]["run_ids"] == run_ids

    parts = {}  # run id -> its offline runs, in start order (folder names start with the start time)
    for path in _run_files(wandb_env):
        run = read_offline_run(path)
        parts.setdefault(run.run_id, []).append(run)
    assert sorted(parts) == sorted(run_ids)
    for seed, run_id in enumerate(run_ids):
        assert len(parts[run_id]) == 2
        assert all(run.name == f"grp-seed{seed}" and run.group == "grp" for run in parts[run_id])
        history = [row for run in parts[run_id] for row in run.history]
        assert [row["env_steps"] for row in history] == [50, 100, 150, 200]
        assert all(row["_step"] == row["env_steps"] for row in history)
        assert parts[run_id][0].history[-1]["env_steps"] == stopped["env_steps"]
        assert "diag_kl" in history[-1]  # model diagnostics reach wandb once training has started


def test_media_and_per_episode_returns_are_logged(wandb_env, tmp_path):
    from PIL import Image

    gif, png = str(tmp_path / "episode.gif"), str(tmp_path / "strip.png")
    frames = [Image.new("RGB", (8, 6), (255 * (i % 2), 0, 0)) for i in range(3)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(png)
    out = wandb_env / "runs"
    tracker = Tracker(CONFIG, [0, 1], "media", mode="offline", directory=str(out))
    records = _records(500, [1.0, 2.0])
    records[0]["eval_returns"] = [1.0, -1.0, 1.0]
    tracker.log_block(records)
    tracker.log_media(500, [{"video/episode": gif, "video/dream_strip": png}, {}])
    tracker.finish()
    runs = {run.name: run for run in map(read_offline_run, _run_files(out))}
    (row,) = runs["media-seed0"].history  # the media join the block's row: the same step (keys flattened)
    assert row["env_steps"] == 500 and row["episode_return"] == 1.0
    assert row["eval_returns/_type"] == "histogram" and sum(row["eval_returns/values"]) == 3
    assert row["video/episode/_type"] == "video-file" and row["video/episode/path"].endswith(".gif")
    assert row["video/dream_strip/_type"] == "image-file" and row["video/dream_strip/width"] == 8
    assert [row["env_steps"] for row in runs["media-seed1"].history] == [500]  # no media, no histogram
    assert not any(key.startswith(("eval_returns", "video")) for key in runs["media-seed1"].history[0])
