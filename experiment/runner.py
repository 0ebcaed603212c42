"""The run loop shared by the two entry scripts: build the runs' initial state, run the compiled block again and
again, hand each block's records and media to the sinks (outputs/), checkpoint, and stop on a numerical fault
or a signal. `run_command` checks a command line's environment and checkpoint before any of it starts."""

import argparse
import os
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agent.evaluation import DREAM_CONTEXT, RunObserver
from agent.training_step import NUMERICAL_FAULT, NUMERICAL_FAULT_LOSSES
from agent_environment_interaction_loop import BlockMetrics, compiler_options, make_block_function
from environments import environment_from_config, seed_environments
from experiment.config import Config, ConfigError, config_to_dict, sweep_variants, variant_name
from initialization import RunState, check_observations, make_agent, run_hparams
from outputs.records import RecordsFile, output_position
from outputs.sinks import RETURN_WINDOW, Block, ProgressBar
from outputs.tensorboard_events import TensorBoardSink
from outputs.videos import VideoFiles
from outputs.wandb_runs import Tracker, make_group_name
from runtime import checkpoint, devices, memory
from runtime.signals import StopSignals

DIAGNOSTICS_KEY_TAG = 0xD1A6  # folded into each seed's PRNGKey(seed) to draw the diagnostic sequences
NUMERICAL_FAULT_EXIT_CODE = 3  # the scripts' exit code after a NumericalFault


class NumericalFault(Exception):
    """A training update met a non-finite loss or gradient: the update was skipped (agent.training_step),
    the run stopped after that block with its records written and no checkpoint saved. The message is one
    sentence; `state` is the run state after the block."""

    def __init__(self, message: str, state: RunState):
        super().__init__(message)
        self.state = state


def diagnostic_keys(seeds) -> jax.Array:
    """[len(seeds), 2] keys that draw each seed's diagnostic sequences, apart from the run's own keys."""
    return jnp.stack([jax.random.fold_in(jax.random.PRNGKey(seed), DIAGNOSTICS_KEY_TAG) for seed in seeds])


class Runs(NamedTuple):
    """The runs side by side in one program, in the order of the state's leading axis: every variant of the
    sweep (config.sweep_variants) with seeds seed, seed+1, ..., seed+num_seeds-1 each."""

    seeds: list[int]  # each run's seed
    variants: list[dict]  # each run's swept values; {} without a sweep


def runs_of(config: Config, seed: int) -> Runs:
    variants = sweep_variants(config)
    return Runs([seed + i for _ in variants for i in range(config.num_seeds)],
                [variant for variant in variants for _ in range(config.num_seeds)])


def _seed_keys(config: Config, seed: int):
    """(agent keys, env reset keys) of each run (runs_of): a run's keys depend on its seed alone, so variant k,
    seed i of a sweep starts as the plain run of seed i does."""
    seeds = runs_of(config, seed).seeds
    keys = jax.vmap(jax.random.split)(jnp.stack([jax.random.PRNGKey(s) for s in seeds]))
    return keys[:, 0], keys[:, 1]


def initial_state(config: Config, agent, envs, seed: int, placement: devices.Placement | None = None) -> RunState:
    """Stacked initial states of the runs (runs_of), each built exactly as a single-seed run would, plus each
    run's swept values; resets `envs` (the runs' environments, see environments.seed_environments). With a
    sharded `placement`, `envs` are this process's runs' and every device builds the states of its own runs."""
    agent_keys, env_keys = _seed_keys(config, seed)
    hparams = run_hparams(runs_of(config, seed).variants)
    if placement and placement.sharded:
        mine = placement.local_runs(config.num_runs)
        agent_keys, env_keys, hparams = jax.tree.map(lambda x: x[mine.start:mine.stop], (agent_keys, env_keys, hparams))
        env_state, obs = envs.reset(env_keys)
        init = jax.jit(placement.over_runs(jax.vmap(agent.init_state)))
        state = init(*placement.put((agent_keys, env_state, obs, hparams)))
    else:
        env_state, obs = envs.reset(env_keys)
        state = jax.jit(jax.vmap(agent.init_state))(agent_keys, env_state, obs, hparams)
    # Leaves an env builds from Python numbers are weak-typed (gymnax MinAtar's timers); a checkpoint gives
    # them back strong. Strong from the start, a resumed run compiles the program the fresh run compiled,
    # so it finds it in the persistent compilation cache (experiment/cli.py). The values are the same.
    return jax.tree.map(lambda x: x.astype(x.dtype) if x.weak_type else x, state)


def jit_diagnose(agent, placement: devices.Placement | None = None):
    """The runs' model diagnostics (params, hparams, replay, keys with a run axis -> statistics), vmapped and
    jitted with LLVM at level 1 as the training programs are (it compiles faster and runs as fast); with a
    sharded `placement`, each device diagnoses its own runs."""
    diagnose = placement.over_runs(jax.vmap(agent.diagnose)) if placement else jax.vmap(agent.diagnose)
    return jax.jit(diagnose, compiler_options=compiler_options())


def state_shapes(config: Config, agent, envs) -> RunState:
    """Shapes and dtypes of initial_state's result, computed without running anything (weak types aside:
    initial_state makes every leaf strong, and a checkpoint compares shapes and dtypes only)."""
    agent_keys, env_keys = _seed_keys(config, 0)
    return jax.eval_shape(jax.vmap(agent.init_state), agent_keys, *envs.reset_shapes(env_keys),
                          run_hparams(runs_of(config, 0).variants))


def restart_episodes(state: RunState, envs, seeds: list[int]) -> RunState:
    """After a resume with environments whose state lives outside the run state (Python objects, a pool of
    games): a checkpoint cannot hold them, so each seed starts a fresh episode (seeded from its seed and the
    step count) and its RSSM carry restarts."""
    steps = int(state.env_steps[0])
    envs.reseed([int(np.random.SeedSequence([seed, steps]).generate_state(1)[0]) for seed in seeds])
    env_keys = jax.vmap(jax.random.fold_in, (0, None))(state.key, steps)
    env_state, obs = envs.reset(env_keys)
    return state._replace(env_state=jax.tree.map(jnp.asarray, env_state), obs=jnp.asarray(obs),
                          rssm_h=jnp.zeros_like(state.rssm_h), episode_return=jnp.zeros_like(state.episode_return))


def block_schedule(start_steps: int, num_steps: int, eval_frequency: int) -> list[int]:
    """Block sizes from env step start_steps to num_steps: blocks end at multiples of eval_frequency (and at
    num_steps), so a resumed run takes the same blocks as an uninterrupted one."""
    ends = list(range((start_steps // eval_frequency + 1) * eval_frequency, num_steps, eval_frequency))
    ends += [num_steps] if num_steps > start_steps else []
    return [end - begin for begin, end in zip([start_steps] + ends, ends)]


def _runs(seed: int | Runs, num_runs: int) -> Runs:
    return seed if isinstance(seed, Runs) else Runs([seed + i for i in range(num_runs)], [{}] * num_runs)


def block_records(metrics: BlockMetrics, state: RunState, seed: int | Runs, elapsed_s: float, num_steps: int):
    """Host-side summary of one block: (one JSON record per run, completed-episode returns per run). `seed`: the
    runs (runs_of), or the first of plain seeds seed, seed+1, .... A sweep's records also name the run's
    variant ("variant") and hold its swept values ("hparams"). Environments with `episode_statistics` (Craftax)
    add the means of theirs over the episodes the block ended (None where it ended none)."""
    metrics = jax.device_get(metrics)
    env_steps, updates = np.asarray(state.env_steps), np.asarray(state.updates)
    trained = np.asarray(metrics.trained)
    runs = _runs(seed, metrics.episode_end.shape[1])
    records, returns = [], []
    for i in range(metrics.episode_end.shape[1]):
        ended = metrics.episode_end[:, i]
        seed_returns = [float(r) for r in metrics.episode_return[ended, i]]
        sweep = {"variant": variant_name(runs.variants[i]), "hparams": runs.variants[i]} if runs.variants[i] else {}
        record = {
            "seed": runs.seeds[i],
            **sweep,
            "env_steps": int(env_steps[i]),
            "updates": int(updates[i]),
            "episodes": len(seed_returns),
            "episode_return": float(np.mean(seed_returns)) if seed_returns else None,
            "steps_per_second": num_steps / elapsed_s,
        }
        for name, values in metrics.episode_stats.items():  # means over the episodes ended in the block
            record[name] = float(np.mean(values[ended, i])) if seed_returns else None
        for name, values in metrics.train.items():
            if name == NUMERICAL_FAULT:  # not a record field: a fault stops the run (numerical_faults)
                continue
            record[name] = float(np.mean(values[trained, i])) if trained.any() else None
        records.append(record)
        returns.append(seed_returns)
    return records, returns


def numerical_faults(metrics: BlockMetrics, state: RunState, seed: int | Runs,
                     num_steps: int) -> list[tuple[int | str, int, int]]:
    """(run, env step, fault bits) of each run's first update in this block of `num_steps` env steps that met a
    non-finite loss or gradient (bits: agent.training_step.NUMERICAL_FAULT), earliest first, then in run order. The
    run is its seed, or "S of variant V" in a sweep; `seed` as for block_records."""
    codes = np.asarray(metrics.train[NUMERICAL_FAULT])  # [steps, runs], 0 where finite or not trained
    runs = _runs(seed, codes.shape[1])
    first_step = int(state.env_steps[0]) - num_steps + 1  # the env step of the block's first row
    faults = []
    for i in np.flatnonzero(codes.any(0)):
        row = int(np.flatnonzero(codes[:, i])[0])
        run = f"{runs.seeds[i]} of variant {variant_name(runs.variants[i])}" if runs.variants[i] else runs.seeds[i]
        faults.append((int(i), run, first_step + row, int(codes[row, i])))
    return [fault[1:] for fault in sorted(faults, key=lambda fault: (fault[2], fault[0]))]


def numerical_fault_message(faults: list[tuple[int | str, int, int]], checkpoint_path: str | None) -> str:
    """One sentence on the first of `faults` (numerical_faults) and the checkpoint the run leaves behind."""
    run, env_step, bits = faults[0]
    losses = [name for i, name in enumerate(NUMERICAL_FAULT_LOSSES) if bits >> i & 1]
    what = (f"the {losses[0]} loss or its gradient" if len(losses) == 1
            else f"the {', '.join(losses[:-1])} and {losses[-1]} losses or their gradients")
    others = sorted(fault[0] for fault in faults[1:])
    also = f" (seed{'s' * (len(others) > 1)} {', '.join(map(str, others))} too, in the same block)" if others else ""
    if not checkpoint_path:
        kept = "stopped without saving a checkpoint"
    elif not os.path.exists(checkpoint_path):
        kept = f"stopped before any checkpoint was saved to {checkpoint_path}"
    else:
        try:
            kept = (f"stopped without saving: the checkpoint {checkpoint_path} holds env step "
                    f"{checkpoint.read_header(checkpoint_path)['env_steps']}")
        except (checkpoint.CheckpointError, KeyError):
            kept = f"stopped without saving: {checkpoint_path} was left as it was"
    return f"seed {run}: {what} became non-finite at env step {env_step}{also}; {kept}"


def local_runs(config: Config, seed: int, placement: devices.Placement) -> Runs:
    """The runs (runs_of) this process holds: all of them in one process."""
    runs, mine = runs_of(config, seed), placement.local_runs(config.num_runs)
    return Runs(runs.seeds[mine.start:mine.stop], runs.variants[mine.start:mine.stop])


COUNTERS = ("env_steps", "updates", "episodes")  # the state's leaves the host reads after every block


def host_counters(state: RunState, placement: devices.Placement) -> RunState:
    """The counters of this process's runs, on the host; every other field None."""
    return placement.local(RunState(**{f: getattr(state, f) if f in COUNTERS else None for f in RunState._fields}))


def compile_blocks(config: Config, agent, envs, state: RunState, block_sizes: list[int],
                   placement: devices.Placement) -> tuple[dict, float | None]:
    """({block size: block function}, compile seconds). For a JAX environment one program per block size (at
    most two), compiled before the run starts; for Python environments a Python loop whose jitted pieces
    compile on their first use (compile seconds None)."""
    start = time.time()
    if config.jax_env:
        compiled = {}
        for size in sorted(set(block_sizes)):
            block = devices.jit_block(make_block_function(config, agent, envs, size), placement)
            compiled[size] = block.lower(state).compile()
        return compiled, time.time() - start
    drivers = devices.python_drivers(placement, config.num_runs)
    block = make_block_function(config, agent, envs, config.eval_frequency, drivers)
    return {size: (lambda state, size=size: block(state, size)) for size in set(block_sizes)}, None


class Diagnostics:
    """Model diagnostics (`diag_*` record fields) once per block after training starts, on sequences drawn with
    a fixed key per run: the run's own key is not touched, so diagnostics never change the run."""

    def __init__(self, agent, seeds: list[int], placement: devices.Placement):
        self.placement = placement
        self.keys = placement.put(diagnostic_keys(seeds))
        self.diagnose = jit_diagnose(agent, placement)  # compiled at its first use: runs that never train skip it

    def add_to(self, records: list[dict], state: RunState, counters: RunState) -> None:
        if int(counters.updates[0]) == 0:
            return
        diag = self.placement.local(self.diagnose(state.params, state.hparams, state.replay, self.keys))
        for i, record in enumerate(records):  # NaN: nothing to measure (e.g. no terminal step)
            record.update({f"diag_{name}": float(value[i]) if np.isfinite(value[i]) else None
                           for name, value in diag.items()})


class Checkpoints:
    """When the run saves (every `checkpoint_frequency` env steps, at the end, and when asked to stop) and the
    header a checkpoint holds besides the state: config, seeds, counters, recent returns, where the records
    file stands, the wandb runs to continue."""

    def __init__(self, path: str | None, config: Config, seed: int, placement: devices.Placement,
                 records_file: RecordsFile | None, records_before: int, tracker):
        self.path, self.config, self.seed, self.placement = path, config, seed, placement
        self.records_file, self.tracker = records_file, tracker
        self.records_before = records_before  # what a checkpoint says of the records without a records file

    def due(self, steps: int, size: int, stopping: bool) -> bool:
        period = self.config.checkpoint_frequency
        return bool(self.path) and (stopping or steps == self.config.num_steps
                                    or steps // period > (steps - size) // period)

    def save(self, state: RunState, counters: RunState, returns: list[list[float]]) -> None:
        config, placement, tracker = self.config, self.placement, self.tracker
        output = (self.records_file.position() if self.records_file else
                  output_position(None, 0, self.records_before))
        mine = placement.local_runs(config.num_runs)
        processes = {"processes": {"count": placement.process_count, "index": placement.process_index,
                                   "runs": [mine.start, mine.stop]}} if placement.process_count > 1 else {}
        checkpoint.save(self.path, placement.local(state), {
            "config": config_to_dict(config), "seeds": [self.seed + i for i in range(config.num_seeds)],
            "variants": [variant_name(v) for v in sweep_variants(config)],
            "env_steps": int(counters.env_steps[0]), "updates": int(counters.updates[0]),
            "episodes": [int(e) for e in counters.episodes],
            "recent_returns": [run_returns[-RETURN_WINDOW:] for run_returns in returns],
            "output": output,
            "wandb": {"group": tracker.group, "run_ids": tracker.run_ids} if tracker else None, **processes})


class BlockRunner:
    """Runs one compiled block and turns what it returns into the block's outputs (outputs.sinks.Block): the
    records, with the model diagnostics and evaluation episodes where they are due, and the recorded episodes
    where videos are."""

    def __init__(self, blocks: dict, runs: Runs, placement: devices.Placement, diagnose: Diagnostics | None,
                 observer: RunObserver | None):
        self.blocks, self.runs, self.placement = blocks, runs, placement
        self.diagnose, self.observer = diagnose, observer

    def __call__(self, state: RunState, size: int) -> tuple[RunState, BlockMetrics, RunState, Block]:
        """(state, this process's metrics, its counters on the host, outputs) after `size` env steps."""
        start = time.time()
        state, metrics = self.blocks[size](state)
        jax.block_until_ready(state)
        metrics, counters = self.placement.local(metrics), host_counters(state, self.placement)
        records, returns = block_records(metrics, counters, self.runs, time.time() - start, size)
        if self.diagnose:
            self.diagnose.add_to(records, state, counters)
        recordings = self.observer.after_block(state, records, size) if self.observer else None
        return state, metrics, counters, Block(int(counters.env_steps[0]), records, returns, recordings,
                                               [{} for _ in records])


def check_faults(metrics: BlockMetrics, state: RunState, counters: RunState, runs: Runs, size: int,
                 stop: StopSignals, placement: devices.Placement, checkpoint_path: str | None) -> bool:
    """Whether the run stops after this block on a signal; raises NumericalFault where a run of any process met
    a non-finite loss or gradient, before any save, so that the last checkpoint has finite updates only. Every
    process stops where any of them must (one small exchange between blocks)."""
    faults = numerical_faults(metrics, counters, runs, size)
    any_fault, stopping = placement.any_process([bool(faults), stop.requested is not None])
    if any_fault:
        message = (numerical_fault_message(faults, checkpoint_path) if faults else
                   f"a run of another process met a non-finite loss or gradient in the block ending at env step "
                   f"{int(counters.env_steps[0])}; stopped without saving")
        raise NumericalFault(message, state)
    return stopping


def run(config: Config, env, seed: int, output: str | None, progress: bool = True, tracker=None,
        save_checkpoint: str | None = None, resume: checkpoint.Resume | None = None,
        diagnostics: bool = True, video_dir: str | None = None, tensorboard=None,
        placement: devices.Placement | None = None) -> dict:
    """Trains `config.num_seeds` seeds for `config.num_steps` env steps, from the start or from `resume`.
    Saves a checkpoint to `save_checkpoint` (if given) every `checkpoint_frequency` env steps, at the end and
    after the current block on SIGINT/SIGTERM. Returns the final state, the completed episodes' returns per
    seed (on resume: the last RETURN_WINDOW before it, then the new ones), and timing figures. With
    `diagnostics`, each record after training starts also holds the model diagnostics (`diag_*`). A non-finite
    loss or gradient in any seed's update raises NumericalFault once its block's records are written, without
    saving a checkpoint. With `config.eval_every`, the blocks that cross a multiple of it add evaluation episodes'
    returns to their records (`eval_*`); with `video_dir`, videos are written there (agent.evaluation.RunObserver).

    Each block's records and media go to the sinks (outputs.sinks): the records file `output`, the videos, the
    `tracker` (outputs.wandb_runs.Tracker), `tensorboard` (outputs.tensorboard_events.TensorBoardSink) and the
    progress bar. The caller closes the tracker and `tensorboard`; the run closes the others.

    The runs are sharded over `placement`'s devices (default: devices.default_placement; one device runs
    today's program). With several processes, this one holds, records and saves only its own runs (local_runs): the
    caller gives it files of its own (devices.process_path), and `resume` holds its runs only."""
    placement = placement or devices.default_placement(config.num_runs)
    placement.check(config)
    agent = make_agent(config, env)
    runs = local_runs(config, seed, placement)
    envs = seed_environments(env, runs.seeds, config.jax_env, placement)
    if resume:
        state = restart_episodes(resume.state, envs, runs.seeds) if envs.restarts_on_resume else resume.state
        state = placement.put(state)
    else:
        state = initial_state(config, agent, envs, seed, placement)
    all_returns = resume.recent_returns if resume else [[] for _ in runs.seeds]
    counters = host_counters(state, placement)
    block_sizes = block_schedule(int(counters.env_steps[0]), config.num_steps, config.eval_frequency)
    blocks, compile_s = compile_blocks(config, agent, envs, state, block_sizes, placement)
    # Evaluation and videos play on environments and keys of their own: they never change the run.
    observer = RunObserver(config, env, agent, runs, video_dir) if config.eval_every or video_dir else None
    run_block = BlockRunner(blocks, runs, placement, Diagnostics(agent, runs.seeds, placement) if diagnostics
                            else None, observer)
    records_file = RecordsFile(output, *((resume.output_bytes, resume.output_records) if resume else ())) \
        if output else None
    checkpoints = Checkpoints(save_checkpoint, config, seed, placement, records_file,
                              resume.output_records if resume else 0, tracker)
    sinks = [sink for sink in (
        records_file,
        VideoFiles(video_dir, runs.seeds, runs.variants, env.spec, config.binary_state, DREAM_CONTEXT)
        if video_dir else None,
        tracker, tensorboard,
        ProgressBar(config.num_steps, int(counters.env_steps[0]), progress and placement.process_index == 0,
                    all_returns)) if sink is not None]
    run_start = time.time()
    try:
        with StopSignals(enabled=bool(save_checkpoint)) as stop:
            for size in block_sizes:
                state, metrics, counters, block = run_block(state, size)
                for run_returns, new in zip(all_returns, block.returns):
                    run_returns.extend(new)
                for sink in sinks:
                    sink.write(block)
                stopping = check_faults(metrics, state, counters, runs, size, stop, placement, save_checkpoint)
                if checkpoints.due(block.env_steps, size, stopping):
                    checkpoints.save(state, counters, all_returns)
                if stopping:
                    print(f"\nstopped by {stop.requested or 'a signal to another process'} at env step "
                          f"{block.env_steps}; checkpoint saved to {save_checkpoint}; resume with the same "
                          f"command plus --load_checkpoint {save_checkpoint}", file=sys.stderr)
                    break
    finally:
        for sink in sinks:
            if sink is not tracker and sink is not tensorboard:  # the caller's to close
                sink.close()
        envs.close()
        if observer:
            observer.close()
    return {"state": state, "returns": all_returns, "compile_s": compile_s, "run_s": time.time() - run_start,
            "runs": runs, "counters": host_counters(state, placement)}


def print_summary(result: dict, seed: int) -> None:
    counters = result.get("counters") or result["state"]
    steps = int(counters.env_steps[0])
    compiled = (f"compiled in {result['compile_s']:.1f} s" if result["compile_s"] is not None
                else "agent pieces compiled on first use")
    print(f"{compiled}, ran {steps} env steps per seed in {result['run_s']:.1f} s "
          f"({steps / max(result['run_s'], 1e-9):.0f} steps/s)")
    runs = result.get("runs") or _runs(seed, len(result["returns"]))
    for i, returns in enumerate(result["returns"]):
        recent = returns[-RETURN_WINDOW:]
        mean = f"{np.mean(recent):.3f}" if recent else "n/a (no episode completed)"
        episodes = int(counters.episodes[i])
        variant = f"{variant_name(runs.variants[i])}, " if runs.variants[i] else ""
        print(f"{variant}seed {runs.seeds[i]}: {episodes} episodes, mean return over the last {len(recent)}: {mean}")


def video_folder(args: argparse.Namespace) -> str | None:
    """Where --video writes: --video_dir, else the output file's name without its extension plus _videos."""
    if not getattr(args, "video", False):
        return None
    return args.video_dir or os.path.splitext(args.output or "dreamer.out")[0] + "_videos"


def run_command(args: argparse.Namespace, config: Config) -> int:
    """Runs a command line parsed and checked by `cli.script_main` (the scripts' entry, which imports this
    module only then): the environment and checkpoint checks (one sentence, exit 2, nothing
    written), then the run itself (a NumericalFault: one sentence, exit NUMERICAL_FAULT_EXIT_CODE). With
    several processes, each reads and writes files of its own (devices.process_path)."""
    placement = devices.default_placement(config.num_runs)
    output, save_path = placement.process_path(args.output), placement.process_path(args.save_checkpoint)
    try:
        env, resume = checked_start(args, config, placement, output, save_path)
    except (ConfigError, checkpoint.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        if placement.process_count > 1:
            placement.any_process([True, False, False])  # so that the other processes stop too
        return 2
    refused = processes_disagree(placement, resume, args.load_checkpoint)
    if refused:
        print(f"error: {refused}; nothing was run", file=sys.stderr)
        return 2
    seed = resume.seed if resume else (args.seed or 0)
    announce(config, seed, placement, args.output, resume, args.load_checkpoint)
    runs = local_runs(config, seed, placement)
    tracker = wandb_tracker(args, config, runs, resume, placement)
    tensorboard = TensorBoardSink(args.tensorboard, runs.seeds, runs.variants) if args.tensorboard else None
    try:
        try:
            result = run(config, env, seed, output, progress=not args.no_progress, tracker=tracker,
                         save_checkpoint=save_path or None, resume=resume, video_dir=video_folder(args),
                         tensorboard=tensorboard, placement=placement)
        finally:
            tracker.finish()
            if tensorboard:
                tensorboard.close()
    except NumericalFault as fault:  # reported once the output file is closed and the tracker finished
        print(f"error: {fault}", file=sys.stderr)
        return NUMERICAL_FAULT_EXIT_CODE
    print_summary(result, seed)
    if args.export:
        from experiment import saved_agent  # it builds on this module
        saved_agent.export_after_training(args.export, result, config)
        print(f"policy exported to {args.export}")
    return 0


def checked_start(args: argparse.Namespace, config: Config, placement: devices.Placement, output: str | None,
                  save_path: str | None) -> tuple[object, checkpoint.Resume | None]:
    """(environment, resume or None) of a command line, after every check that can refuse it before anything
    is written: the environment and its observations, the output paths, whether the runs' state fits in memory
    (runtime.memory), and the checkpoint to resume. Raises ConfigError or CheckpointError with one sentence."""
    placement.check(config)
    env = environment_from_config(config)
    check_observations(config, env)
    if output and os.path.isdir(output):
        raise ConfigError(f"output path {output!r} is a directory; -o needs a file name")
    if save_path:
        checkpoint.check_save_path(save_path)
    if getattr(args, "export", None):
        if placement.process_count > 1:
            raise ConfigError("--export runs in a single process for now")
        from experiment.saved_agent import check_export_path
        check_export_path(args.export)
    for flag, folder in (("--video_dir", video_folder(args)), ("--tensorboard", args.tensorboard)):
        if folder and os.path.exists(folder) and not os.path.isdir(folder):
            raise ConfigError(f"{flag} {folder!r} is a file; it needs a folder (created if missing)")
    if placement.process_count > 1 and (config.eval_every or video_folder(args) or args.tensorboard):
        raise ConfigError("evaluation, videos and TensorBoard run in a single process for now; turn off "
                          "eval_every, --video and --tensorboard to run on several processes")
    one_run, one_env = memory.one_run(config), seed_environments(env, [0], config.jax_env)
    memory.check_fits(config, state_shapes(one_run, make_agent(one_run, env), one_env), placement)
    one_env.close()
    load_path = devices.checkpoint_to_load(args.load_checkpoint, placement) if args.load_checkpoint else None
    if args.load_checkpoint and not load_path:
        devices.warn_process(f"warning: checkpoint {args.load_checkpoint!r} does not exist; starting a fresh run",
                             placement)
    if not load_path:
        return env, None
    mine = placement.local_runs(config.num_runs)
    devices.check_checkpoint_runs(load_path, checkpoint.read_header(load_path), placement, mine)
    envs = seed_environments(env, mine, config.jax_env)
    expected = state_shapes(config, make_agent(config, env), envs)
    expected = jax.tree.map(lambda s: jax.ShapeDtypeStruct((len(mine), *s.shape[1:]), s.dtype), expected)
    envs.close()
    return env, checkpoint.prepare_resume(load_path, config_to_dict(config), expected, args.seed, config.num_steps,
                                          output)


def processes_disagree(placement: devices.Placement, resume, load_checkpoint: str | None) -> str | None:
    """With several processes, why they cannot start together (one refused its part, or some resume and others
    start afresh), else None: every process resumes, or none does, and none starts while another stopped."""
    if placement.process_count == 1:
        return None
    refused, resumed, fresh = placement.any_process([False, resume is not None, resume is None])
    if refused:
        return "another process refused its part of the run"
    if resumed and fresh:
        return f"some processes found their file of checkpoint {load_checkpoint!r} and others did not"
    return None


def announce(config: Config, seed: int, placement: devices.Placement, output: str | None, resume,
             load_checkpoint: str | None) -> None:
    """The run's first line: what runs, where, and where its records go (from the first process only)."""
    if placement.process_index != 0:
        return
    variants = sweep_variants(config)
    sweep = f"{len(variants)} variants ({'; '.join(map(variant_name, variants))}) x " if config.sweep else ""
    files = (f", metrics -> {output}" if placement.process_count == 1 else
             f", each process's metrics -> {devices.process_path(output, 'P', placement.process_count)}")
    print(f"{sweep}{config.num_seeds} seed(s) of {config.env_config.env_name}, seeds {seed}.."
          f"{seed + config.num_seeds - 1}, {config.num_steps} env steps, {placement.describe()}{files}"
          + (f", resuming from env step {resume.env_steps} of {load_checkpoint}" if resume else ""))


def wandb_tracker(args: argparse.Namespace, config: Config, runs: Runs, resume,
                  placement: devices.Placement) -> Tracker:
    """The wandb runs of this process's runs: a resume continues the checkpoint's runs and group; several
    processes share one group."""
    stored = resume.wandb if resume and resume.wandb else {}
    group = args.group or stored.get("group")
    if placement.process_count > 1 and not group:
        group = placement.shared_text(make_group_name(config.env_config.env_name))
    tracker = Tracker(config_to_dict(config), runs.seeds, group, project=args.wandb_project,
                      mode=args.wandb, tags=args.tag, run_ids=stored.get("run_ids"), variants=runs.variants)
    if tracker.active and placement.process_index == 0:
        print(f"wandb group {tracker.group} ({tracker.mode}), one run per {'variant and ' * bool(config.sweep)}seed")
    return tracker
