"""Where the runs live: the run state's leading axis (the runs, config.num_runs: variants x seeds) sharded over a
1-D mesh of every device of every process, and joining several processes through JAX's distributed runtime.

Each device holds an equal, contiguous share of the runs and steps and trains them with the per-run program
itself: the block is `shard_map`ped over the mesh, so the program a device runs is the one-device program on its
share, and nothing inside a block crosses devices. One device is not sharded at all: the program is today's.

Several processes (one per machine, or one per GPU) join through `jax.distributed.initialize`; each holds the
runs of its own devices, and writes their records, wandb runs and checkpoint to files of its own
(`process_path`). Between blocks the processes agree once on whether to stop (`any_process`)."""

import glob
import math
import os
import re
import sys
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from experiment.config import Config, ConfigError

AXIS = "runs"  # the mesh axis the runs are sharded over
RUNS = PartitionSpec(AXIS)  # a leaf with the runs on its leading axis
STEPS_BY_RUNS = PartitionSpec(None, AXIS)  # a block's per-step metric, [steps, runs]
SHARED = PartitionSpec()  # the same on every device (the decisions taken on the shared step counter)


class DistributedError(Exception):
    """The distributed runtime could not be joined as asked: the message is one sentence."""


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, environ=os.environ) -> bool:
    """Joins the processes of one run through `jax.distributed.initialize` where asked: by any of the
    arguments (the scripts' --coordinator_address, --num_processes, --process_id), or by the environment of a
    multi-task launcher JAX detects itself (Slurm's SLURM_NTASKS, Open MPI's OMPI_COMM_WORLD_SIZE above 1, or a
    set JAX_COORDINATOR_ADDRESS). Returns whether it joined; must run before JAX uses any device."""
    given = any(value is not None for value in (coordinator_address, num_processes, process_id))
    tasks = [environ.get(name, "") for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")]
    launched = (any(count.isdigit() and int(count) > 1 for count in tasks)
                or bool(environ.get("JAX_COORDINATOR_ADDRESS")))
    if not given and not launched:
        return False
    if num_processes is not None and num_processes < 1:
        raise DistributedError(f"--num_processes must be at least 1, not {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise DistributedError(f"--process_id must be in 0..{num_processes - 1} for {num_processes} processes, "
                               f"not {process_id}")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (RuntimeError, ValueError, TypeError) as error:
        reason = " ".join(str(error).split())[:300]
        raise DistributedError(f"could not join the distributed run (coordinator {coordinator_address or 'auto'}, "
                               f"{num_processes or 'auto'} processes, process id {process_id}): {reason}") from None
    return True


def seed_count_multiple(num_devices: int, num_variants: int) -> int:
    """The number every valid num_seeds is a multiple of on `num_devices` devices, so that num_variants x num_seeds
    runs split evenly."""
    return num_devices // math.gcd(num_devices, num_variants)


class Placement:
    """The runs laid over `devices` (default: every device of every process, ordered by process so that each
    process holds a contiguous range of runs). With one device nothing is sharded and every method leaves the
    arrays and functions as they are."""

    def __init__(self, devices=None):
        self.devices = sorted(devices or jax.devices(), key=lambda d: (d.process_index, d.id))
        self.num_devices = len(self.devices)
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        self.local_devices = [d for d in self.devices if d.process_index == self.process_index]
        self.mesh = Mesh(np.array(self.devices), (AXIS,)) if self.num_devices > 1 else None
        self.sharding = NamedSharding(self.mesh, RUNS) if self.mesh else None

    @property
    def sharded(self) -> bool:
        return self.mesh is not None

    def describe(self) -> str:
        """For the start-up line: "on 4 devices (cpu) in 2 processes"."""
        kind = self.devices[0].platform
        processes = f" in {self.process_count} processes" if self.process_count > 1 else ""
        return f"on {self.num_devices} device{'s' * (self.num_devices > 1)} ({kind}){processes}"

    def check(self, config: Config) -> None:
        """Refuses (ConfigError, one sentence) a run count the devices cannot share evenly."""
        if config.num_runs % self.num_devices == 0:
            return
        variants = config.num_runs // config.num_seeds
        step = seed_count_multiple(self.num_devices, variants)
        runs = f"{config.num_seeds} seeds x {variants} variants = {config.num_runs} runs" if variants > 1 else \
            f"{config.num_seeds} seeds"
        raise ConfigError(f"{runs} cannot be shared evenly by {self.num_devices} devices; num_seeds must be a "
                          f"multiple of {step} ({', '.join(str(step * k) for k in range(1, 4))}, ...) on "
                          f"{self.num_devices} devices, or make fewer devices visible (CUDA_VISIBLE_DEVICES)")

    def local_runs(self, num_runs: int) -> range:
        """The runs (indices along the state's leading axis) this process holds."""
        per_device = num_runs // self.num_devices
        first = self.devices.index(self.local_devices[0])
        return range(first * per_device, (first + len(self.local_devices)) * per_device)

    def put(self, tree):
        """Arrays of this process's runs (leading axis) -> the run state's arrays, sharded over the mesh."""
        if not self.sharded:
            return tree
        if self.process_count == 1:
            return jax.device_put(tree, self.sharding)
        share = self.num_devices // len(self.local_devices)  # global rows per local row

        def put_leaf(x):
            x = np.asarray(x)
            return jax.make_array_from_process_local_data(self.sharding, x, (x.shape[0] * share, *x.shape[1:]))

        return jax.tree.map(put_leaf, tree)

    def local(self, tree):
        """Host (NumPy) arrays of this process's runs: the whole array where one process holds them all."""
        return jax.tree.map(_local_array, tree)

    def over_runs(self, per_share: Callable, out_specs=RUNS) -> Callable:
        """`per_share` (arguments and results with the runs on their leading axis, or `out_specs` for the
        results) run by every device on its own share of the runs; itself on one device."""
        if not self.sharded:
            return per_share
        return jax.shard_map(per_share, mesh=self.mesh, in_specs=RUNS, out_specs=out_specs, check_vma=False)

    def over_runs_by_shape(self, per_share: Callable) -> Callable:
        """over_runs for a function whose scalar results are shared by all runs (the loop's decisions) and whose
        other results have the runs on their leading axis: the specs follow from the result shapes."""
        if not self.sharded:
            return per_share

        def run(*args):
            share = jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0] // self.num_devices, *x.shape[1:]),
                                                                x.dtype), args)
            specs = jax.tree.map(lambda s: RUNS if s.ndim else SHARED, jax.eval_shape(per_share, *share))
            return self.over_runs(per_share, specs)(*args)

        return run

    def any_process(self, flags: list[bool]) -> list[bool]:
        """Whether each of `flags` holds in any process (a small exchange between blocks; none in one process)."""
        if self.process_count == 1:
            return flags
        from jax.experimental import multihost_utils
        gathered = np.asarray(multihost_utils.process_allgather(np.array(flags, np.int32)))  # [processes, flags]
        return [bool(flag) for flag in gathered.reshape(-1, len(flags)).any(0)]

    def shared_text(self, text: str | None) -> str | None:
        """Process 0's `text` in every process (e.g. a generated wandb group name)."""
        if self.process_count == 1:
            return text
        from jax.experimental import multihost_utils
        encoded = np.zeros(256, np.uint8)
        raw = (text or "").encode()[:256]
        encoded[:len(raw)] = np.frombuffer(raw, np.uint8)
        shared = bytes(np.asarray(multihost_utils.broadcast_one_to_all(encoded))).rstrip(b"\0").decode()
        return shared or None

    def process_path(self, path: str | None) -> str | None:
        """This process's file for `path`: `path` itself in one process, else `root.processP-of-N.ext`, so that no
        two processes write the same file."""
        return process_path(path, self.process_index, self.process_count)


def default_placement(num_runs: int) -> Placement:
    """Every device of every process; one device for a single run in one process (the single-seed script)."""
    return Placement(jax.devices()[:1] if num_runs == 1 and jax.process_count() == 1 else None)


def process_path(path: str | None, index: int, count: int) -> str | None:
    if not path or count == 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.process{index}-of-{count}{ext}"


def checkpoint_process_count(path: str) -> int | None:
    """How many processes wrote the checkpoint named `path` (as given to --load_checkpoint): 1 where `path`
    itself exists, N where `root.process0-of-N.ext` does, None where neither does."""
    if os.path.exists(path):
        return 1
    root, ext = os.path.splitext(path)
    found = sorted(glob.glob(f"{glob.escape(root)}.process0-of-*{glob.escape(ext)}"))
    counts = [int(m.group(1)) for f in found if (m := re.search(r"\.process0-of-(\d+)" + re.escape(ext) + "$", f))]
    return counts[0] if counts else None


def checkpoint_to_load(path: str, placement: Placement) -> str | None:
    """This process's file of the checkpoint `path`, or None where no process wrote one (a fresh run). A
    checkpoint written by another number of processes is refused with one sentence (ConfigError)."""
    if placement.process_count > 1 and os.path.exists(placement.process_path(path)):
        return placement.process_path(path)
    count = checkpoint_process_count(path)
    if count is None:
        return None
    if count != placement.process_count:
        by = f"{count} process{'es' * (count > 1)}"
        files = f" (files {process_path(path, 0, count)}, ...)" if count > 1 else ""
        raise ConfigError(f"checkpoint {path!r} was written by {by}{files}, and this run has "
                          f"{placement.process_count}; resume it with {count} process{'es' * (count > 1)}")
    return placement.process_path(path)


def check_checkpoint_runs(path: str, header: dict, placement: Placement, runs: range) -> None:
    """Refuses a process's checkpoint file that holds other runs than this process would (ConfigError)."""
    stored = header.get("processes", {"count": 1, "index": 0, "runs": None})
    if stored["count"] != placement.process_count or stored["index"] != placement.process_index or (
            stored["runs"] is not None and stored["runs"] != [runs.start, runs.stop]):
        raise ConfigError(f"checkpoint {path!r} holds runs {stored['runs']} of process {stored['index']} of "
                          f"{stored['count']}, but this process {placement.process_index} of "
                          f"{placement.process_count} holds runs {[runs.start, runs.stop]}; resume it with the "
                          "same processes and devices per process")


def _local_array(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    shards = {}
    for shard in x.addressable_shards:  # replicated copies share an index
        shards.setdefault(tuple((s.start or 0, s.stop) for s in shard.index), shard.data)
    indices = sorted(shards)
    if len(indices) == 1:
        return np.asarray(shards[indices[0]])
    axis = next(a for a in range(x.ndim) if len({index[a] for index in indices}) > 1)
    return np.concatenate([np.asarray(shards[index]) for index in indices], axis=axis)


def warn_process(message: str, placement: Placement) -> None:
    """A warning printed by process 0 only (the others would repeat it)."""
    if placement.process_index == 0:
        print(message, file=sys.stderr)


def jit_block(block: Callable, placement: Placement) -> Callable:
    """A block function of the JAX drivers jitted as the scripts run it (the loop's `jit_block`), each device
    running the block on its own share of the runs."""
    from agent_environment_interaction_loop import BlockMetrics
    from agent_environment_interaction_loop import jit_block as jit_one_program
    if not placement.sharded:
        return jit_one_program(block)
    metrics = BlockMetrics(STEPS_BY_RUNS, STEPS_BY_RUNS, SHARED, STEPS_BY_RUNS, STEPS_BY_RUNS)  # `trained` is shared
    return jit_one_program(placement.over_runs(lambda state: block(state), out_specs=(RUNS, metrics)))


def python_drivers(placement: Placement, num_runs: int):
    """The loop's Python drivers, whose jitted pieces (act, store, update, target refresh) each device runs
    on its own share of the runs. With several processes, each step's outputs are taken to this process's
    runs on the host before they are stacked."""
    from agent_environment_interaction_loop import PYTHON_DRIVERS, compiler_options, python_scan
    if not placement.sharded:
        return PYTHON_DRIVERS

    def compile_piece(piece: Callable, donate_first: bool = True) -> Callable:
        return jax.jit(placement.over_runs_by_shape(piece), donate_argnums=0 if donate_first else (),
                       compiler_options=compiler_options())

    drivers = PYTHON_DRIVERS._replace(compile=compile_piece)
    if placement.process_count == 1:
        return drivers
    mine = placement.local_runs(num_runs)

    def step_outputs_to_host(outputs):
        """A step's outputs (runs on the leading axis; the skipped update's zeros hold every run, as in every
        process) -> this process's runs."""
        return jax.tree.map(lambda x: x[mine.start:mine.stop] if isinstance(x, np.ndarray) and x.ndim
                            and x.shape[0] == num_runs else _local_array(x), outputs)

    return drivers._replace(scan=lambda *args, **kwargs: python_scan(*args, **kwargs, to_host=step_outputs_to_host))
