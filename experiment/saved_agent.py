"""A trained agent outside training: `--evaluate N` plays N evaluation episodes per run with a checkpoint's
parameters (agent.evaluation.RunObserver, as in-training evaluation does), and `--export PATH` writes what acting
needs, pickle-free, for use from Python (`load_export`)."""

import argparse
import json
import os
import sys
from dataclasses import replace
from typing import NamedTuple

import jax
import numpy as np

from agent.evaluation import DREAM_CONTEXT, RunObserver
from environments import environment_from_config, seed_environments
from experiment.config import Config, ConfigError, config_from_dict, config_to_dict, variant_name
from experiment.runner import Runs, runs_of, state_shapes, video_folder
from initialization import Params, RunState, check_observations, make_agent
from outputs.sinks import Block
from outputs.videos import VideoFiles
from runtime import checkpoint, devices

EXPORT_FORMAT = "dreamer-jax policy"
# The checkpoint leaves acting reads: not the critics, optimizer states or replay, which are never read.
ACTING_LEAVES = (".params.world_model", ".params.actor", ".hparams")
# Config keys an evaluation may change besides checkpoint.RESUMABLE_KEYS: the environment (whose spaces must be
# the checkpoint's), env_config's keys included.
ENVIRONMENT_KEYS = ("environment", "jax_env")


class SavedAgent(NamedTuple):
    """The acting parameters of a checkpoint's runs, with a leading run axis (runs_of's order)."""

    params: Params  # world_model and actor; critic and target_critic None
    hparams: dict  # {key: float32 [runs]} each run's swept values
    runs: Runs
    env_steps: int  # the env step the checkpoint was saved at


def describe_spaces(name: str, spec) -> str:
    actions = f"{spec.num_actions} {'continuous action components' if spec.continuous else 'actions'}"
    return f"{name} (observations {np.dtype(spec.obs_dtype)}{list(spec.obs_shape)}, {actions})"


def _spaces(spec) -> tuple:
    return tuple(spec.obs_shape), np.dtype(spec.obs_dtype), spec.num_actions, spec.continuous


def load_saved_agent(path: str, config: Config, env, seed: int | None) -> SavedAgent:
    """The acting parameters of checkpoint `path` for evaluating on `env` with `config`: the config must be the
    checkpoint's apart from checkpoint.RESUMABLE_KEYS and the environment, whose observation and action spaces
    must be the checkpoint environment's. Reads only ACTING_LEAVES. Raises CheckpointError with one sentence."""
    header = checkpoint.read_header(path)
    stored = header.get("config", {})
    differences = [d for d in checkpoint.config_differences(stored, config_to_dict(config))
                   if d.split(" ")[0] not in ENVIRONMENT_KEYS and not d.startswith("env_config.")]
    if differences:
        raise checkpoint.CheckpointError(
            f"checkpoint {path!r} belongs to a run with another config, differing in {'; '.join(differences)}; "
            f"an evaluation may change only {', '.join(checkpoint.RESUMABLE_KEYS)} and the environment")
    if stored.get("env_config") != config_to_dict(config)["env_config"] or stored.get("environment") != \
            config.environment:
        trained_config = config_from_dict(stored)
        trained_env = environment_from_config(trained_config)
        if _spaces(trained_env.spec) != _spaces(env.spec):
            trained = describe_spaces(trained_config.env_config.env_name, trained_env.spec)
            given = describe_spaces(config.env_config.env_name, env.spec)
            raise checkpoint.CheckpointError(
                f"checkpoint {path!r} was trained on {trained}, but {given} has other spaces; evaluate on an "
                "environment with the same observation and action spaces")
    stored_seed = header["seeds"][0]
    if seed is not None and seed != stored_seed:
        raise checkpoint.CheckpointError(f"checkpoint {path!r} belongs to seed {stored_seed}, not {seed}; leave out "
                                         "-s to evaluate it")
    runs = runs_of(config, stored_seed)
    envs = seed_environments(env, runs.seeds, config.jax_env)
    try:
        expected = state_shapes(config, make_agent(config, env), envs)
    finally:
        envs.close()
    state = checkpoint.load_part(path, expected, ACTING_LEAVES)
    params = state.params._replace(critic=None, target_critic=None)
    return SavedAgent(params, state.hparams, runs, int(header["env_steps"]))


def checked_evaluation(args: argparse.Namespace, config: Config) -> tuple[object, SavedAgent]:
    """(environment, saved agent) of an `--evaluate` command line after every check, before anything is written.
    Raises ConfigError or CheckpointError with one sentence."""
    placement = devices.default_placement(config.num_runs)
    if placement.process_count > 1:
        raise ConfigError("--evaluate runs in a single process; start it without --coordinator_address")
    if not args.load_checkpoint:
        raise ConfigError("--evaluate needs the checkpoint of a trained agent: give it with --load_checkpoint")
    if not os.path.exists(args.load_checkpoint):
        raise ConfigError(f"checkpoint {args.load_checkpoint!r} does not exist; --evaluate needs a trained agent")
    env = environment_from_config(config)
    check_observations(config, env)
    header = checkpoint.read_header(args.load_checkpoint)
    trained_output = (header.get("output") or {}).get("path")
    if args.output and os.path.isdir(args.output):
        raise ConfigError(f"output path {args.output!r} is a directory; -o needs a file name")
    if args.output and trained_output and os.path.abspath(args.output) == os.path.abspath(trained_output):
        raise ConfigError(f"-o {args.output!r} is the records file of the run in {args.load_checkpoint!r}; give the "
                          "evaluation's records another file")
    if args.export:
        check_export_path(args.export)
    folder = video_folder(args)
    if folder and os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"--video_dir {folder!r} is a file; it needs a folder (created if missing)")
    return env, load_saved_agent(args.load_checkpoint, config, env, args.seed)


def evaluation_records(episodes, saved: SavedAgent, config: Config, path: str) -> list[dict]:
    """One record per run: its finished episodes' returns and lengths, in the order they ended, and their
    statistics (None where no episode finished within eval_max_steps)."""
    records = []
    for i, (returns, lengths) in enumerate(zip(np.asarray(episodes.returns), np.asarray(episodes.lengths))):
        finished = np.isfinite(returns)
        returns, lengths = returns[finished], lengths[finished]
        variant = saved.runs.variants[i]
        stats = {name: float(f(returns)) if finished.any() else None
                 for name, f in (("eval_return", np.mean), ("eval_return_std", np.std), ("eval_return_min", np.min),
                                 ("eval_return_max", np.max))}
        records.append({"seed": saved.runs.seeds[i],
                        **({"variant": variant_name(variant), "hparams": variant} if variant else {}),
                        "env_steps": saved.env_steps, "checkpoint": path, "env_name": config.env_config.env_name,
                        "eval_policy": config.eval_policy, "eval_episodes": config.eval_episodes,
                        "eval_returns": [float(r) for r in returns], "eval_lengths": [int(n) for n in lengths],
                        **stats, "eval_unfinished": int((~finished).sum())})
    return records


def summary_line(record: dict) -> str:
    variant = f"{record['variant']}, " if record.get("variant") else ""
    finished = len(record["eval_returns"])
    if not finished:
        return f"{variant}seed {record['seed']}: no episode finished within eval_max_steps"
    return (f"{variant}seed {record['seed']}: {finished} episodes, return mean {record['eval_return']:.3f}, "
            f"std {record['eval_return_std']:.3f}, min {record['eval_return_min']:.3f}, "
            f"max {record['eval_return_max']:.3f}")


def evaluate_command(args: argparse.Namespace, config: Config) -> int:
    """`--load_checkpoint CKPT --evaluate N`: N evaluation episodes per run with `eval_policy`, keyed as the
    in-training evaluation at the checkpoint's env step is (so the returns are those of a run that evaluated
    there with eval_episodes N). Trains nothing and writes only the records (`-o`), the videos (`--video`) and
    the export (`--export`). A mistake: one sentence, exit 2."""
    config = replace(config, eval_episodes=args.evaluate)
    try:
        env, saved = checked_evaluation(args, config)
    except (ConfigError, checkpoint.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    steps = saved.env_steps
    print(f"evaluating {args.load_checkpoint} (env step {steps}) on {config.env_config.env_name}: "
          f"{args.evaluate} episode(s) per run, {config.eval_policy} actions")
    folder = video_folder(args)
    observer = RunObserver(config, env, make_agent(config, env), saved.runs, folder)
    state = RunState(**dict.fromkeys(RunState._fields))._replace(params=saved.params, hparams=saved.hparams)
    try:
        records = evaluation_records(observer.evaluate(state, steps), saved, config, args.load_checkpoint)
        if folder:
            videos = VideoFiles(folder, saved.runs.seeds, saved.runs.variants, env.spec, config.binary_state,
                                DREAM_CONTEXT)
            videos.write(Block(steps, records, [[] for _ in records], observer.recordings(state, steps),
                               [{} for _ in records]))
    finally:
        observer.close()
    if args.output:
        with open(args.output, "w") as file:
            file.writelines(json.dumps(record) + "\n" for record in records)
    for record in records:
        print(summary_line(record))
    if args.export:
        export_policy(args.export, saved.params, saved.hparams, config, saved.runs, steps)
        print(f"policy exported to {args.export}")
    return 0


# Exported policies: one .npz of the acting parameters (leading run axis) and a JSON header, no pickle.

def check_export_path(path: str) -> None:
    """Refuses, before anything runs, an --export path the write would fail on (ConfigError)."""
    if os.path.isdir(path):
        raise ConfigError(f"--export path {path!r} is a directory; it needs a file name")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise ConfigError(f"the folder of --export path {path!r} does not exist")


def export_policy(path: str, params: Params, hparams: dict, config: Config, runs: Runs, env_steps: int) -> None:
    """Writes the runs' acting parameters (world model and actor, critics left out) and swept values to `path`
    with the config, seeds and variants in its JSON header; atomically, as checkpoints are written."""
    acting = {"params": params._replace(critic=None, target_critic=None), "hparams": hparams}
    checkpoint.save(path, acting, {"config": config_to_dict(config), "seeds": runs.seeds,
                                   "variants": [variant_name(v) for v in runs.variants], "env_steps": env_steps},
                    file_format=EXPORT_FORMAT)


class ExportedPolicy(NamedTuple):
    """An exported policy, read back by `load_export`."""

    config: Config
    params: Params  # world_model and actor with a leading run axis; critic and target_critic None
    hparams: dict  # {key: float32 [runs]}
    seeds: list[int]  # each run's seed
    variants: list[str]  # each run's variant name ("" without a sweep)
    env_steps: int

    def run(self, i: int) -> tuple[Params, dict]:
        """(params, hparams) of run i, as agent.act and agent_policy take them."""
        return jax.tree.map(lambda x: x[i], (self.params, self.hparams))


def load_export(path: str) -> ExportedPolicy:
    """Reads an exported policy (never unpickling anything), checking every leaf against the model its config
    builds. Raises checkpoint.CheckpointError with one sentence."""
    with np.load(path, allow_pickle=False) as archive:
        if checkpoint.HEADER_KEY not in archive.files:
            raise checkpoint.CheckpointError(f"{path!r} is not an exported policy (it has no header)")
        header = json.loads(archive[checkpoint.HEADER_KEY].tobytes().decode("utf-8"))
        if header.get("format") != EXPORT_FORMAT:
            raise checkpoint.CheckpointError(f"{path!r} is not an exported policy (its format is "
                                             f"{header.get('format')!r})")
        config = config_from_dict(header["config"])
        env = environment_from_config(config)
        runs = runs_of(config, header["seeds"][0])
        envs = seed_environments(env, runs.seeds, config.jax_env)
        try:
            shapes = state_shapes(config, make_agent(config, env), envs)
        finally:
            envs.close()
        expected = {"params": shapes.params._replace(critic=None, target_critic=None), "hparams": shapes.hparams}
        leaves, treedef = jax.tree_util.tree_flatten_with_path(expected)
        arrays = []
        for key_path, leaf in leaves:
            key = jax.tree_util.keystr(key_path)
            array = archive[key] if key in archive.files else None
            if array is None or array.shape != tuple(leaf.shape) or array.dtype != leaf.dtype:
                raise checkpoint.CheckpointError(f"exported policy {path!r} lacks leaf {key!r} as "
                                                 f"{np.dtype(leaf.dtype)}{list(leaf.shape)}")
            arrays.append(array)
    acting = jax.device_put(jax.tree_util.tree_unflatten(treedef, arrays))
    return ExportedPolicy(config, acting["params"], acting["hparams"], header["seeds"], header["variants"],
                          header["env_steps"])


def export_after_training(path: str, result: dict, config: Config) -> None:
    """`--export` after a training run: the final state's acting parameters."""
    state, runs = result["state"], result["runs"]
    export_policy(path, jax.device_get(state.params), jax.device_get(state.hparams), config, runs,
                  int(result["counters"].env_steps[0]))

