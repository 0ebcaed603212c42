"""Set-up and main loop shared by the two entry scripts: command line, config, environment, agent, the
jitted block run repeatedly over all seeds, progress bar and the JSON-lines output file."""

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agent_environment_interaction_loop import BlockMetrics, make_block_function
from config import Config, ConfigError, config_to_dict, load_config
from environments import make_environment
from initialization import RunState, check_observations, make_agent
from tracking import DEFAULT_PROJECT, MODES, Tracker

RETURN_WINDOW = 50  # episodes in the final per-seed summary


def build_arg_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-c", "--config", required=True, help="JSON config file (see config.json; unknown keys are errors)")
    parser.add_argument("-s", "--seed", type=int, default=0,
                        help="random seed; with several seeds, seed i of the run uses SEED+i (default 0)")
    parser.add_argument("-o", "--output", default="dreamer.out",
                        help="JSON-lines metrics file, one record per seed per block (default dreamer.out)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, parsed and validated like the file; dotted keys reach "
                             "env_config, e.g. --set env_config.env_name=Breakout-MinAtar (repeatable)")
    parser.add_argument("--no_progress", action="store_true", help="do not draw the progress bar")
    parser.add_argument("-g", "--group", default=None,
                        help="wandb group shared by every seed's run (default: a generated name, printed at start)")
    parser.add_argument("--tag", action="append", default=[], help="wandb tag for every seed's run (repeatable)")
    parser.add_argument("--wandb_project", default=DEFAULT_PROJECT, help=f"wandb project (default {DEFAULT_PROJECT})")
    parser.add_argument("--wandb", choices=MODES, default=None,
                        help="wandb mode: one run per seed; default offline unless WANDB_MODE is set "
                             "(offline runs are uploaded later with `wandb sync`)")
    return parser


def initial_state(config: Config, agent, seed: int) -> RunState:
    """Stacked initial states of seeds seed, seed+1, ..., each built exactly as a single-seed run would."""
    keys = jnp.stack([jax.random.PRNGKey(seed + i) for i in range(config.num_seeds)])
    return jax.jit(jax.vmap(agent.init_state))(keys)


def block_records(metrics: BlockMetrics, state: RunState, seed: int, elapsed_s: float, num_steps: int):
    """Host-side summary of one block: (one JSON record per seed, completed-episode returns per seed)."""
    metrics = jax.device_get(metrics)
    env_steps, updates = np.asarray(state.env_steps), np.asarray(state.updates)
    trained = np.asarray(metrics.trained)
    records, returns = [], []
    for i in range(metrics.episode_end.shape[1]):
        ended = metrics.episode_end[:, i]
        seed_returns = [float(r) for r in metrics.episode_return[ended, i]]
        record = {
            "seed": seed + i,
            "env_steps": int(env_steps[i]),
            "updates": int(updates[i]),
            "episodes": len(seed_returns),
            "episode_return": float(np.mean(seed_returns)) if seed_returns else None,
            "steps_per_second": num_steps / elapsed_s,
        }
        for name, values in metrics.train.items():
            record[name] = float(np.mean(values[trained, i])) if trained.any() else None
        records.append(record)
        returns.append(seed_returns)
    return records, returns


class ProgressBar:
    """One line on stderr, redrawn in place on a terminal and printed every ~10% otherwise."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled, self.start = total, enabled, time.time()
        self.tty, self.next_print = sys.stderr.isatty(), 0.0

    def update(self, steps: int, recent_returns: list[float]):
        if not self.enabled:
            return
        fraction = steps / self.total
        if not self.tty and fraction < self.next_print and steps < self.total:
            return
        self.next_print = fraction + 0.1
        rate = steps / max(time.time() - self.start, 1e-9)
        recent = f"{np.mean(recent_returns):.3f}" if recent_returns else "n/a"
        bar = "#" * int(30 * fraction) + "-" * (30 - int(30 * fraction))
        line = f"[{bar}] {steps}/{self.total} steps  {rate:.0f} steps/s  return (last {RETURN_WINDOW}) {recent}"
        print(("\r" if self.tty else "") + line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self):
        if self.enabled and self.tty:
            print(file=sys.stderr)


def run(config: Config, env, seed: int, output: str | None, progress: bool = True, tracker=None) -> dict:
    """Trains `config.num_seeds` seeds for `config.num_steps` env steps. Returns the final state, every
    completed episode's return per seed, and timing figures."""
    agent = make_agent(config, env)
    state = initial_state(config, agent, seed)

    block_sizes = [config.eval_frequency] * (config.num_steps // config.eval_frequency)
    if config.num_steps % config.eval_frequency:
        block_sizes.append(config.num_steps % config.eval_frequency)
    compiled, compile_start = {}, time.time()
    for size in sorted(set(block_sizes)):
        block = jax.jit(make_block_function(config, agent, env, size), donate_argnums=0)
        compiled[size] = block.lower(state).compile()
    compile_s = time.time() - compile_start

    all_returns = [[] for _ in range(config.num_seeds)]
    bar = ProgressBar(config.num_steps, progress)
    out = open(output, "w") if output else None
    run_start = time.time()
    try:
        for size in block_sizes:
            block_start = time.time()
            state, metrics = compiled[size](state)
            jax.block_until_ready(state)
            records, returns = block_records(metrics, state, seed, time.time() - block_start, size)
            for i, seed_returns in enumerate(returns):
                all_returns[i].extend(seed_returns)
            if out:
                out.writelines(json.dumps(r) + "\n" for r in records)
                out.flush()
            if tracker:
                tracker.log_block(records)
            bar.update(int(state.env_steps[0]), [r for rs in all_returns for r in rs[-RETURN_WINDOW:]])
    finally:
        bar.close()
        if out:
            out.close()
    return {"state": state, "returns": all_returns, "compile_s": compile_s, "run_s": time.time() - run_start}


def print_summary(result: dict, seed: int) -> None:
    steps = int(result["state"].env_steps[0])
    print(f"compiled in {result['compile_s']:.1f} s, ran {steps} env steps per seed in {result['run_s']:.1f} s "
          f"({steps / max(result['run_s'], 1e-9):.0f} steps/s)")
    for i, returns in enumerate(result["returns"]):
        recent = returns[-RETURN_WINDOW:]
        mean = f"{np.mean(recent):.3f}" if recent else "n/a (no episode completed)"
        print(f"seed {seed + i}: {len(returns)} episodes, mean return over the last {len(recent)}: {mean}")


def main(argv: Sequence[str] | None, description: str, single_seed: bool) -> int:
    args = build_arg_parser(description).parse_args(argv)
    try:
        config = load_config(args.config, args.set)
        if single_seed:
            config = replace(config, num_seeds=1)
        env = make_environment(config.environment, config.env_config.env_name)
        check_observations(config, env)
        if args.output and os.path.isdir(args.output):
            raise ConfigError(f"output path {args.output!r} is a directory; -o needs a file name")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{config.num_seeds} seed(s) of {config.env_config.env_name}, seeds {args.seed}..{args.seed + config.num_seeds - 1}, "
          f"{config.num_steps} env steps, metrics -> {args.output}")
    seeds = [args.seed + i for i in range(config.num_seeds)]
    tracker = Tracker(config_to_dict(config), seeds, args.group, project=args.wandb_project, mode=args.wandb,
                      tags=args.tag)
    if tracker.active:
        print(f"wandb group {tracker.group} ({tracker.mode}), one run per seed")
    try:
        result = run(config, env, args.seed, args.output, progress=not args.no_progress, tracker=tracker)
    finally:
        tracker.finish()
    print_summary(result, args.seed)
    return 0
