"""The memory check before a run starts (runtime/memory.py): one run's bytes equal the real initial state's, a
64x64x3 frame is replayed once as uint8, a run that cannot fit is refused with one sentence whose largest
buffer_size and num_seeds do fit, the free RAM under a cgroup limit, and the command line's exit 2 with nothing
written."""

import os
import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from environments import environment_from_config, seed_environments
from envs.batched import VmappedEnvironments
from envs.protocol import EnvSpec
from experiment import cli
from experiment.config import ConfigError, load_config, with_sweep
from experiment.runner import initial_state, state_shapes
from initialization import make_agent
from runtime import devices, memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG = os.path.join(ROOT, "configs", "debug.json")
FRAME = (64, 64, 3)


class Frames:
    """A JAX environment of blank 64x64 RGB uint8 frames, for shapes only."""

    spec = EnvSpec(FRAME, np.dtype(np.uint8), 6)

    def reset(self, key):
        return jnp.zeros((), jnp.int32), jnp.zeros(FRAME, jnp.uint8)

    def step(self, key, env_state, action):
        return env_state, jnp.zeros(FRAME, jnp.uint8), jnp.float32(0), jnp.bool_(False), jnp.bool_(False)


def frames_config(*overrides):
    """DreamerV3's small preset with the strided CNN (a small depth) on 64x64x3 frames."""
    return load_config(os.path.join(ROOT, "configs", "dreamerv3_small.json"),
                       ["no_conv=false", "image_network=strided", "cnn_depth=4", "binary_state=false", *overrides])


def frames_shapes(config):
    """The state shapes of one run of `config` on Frames, as the command line computes them."""
    one_run = memory.one_run(config)
    return state_shapes(one_run, make_agent(one_run, Frames()), VmappedEnvironments(Frames()))


def frames_bytes(config) -> memory.RunBytes:
    return memory.run_bytes(config, frames_shapes(config))


def test_one_runs_bytes_are_the_leaf_bytes_of_the_real_initial_state():
    config = with_sweep(load_config(DEBUG, ["num_seeds=2"]), ["pi_alpha=1e-4,3e-4"])  # 4 runs
    env = environment_from_config(config)
    envs = seed_environments(env, range(config.num_runs), config.jax_env)
    state = initial_state(config, make_agent(config, env), envs, seed=0)
    one_run, one_env = memory.one_run(config), seed_environments(env, [0], config.jax_env)
    sizes = memory.run_bytes(config, state_shapes(one_run, make_agent(one_run, env), one_env))
    assert sizes.state * config.num_runs == sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    assert sizes.replay * config.num_runs == sum(leaf.nbytes for leaf in jax.tree.leaves(state.replay))
    assert sizes.replay == memory.replay_bytes(config, env.spec)
    # Catch's [10, 5] binary frame bit-packed in 7 bytes, an int32 action, a float32 reward, two bools
    assert sizes.replay_entry == 7 + 4 + 4 + 2
    assert sizes.replay == config.buffer_size * sizes.replay_entry + 2 * 4  # and two int32 counters


def test_a_64x64x3_frame_is_replayed_once_as_uint8():
    config = frames_config("buffer_size=100000")
    shapes = state_shapes(config, make_agent(config, Frames()), VmappedEnvironments(Frames()))
    frames = [leaf for leaf in jax.tree.leaves(shapes.replay) if leaf.shape[2:] == FRAME]
    assert [(leaf.shape, leaf.dtype) for leaf in frames] == [((config.num_seeds, 100_000, *FRAME), np.uint8)]
    entry = 64 * 64 * 3 + 4 + 4 + 2  # 12,288 bytes of frame, an int32 action, a float32 reward, two bools
    assert frames_bytes(config).replay_entry == entry
    assert memory.replay_bytes(config, Frames.spec) == 100_000 * entry + 8 == 1_229_800_008


def device_with(free_bytes: int) -> memory.Memory:
    return memory.Memory("device memory", free_bytes, 1, "each device")


def refusal(config, free_bytes: int, placement) -> str:
    """The sentence of the check's ConfigError for `config` on Frames, with `free_bytes` free on each device."""
    with pytest.raises(ConfigError) as refused:
        memory.check_fits(config, frames_shapes(config), placement, device_with(free_bytes))
    return str(refused.value)


def fits(config, free_bytes: int, placement) -> bool:
    try:
        memory.check_fits(config, frames_shapes(config), placement, device_with(free_bytes))
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("num_devices", [1, 4])
def test_a_run_that_cannot_fit_is_refused_with_the_largest_settings_that_do(num_devices):
    placement = SimpleNamespace(num_devices=num_devices)  # check_fits reads only the device count
    config = frames_config("num_seeds=8", "buffer_size=100000")
    sizes = frames_bytes(config)
    runs = 8 // num_devices  # on each device
    free = (runs - 1) * sizes.state + sizes.state // 2 + memory.update_bytes(config)  # room for one run less
    sentence = refusal(config, free, placement)
    assert "\n" not in sentence and ". " not in sentence
    subject = "8 seeds need" if num_devices == 1 else "the 2 runs of each device (8 seeds in all) need"
    assert sentence.startswith(subject), sentence
    assert f"{memory._size(sizes.state)} a seed ({memory._size(sizes.replay)} of it replay)" in sentence
    buffer_size = int(re.search(r"largest buffer_size that fits with num_seeds 8 is (\d+)", sentence)[1])
    num_seeds = int(re.search(r"largest num_seeds with buffer_size 100000 is (\d+)", sentence)[1])
    assert fits(frames_config("num_seeds=8", f"buffer_size={buffer_size}"), free, placement)
    assert not fits(frames_config("num_seeds=8", f"buffer_size={buffer_size + 1}"), free, placement)
    assert num_seeds == 8 - num_devices  # a multiple of the device count, so that the devices share the runs evenly
    assert fits(frames_config(f"num_seeds={num_seeds}", "buffer_size=100000"), free, placement)
    assert not fits(frames_config(f"num_seeds={num_seeds + num_devices}", "buffer_size=100000"), free, placement)


def test_a_run_of_which_nothing_fits_says_so():
    config = frames_config("num_seeds=2", "buffer_size=1000000000")  # 12.3 TB of replay a seed
    sentence = refusal(config, 10**7, SimpleNamespace(num_devices=1))  # less than one update
    assert sentence.endswith("no buffer_size fits with num_seeds 2, and no num_seeds fits with buffer_size "
                             "1000000000"), sentence
    # the host's RAM, as it is: no machine holds two such seeds
    with pytest.raises(ConfigError, match=r"^2 seeds need 24\.6 TB of RAM but "):
        memory.check_fits(config, frames_shapes(config), devices.Placement(jax.devices()[:1]))


def test_the_free_ram_is_the_least_of_memavailable_and_the_room_under_a_cgroup_limit(tmp_path, monkeypatch):
    (tmp_path / "meminfo").write_text("MemTotal:  64000000 kB\nMemAvailable:  32000000 kB\n")
    (tmp_path / "cgroup").write_text("0::/job/step\n")
    for folder, limit, anon in (("job", "8000000000", 3_000_000_000), ("job/step", "max", 1_000_000_000)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "memory.max").write_text(limit + "\n")
        (tmp_path / folder / "memory.stat").write_text(f"anon {anon}\nfile 4000000000\n")
    monkeypatch.setattr(memory, "MEMINFO", str(tmp_path / "meminfo"))
    monkeypatch.setattr(memory, "PROC_CGROUP", str(tmp_path / "cgroup"))
    monkeypatch.setattr(memory, "CGROUP_FILES", {"": (str(tmp_path), "memory.max", "anon")})
    assert memory.host_free_bytes() == 5_000_000_000  # the job's 8 GB limit less its 3 GB of anonymous memory
    (tmp_path / "job" / "memory.max").write_text("max\n")
    assert memory.host_free_bytes() == 32_000_000 * 1024  # no limit: MemAvailable


def test_the_command_line_refuses_a_run_that_cannot_fit_before_writing_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(memory, "host_free_bytes", lambda: 10**9)
    argv = ["-c", DEBUG, "--wandb", "disabled", "--no_progress", "-o", str(tmp_path / "run.out"),
            "--save_checkpoint", str(tmp_path / "run.ckpt"), "--tensorboard", str(tmp_path / "tensorboard"),
            "--set", "buffer_size=100000000"]  # 1.7 GB of Catch's bit-packed frames
    assert cli.script_main(argv, description="test", single_seed=False) == 2
    stderr = capsys.readouterr().err
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("error: 1 seed needs 1.7 GB of RAM but 1 GB is free: "), stderr
    assert "the largest buffer_size that fits with num_seeds 1 is " in stderr
    assert os.listdir(tmp_path) == []


def test_an_accelerators_free_memory_is_its_allocators_limit_less_what_it_holds():
    gpu = SimpleNamespace(platform="gpu", memory_stats=lambda: {"bytes_limit": 64 * 10**9, "bytes_in_use": 10**9})
    placement = SimpleNamespace(local_devices=[gpu, gpu], num_devices=2)
    assert memory.free_memory(placement) == device_with(63 * 10**9)
    silent = SimpleNamespace(platform="tpu", memory_stats=lambda: None)  # a backend without statistics
    assert memory.free_memory(SimpleNamespace(local_devices=[silent])).free_bytes is None
