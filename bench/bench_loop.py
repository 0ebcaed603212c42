"""Times the loop's block, compiled or under the Python drivers, for several seed counts and prints one JSON object.

Per seed count: seconds per env step acting only (before training_start_time) and with training (one update
every train_frequency steps), run-steps per second (env steps of all runs together, per device), relative
efficiency (run-steps/s over the first entry's figure with the same drivers), wall-clock slowdown, compile time
and the number of programs compiled for the block; plus peak RSS and replay bytes per run.

    python3 bench/bench_loop.py -c config.json --seeds 1,2 --steps 100
    python3 bench/bench_loop.py -c configs/quickstart.json --seeds 8 --sweep_seeds 2 --sweep beta=0.01,0.02,0.03,0.1

With `--sweep` (repeatable, as the run scripts take it), a sweep of those variants with `--sweep_seeds` seeds
each is measured after the plain seed counts: with as many runs as a plain entry, its time per env step
should match that entry's.

The runs are sharded over the devices this process sees (runtime/devices.py), or over the first N of them for each N of
`--devices` (every seed count is then measured on every device count it divides); with `--seeds_per_device`
the seed counts are per device, to measure the scaling from 1 to all devices at a fixed number of seeds per
device. Each entry reports its devices and its run-steps per second per device. On forced CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N) the devices share the same cores: it only shows the
sharded program runs.

    python3 bench/bench_loop.py -c config.json --seeds 2 --seeds_per_device --devices 1,2,4,8

`--drivers` names the loop's drivers to time each seed count under (default: the config's, from its jax_env):
`compiled`, the whole block one program compiled ahead of time (jax_env true), and `python`, the loop's Python
drivers stepping the environment from Python between the agent's jitted pieces (jax_env false), as the run
scripts do. A JAX environment or an Atari pool (`atari_env`, one envpool pool of all seeds' games) runs under
both, so the two are compared on the same environments:

    python3 bench/bench_loop.py -c configs/dreamerv3_atari100k_small.json --seeds 1,2,4 --steps 100 \\
        --drivers compiled,python

Each entry names its `drivers`. The Python drivers' pieces compile on their first use, so their entries run one
untimed block before each phase, report the two blocks' seconds as `warmup_s` and the programs compiled in them
as `programs_compiled`, and have `compile_s` and `lower_s` null; they also give `compiled_speedup_acting` and
`compiled_speedup_training`, their seconds per step over those of the compiled entry with the same runs and
devices (when one was measured).
"""

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import time
from typing import Callable, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiment import cli  # noqa: E402
from runtime import huge_pages  # noqa: E402

if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages()  # before jax is imported; DREAMER_NO_HUGE_PAGES=1 to measure without

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from agent_environment_interaction_loop import (  # noqa: E402
    device_memory_stats,
    make_block_function,
    update_seed_batch,
    update_seed_bytes,
)
from environments import environment_from_config, seed_environments  # noqa: E402
from experiment.config import Config, ConfigError, load_config, sweep_variants, variant_name, with_sweep  # noqa: E402
from experiment.runner import initial_state  # noqa: E402
from initialization import RunState, make_agent  # noqa: E402
from runtime import devices  # noqa: E402


def machine_info() -> dict:
    """What the figures were measured on (every bench script reports it)."""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
            "huge_pages": huge_pages.active(),
            # a persistent compilation cache set in the environment turns compile_s into a load time
            "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
            # other work on the same cores: 1, 5 and 15 minute load averages when the figures are reported
            "load_average": list(os.getloadavg())}


def time_block(compiled, state, repeats: int):
    """Runs the compiled block `repeats` times; returns (state, best seconds per call)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = compiled(state)
        jax.block_until_ready((state, metrics))
        best = min(best, time.perf_counter() - start)
    return state, best


BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # recorded once per program XLA compiles
_compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **_: _compiles.append(event) if event == BACKEND_COMPILE_EVENT else None)


DRIVERS = ("compiled", "python")  # the loop's JAX drivers (the block one program) or its Python drivers


class LoopBlock(NamedTuple):
    """A block ready to time, and what building it cost."""
    config: Config  # with the entry's seed count, drivers (jax_env) and training start
    agent: object  # initialization.Agent: the agent's pure functions
    envs: object  # the runs' environments (environments.seed_environments), closed after timing
    state: RunState  # the runs' initial state
    block: Callable  # state -> (state, metrics): `steps` env steps of every run, the state donated
    compile_s: float | None  # ahead of time: tracing, lowering and XLA (None: the pieces compile on first use)
    lower_s: float | None  # the part of compile_s spent tracing and lowering to StableHLO
    programs: int  # programs XLA compiled ahead of time


def loop_block(config, env, num_seeds: int, steps: int, training_start_time: int,
               placement: devices.Placement | None = None, drivers: str = "compiled") -> LoopBlock:
    """The `steps`-step block of `num_seeds` vmapped seeds (of each variant of the config's sweep), training
    starting at `training_start_time` or later, sharded over `placement`'s devices (default: one device), under
    `drivers`: compiled ahead of time, or the Python drivers' block as experiment.runner.compile_blocks builds it."""
    config = dataclasses.replace(config, num_seeds=num_seeds, eval_frequency=steps, jax_env=drivers == "compiled",
                                 training_start_time=max(config.training_start_time, training_start_time))
    placement = placement or devices.Placement(jax.devices()[:1])
    agent = make_agent(config, env)
    envs = seed_environments(env, range(config.num_runs), jax_env=config.jax_env)
    state = initial_state(config, agent, envs, seed=0, placement=placement)
    if not config.jax_env:
        block = make_block_function(config, agent, envs, steps, devices.python_drivers(placement, config.num_runs))
        return LoopBlock(config, agent, envs, state, block, None, None, 0)
    start, compiles_before = time.perf_counter(), len(_compiles)
    lowered = devices.jit_block(make_block_function(config, agent, envs, steps), placement).lower(state)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return LoopBlock(config, agent, envs, state, compiled, time.perf_counter() - start, lowered_at - start,
                     len(_compiles) - compiles_before)


def warm_up(block, state, warm: bool):
    """(state, seconds, programs XLA compiled) of one untimed block if `warm` (the Python drivers' pieces
    compile on their first use), else (state, 0, 0)."""
    if not warm:
        return state, 0.0, 0
    compiles_before = len(_compiles)
    state, seconds = time_block(block, state, 1)
    return state, seconds, len(_compiles) - compiles_before


def timed_with_env(block, state, repeats: int, env):
    """time_block, and the seconds per block a Python family that keeps its own times (`env.seconds`, DMC's
    simulator steps and rendering) spent in each part: {} for the others."""
    before = dict(getattr(env, "seconds", {}))
    state, seconds = time_block(block, state, repeats)
    return state, seconds, {part: (env.seconds[part] - spent) / repeats for part, spent in before.items()}


def env_shares(env_seconds: dict, block_s: float, phase: str) -> dict:
    """The share of a block spent in each part the family times (DMC: its simulators' steps, rendering
    included, and rendering alone), over the block's best time: e.g. {"training_render_share": 0.3}."""
    return {f"{phase}_{part}_share": seconds / block_s for part, seconds in env_seconds.items()}


def bench_seeds(config, env, num_seeds: int, steps: int, repeats: int, num_devices: int = 1,
                drivers: str = "compiled") -> dict:
    placement = devices.Placement(jax.devices()[:num_devices])
    warm = drivers == "python"
    loop = loop_block(config, env, num_seeds, steps, (repeats + warm + 1) * steps, placement, drivers)
    config, block = loop.config, loop.block
    state, acting_warmup_s, acting_programs = warm_up(block, loop.state, warm)
    state, acting_s, acting_env_s = timed_with_env(block, state, repeats, env)
    assert int(state.updates[0]) == 0, "acting-only blocks must not train"
    # Jump the shared step counter past training_start_time: the replay already holds enough sequences.
    state = state._replace(env_steps=placement.put(jnp.full_like(state.env_steps, config.training_start_time)))
    state, training_warmup_s, training_programs = warm_up(block, state, warm)
    updates_before = int(state.updates[0])
    state, training_s, training_env_s = timed_with_env(block, state, repeats, env)
    updates_per_block = (int(state.updates[0]) - updates_before) / repeats  # seed 0's, per timed training block
    assert updates_per_block > 0
    loop.envs.close()
    replay_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state.replay)) // config.num_runs
    device_stats = device_memory_stats()  # empty on CPU
    variants = [variant_name(v) for v in sweep_variants(config)] if config.sweep else None
    return {"seeds": num_seeds, "variants": variants, "runs": config.num_runs, "drivers": drivers,
            "programs_compiled": loop.programs + acting_programs + training_programs,
            "devices": num_devices, "runs_per_device": config.num_runs // num_devices,
            "acting_s_per_step": acting_s / steps, "training_s_per_step": training_s / steps,
            "training_run_steps_per_s_per_device": config.num_runs / (training_s / steps) / num_devices,
            "acting_run_steps_per_s_per_device": config.num_runs / (acting_s / steps) / num_devices,
            "updates_per_training_block": updates_per_block,
            "compile_s": loop.compile_s, "lower_s": loop.lower_s,
            "warmup_s": acting_warmup_s + training_warmup_s if warm else None,
            "replay_bytes_per_seed": replay_bytes,
            "update_seed_batch": update_seed_batch(config.update_seed_batch, config.num_runs // num_devices,
                                                  seed_bytes=update_seed_bytes(config)),
            "device_peak_bytes": device_stats.get("peak_bytes_in_use"),
            # DMC: the share of a training block spent stepping the simulators (rendering included) and rendering
            **env_shares(acting_env_s, acting_s, "acting"), **env_shares(training_env_s, training_s, "training")}


def compare(results: list[dict]) -> None:
    """Adds the figures relative to other entries: to the first entry with the same drivers, and (Python-driver
    entries) to the compiled entry with the same runs and devices."""
    runs_of = lambda entry: (entry["seeds"], entry["variants"], entry["devices"])
    for r in results:
        base = next(b for b in results if b["drivers"] == r["drivers"])
        scale = r["runs"] / base["runs"]
        r["relative_efficiency"] = scale * base["training_s_per_step"] / r["training_s_per_step"]
        r["acting_relative_efficiency"] = scale * base["acting_s_per_step"] / r["acting_s_per_step"]
        r["wall_clock_slowdown"] = r["training_s_per_step"] / base["training_s_per_step"]
        compiled = next((c for c in results if c["drivers"] == "compiled" and runs_of(c) == runs_of(r)), None)
        if r["drivers"] == "python" and compiled:
            r["compiled_speedup_acting"] = r["acting_s_per_step"] / compiled["acting_s_per_step"]
            r["compiled_speedup_training"] = r["training_s_per_step"] / compiled["training_s_per_step"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="config.json")
    parser.add_argument("--seeds", default="1,2", help="comma-separated seed counts")
    parser.add_argument("--steps", type=int, default=100, help="env steps per timed block")
    parser.add_argument("--repeats", type=int, default=2, help="timed blocks per phase (best is kept)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="also measure a sweep of these values (repeatable, a grid as in the run scripts)")
    parser.add_argument("--sweep_seeds", type=int, default=2, help="seeds per variant of the --sweep entry")
    parser.add_argument("--devices", default=None,
                        help="comma-separated device counts to shard the runs over (default: every device seen)")
    parser.add_argument("--seeds_per_device", action="store_true", help="--seeds counts seeds per device")
    parser.add_argument("--drivers", default=None,
                        help="comma-separated drivers to time each entry under, of compiled and python "
                             "(default: the config's jax_env)")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    drivers = args.drivers.split(",") if args.drivers else ["compiled" if config.jax_env else "python"]
    if not set(drivers) <= set(DRIVERS):
        raise ConfigError(f"--drivers takes {' and '.join(DRIVERS)}, got {args.drivers}")
    env = environment_from_config(config)
    device_counts = [int(n) for n in args.devices.split(",")] if args.devices else [len(jax.devices())]
    if max(device_counts) > len(jax.devices()) or min(device_counts) < 1:
        raise ConfigError(f"--devices {args.devices} asks for more devices than the {len(jax.devices())} seen")

    results = []
    for num_devices in device_counts:
        for n in map(int, args.seeds.split(",")):
            seeds = n * num_devices if args.seeds_per_device else n
            if seeds % num_devices == 0:
                results += [bench_seeds(config, env, seeds, args.steps, args.repeats, num_devices, d) for d in drivers]
    if not results:
        raise ConfigError(f"no seed count of --seeds {args.seeds} is a multiple of a device count of {device_counts}")
    if args.sweep:
        sweep = with_sweep(config, args.sweep)
        runs = sweep.num_runs // sweep.num_seeds * args.sweep_seeds
        num_devices = max((d for d in device_counts if runs % d == 0), default=1)
        results += [bench_seeds(sweep, env, args.sweep_seeds, args.steps, args.repeats, num_devices, d)
                    for d in drivers]
    compare(results)
    print(json.dumps({
        "config": args.config, "overrides": args.set, "env": config.env_config.env_name, "drivers": drivers,
        "steps_per_block": args.steps, "train_frequency": config.train_frequency, "results": results,
        "compile_s": max((r["compile_s"] for r in results if r["compile_s"] is not None), default=None),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "replay_bytes_per_seed": results[0]["replay_bytes_per_seed"],
        "machine": machine_info(),
    }, indent=2))


if __name__ == "__main__":
    sys.exit(cli.exit_code_of(main))
