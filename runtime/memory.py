"""Whether a run fits in memory, checked before its state is allocated: one run's state in bytes (parameters,
optimizer states, env state, replay), read from the shapes the config builds, against the free memory of one
accelerator, or of the host's RAM on CPU. A run that cannot fit is refused with one sentence (ConfigError)."""

import math
import os
from dataclasses import replace
from typing import NamedTuple

import jax
import numpy as np

from agent_environment_interaction_loop import ACCELERATOR_BYTES_PER_SEED_BYTE, update_seed_bytes
from envs.protocol import EnvSpec
from experiment.config import Config, ConfigError
from initialization import replay_frame
from replay_buffer import init_buffer
from runtime.devices import Placement, seed_count_multiple


def tree_bytes(tree) -> int:
    """Bytes of every leaf of `tree` (arrays or jax.ShapeDtypeStructs) together."""
    return sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def replay_bytes(config: Config, spec: EnvSpec) -> int:
    """One seed's replay buffer in bytes: `buffer_size` entries, each one frame as replay stores it
    (initialization.replay_frame: the env's dtype, binary frames bit-packed), an action, a float32 reward and
    two bools, plus two int32 counters. Computed from shapes; nothing is allocated."""
    buffer = jax.eval_shape(lambda: init_buffer(config.buffer_size, *replay_frame(config, spec), spec.action_shape,
                                                spec.action_dtype))
    return tree_bytes(buffer)


class RunBytes(NamedTuple):
    """What one run (a seed, or a seed of one sweep variant) holds, in bytes."""

    state: int  # the whole run state: parameters, optimizer states, env state, replay, keys, counters
    replay: int  # the replay buffer, part of `state`
    replay_entry: int  # what one more replay entry (buffer_size + 1) adds to `state`


def one_run(config: Config) -> Config:
    """`config` with a single run: one seed, and a sweep's first variant. Its state has the leaves and shapes
    of any one run of `config`, so its shapes tell one run's bytes without building every run's
    environments."""
    return replace(config, num_seeds=1, sweep={key: values[:1] for key, values in config.sweep.items()})


def run_bytes(config: Config, shapes) -> RunBytes:
    """RunBytes of one run, from the shapes of the state of one or more runs of `config`
    (experiment.runner.state_shapes, every leaf with the runs on its leading axis)."""
    runs = jax.tree.leaves(shapes)[0].shape[0]
    entries = [leaf for leaf in jax.tree.leaves(shapes.replay) if leaf.ndim > 1]  # [runs, buffer_size, ...]
    return RunBytes(tree_bytes(shapes) // runs, tree_bytes(shapes.replay) // runs,
                    tree_bytes(entries) // (runs * config.buffer_size))


def update_bytes(config: Config) -> int:
    """The memory one seed's training update takes beyond the run state, estimated as the loop's batching does
    (agent_environment_interaction_loop: ACCELERATOR_BYTES_PER_SEED_BYTE x update_seed_bytes, measured on GPUs
    for config.json)."""
    return ACCELERATOR_BYTES_PER_SEED_BYTE * update_seed_bytes(config)


class Memory(NamedTuple):
    """The memory that holds a share of the runs: one accelerator's, or the host's RAM on CPU."""

    name: str  # "device memory" or "RAM", for the message
    free_bytes: int | None  # None where the backend or the system does not say
    devices: int  # devices whose runs it holds: 1 for an accelerator, this process's devices for the RAM
    holder: str  # whose runs it holds where they are not all of them: "each device", "this process"


def free_memory(placement: Placement) -> Memory:
    """The Memory the runs of `placement` share: the first local accelerator's (its allocator's limit less what
    it holds; every device holds as many runs), or on CPU the host's RAM, which this process's devices share."""
    device = placement.local_devices[0]
    if device.platform == "cpu":
        return Memory("RAM", host_free_bytes(), len(placement.local_devices), "this process")
    try:
        stats = device.memory_stats() or {}
    except Exception:  # backends without memory statistics
        stats = {}
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0) if stats.get("bytes_limit") else None
    return Memory("device memory", free, 1, "each device")


MEMINFO = "/proc/meminfo"
PROC_CGROUP = "/proc/self/cgroup"  # this process's cgroups: "0::/path" (v2), "4:memory:/path" (v1)
# By the controllers field of PROC_CGROUP: (where the hierarchy is mounted, the file of a group's memory limit,
# the memory.stat field of its anonymous memory), for cgroup v2 and v1
CGROUP_FILES = {"": ("/sys/fs/cgroup", "memory.max", "anon"),
                "memory": ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "total_rss")}
NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


def host_free_bytes() -> int | None:
    """RAM this process can still take: the kernel's MemAvailable (free memory plus the page cache it can
    reclaim), or less under a cgroup memory limit (a container's or a batch job's), which MemAvailable does
    not see. None where /proc/meminfo is missing (not Linux): then nothing is checked."""
    try:
        with open(MEMINFO) as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        available = int(fields["MemAvailable"].split()[0]) * 1024  # "123456 kB"
    except (OSError, KeyError, ValueError):
        return None
    limited = cgroup_free_bytes()
    return available if limited is None else min(available, limited)


def cgroup_free_bytes() -> int | None:
    """The least room left under a memory limit of this process's cgroup or of any group above it: the limit
    less the group's anonymous memory (its page cache can be reclaimed, so it is not counted); None where no
    limit is set."""
    try:
        with open(PROC_CGROUP) as groups:
            paths = {controllers: path.strip() for _, controllers, path in (line.split(":", 2) for line in groups)}
    except (OSError, ValueError):
        return None
    room = []
    for controllers, (mount, limit_file, used_stat) in CGROUP_FILES.items():
        if controllers not in paths:
            continue
        folder = os.path.normpath(os.path.join(mount, paths[controllers].lstrip("/")))
        while folder.startswith(mount):
            try:
                with open(os.path.join(folder, limit_file)) as file:
                    limit = file.read().strip()
                with open(os.path.join(folder, "memory.stat")) as file:
                    used = int(dict(line.split() for line in file)[used_stat])
                if limit != "max" and int(limit) < NO_LIMIT:
                    room.append(int(limit) - used)
            except (OSError, KeyError, ValueError):
                pass
            folder = os.path.dirname(folder)
    return min(room) if room else None


def check_fits(config: Config, shapes, placement: Placement, memory: Memory | None = None) -> None:
    """Refuses (ConfigError, one sentence) a run whose state cannot fit: the runs one memory holds (free_memory:
    an accelerator holds its own share, the host's RAM all of this process's) times one run's state, plus one
    training update, against that memory's free bytes. `shapes`: the state shapes of one or more runs of
    `config` (experiment.runner.state_shapes, of `one_run(config)` for instance); nothing is allocated. The
    sentence gives the bytes per run, the largest buffer_size that fits with num_seeds as set, and the largest
    num_seeds with buffer_size as set (both with the update's share as it is: where update_seed_batch is set
    above the runs the suggestion leaves, a little more might fit).

    The update's share is the least the loop can run: one seed's update (or `update_seed_batch` seeds' where
    set), ACCELERATOR_BYTES_PER_SEED_BYTE x update_seed_bytes each, on each device the memory serves. A run
    that passes may still run out of memory (a larger vmapped update, XLA's own buffers, the compiler), but a
    refused one could not have run: its state and one update alone exceed the memory. So the check has no
    switch to skip it; where the memory is unknown (a backend without statistics, no /proc/meminfo) it checks
    nothing."""
    memory = memory or free_memory(placement)
    if memory.free_bytes is None:
        return
    sizes = run_bytes(config, shapes)
    variants = config.num_runs // config.num_seeds
    runs = config.num_runs * memory.devices // placement.num_devices  # this device's share, or this process's
    update = memory.devices * min(config.update_seed_batch or 1, runs // memory.devices) * update_bytes(config)
    need = runs * sizes.state + update
    if need <= memory.free_bytes:
        return
    room = memory.free_bytes - update  # for the states
    fixed = sizes.state - config.buffer_size * sizes.replay_entry  # what a run holds besides its replay entries
    buffer_size = (room - runs * fixed) // (runs * sizes.replay_entry)
    step = seed_count_multiple(placement.num_devices, variants)  # so that the devices share the runs evenly
    num_seeds = room * placement.num_devices // (variants * memory.devices * sizes.state) // step * step
    shared = memory.devices < placement.num_devices
    raise ConfigError(
        f"{_runs_text(config, placement, memory)} {_size(need)} of {memory.name} but {_size(memory.free_bytes)} "
        f"is free{f' for {memory.holder}' * shared}: {_size(sizes.state)} a {'run' if variants > 1 else 'seed'} "
        f"({_size(sizes.replay)} of it replay) and {_size(update)} for the training update; "
        + (f"the largest buffer_size that fits with num_seeds {config.num_seeds} is {buffer_size}"
           if buffer_size >= config.sequence_length else f"no buffer_size fits with num_seeds {config.num_seeds}")
        + (f", the largest num_seeds with buffer_size {config.buffer_size} is {num_seeds}" if num_seeds > 0
           else f", and no num_seeds fits with buffer_size {config.buffer_size}"))


def _runs_text(config: Config, placement: Placement, memory: Memory) -> str:
    """The subject and verb of the refusal: "5 seeds need", "1 seed needs", "2 seeds x 3 variants = 6 runs
    need", or where the memory holds a share of them: "the 4 runs of each device (8 seeds in all) need"."""
    variants = config.num_runs // config.num_seeds
    runs = (f"{config.num_seeds} seeds x {variants} variants = {config.num_runs} runs" if variants > 1
            else f"{config.num_seeds} seed{'s' * (config.num_seeds > 1)}")
    if memory.devices == placement.num_devices:
        return f"{runs} need{'s' * (config.num_runs == 1)}"
    held = config.num_runs * memory.devices // placement.num_devices
    return f"the {held} run{'s' * (held > 1)} of {memory.holder} ({runs} in all) need{'s' * (held == 1)}"


def _size(num_bytes: int) -> str:
    """Bytes in decimal units, three significant digits: "1.23 GB", "456 MB"."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(num_bytes) >= scale:
            return f"{num_bytes / scale:.3g} {unit}"
    return f"{num_bytes} bytes"
