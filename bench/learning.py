"""The learning benchmark: small tasks, each learned by N seeds and compared with a random policy.

Each task trains its seeds vmapped in one program (`experiment.runner.run`); a uniformly random policy is measured on
the same environment.

    python3 bench/learning.py --list                                   # the tasks, their configs and thresholds
    python3 bench/learning.py                                          # every task, default steps and seeds
    python3 bench/learning.py --tasks catch,cartpole-gymnax --seeds 4 --steps 5000
    python3 bench/learning.py --tasks atari-pong --config configs/dreamerv3_atari100k.json --steps 100000 --seeds 5

Per task: the random policy's mean return, each seed's final return (mean over its last `window` completed
episodes), their mean, their interquartile mean (IQM) with a 95% percentile bootstrap CI over seeds, the
fraction of seeds whose final return reaches the task's threshold, env steps and wall time, speed and memory.
An Atari task adds each seed's final evaluation return and its human-normalised score, and the report their mean
and median over the Atari tasks run (atari_summary). stdout holds one JSON object (as every bench script's); the
same object goes to OUT/results.json, and a Markdown table of it to OUT/results.md and stderr, followed by the
plot_metric.py commands that draw each task's learning curve from its JSON-lines records, OUT/<task>.jsonl
(experiment.runner.run's output, the run scripts' `-o` format).
"""

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from typing import Sequence

import numpy as np
from scipy.stats import trim_mean

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from envs.atari_scores import human_normalized, reference_scores  # noqa: E402
from experiment import cli  # noqa: E402
from experiment.config import Config, ConfigError, load_config  # noqa: E402
from outputs.plot_metric import bootstrap_ci  # noqa: E402
from runtime import huge_pages  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Task:
    """One benchmark task: a config file with overrides, how long and how many seeds, and what counts as learned."""

    config: str  # config file, relative to the project root
    overrides: tuple[str, ...]  # KEY=VALUE overrides applied to the file, as the run scripts' --set
    steps: int  # env steps per seed (num_steps)
    seeds: int  # seeds vmapped in one program (num_seeds)
    threshold: float  # a seed has learned the task when its final return is at least this (see above_random)
    window: int  # episodes: a seed's final return is the mean over its last `window` completed episodes
    above_random: bool = False  # threshold is a margin over the random policy's measured return


def atari_task(game: str, margin: float, window: int) -> Task:
    """A game of the Atari 100k set on DreamerV3's CPU-size Atari preset, learned when its final return is
    `margin` above the game's standard random score (envs/atari_scores.py): the measured random policy
    completes few of these long episodes."""
    return Task("configs/dreamerv3_atari100k_small.json", (f"env_config.env_name={game}",), steps=30_000, seeds=2,
                threshold=reference_scores(game).random + margin, window=window)


def dmc_task(env_name: str, observation: str, steps: int, seeds: int) -> Task:
    """A DMC task on DreamerV3's CPU-size DMC preset for its observation, learned when its final return (mean
    of its last 5 episodes) is 200 above the random policy's: returns run from 0 to 1,000."""
    preset = {"states": "proprio", "pixels": "vision"}[observation]
    return Task(f"configs/dreamerv3_dmc_{preset}_small.json", (f"env_config.env_name={env_name}",), steps=steps,
                seeds=seeds, threshold=200.0, window=5, above_random=True)


# The suite, one entry per task: add or tune tasks here, nothing else reads task settings (--list prints them).
TASKS: dict[str, Task] = {
    "catch": Task("configs/quickstart.json", (), steps=20_000, seeds=16, threshold=0.8, window=50),
    "cartpole-gymnax": Task("configs/cartpole.json", ("environment=gymnax_env", "jax_env=true"),
                            steps=6_000, seeds=8, threshold=150.0, window=10),
    "cartpole-gymnasium": Task("configs/cartpole.json", (), steps=6_000, seeds=8, threshold=150.0, window=10),
    "breakout-minatar": Task("configs/quickstart.json",
                             ("env_config.env_name=Breakout-MinAtar", "no_conv=false", "num_conv_filters=8",
                              "conv_depth=2"),
                             steps=30_000, seeds=4, threshold=2.0, window=50, above_random=True),
    # DreamerV3's small preset, one set of hyper-parameters for every task: only the environment changes
    # (with binary_state, which says whether its observations are 0/1 frames).
    "catch-dreamerv3": Task("configs/dreamerv3_small.json", (), steps=12_000, seeds=4, threshold=0.8, window=50),
    "cartpole-gymnax-dreamerv3": Task("configs/dreamerv3_small.json",
                                      ("env_config.env_name=CartPole-v1", "binary_state=false"),
                                      steps=10_000, seeds=4, threshold=150.0, window=10),
    "cartpole-gymnasium-dreamerv3": Task("configs/dreamerv3_small.json",
                                         ("environment=gymnasium_env", "jax_env=false",
                                          "env_config.env_name=CartPole-v1", "binary_state=false"),
                                         steps=10_000, seeds=4, threshold=150.0, window=10),
    # gymnax Pendulum-v1: continuous actions in [-2, 2]; a return is minus the 200 steps' swing-up costs
    "pendulum-dreamerv3": Task("configs/dreamerv3_small.json",
                               ("env_config.env_name=Pendulum-v1", "binary_state=false"),
                               steps=10_000, seeds=4, threshold=-400.0, window=10),
    "breakout-minatar-dreamerv3": Task("configs/dreamerv3_small.json", ("env_config.env_name=Breakout-MinAtar",),
                                       steps=30_000, seeds=4, threshold=2.0, window=50, above_random=True),
    # brax: a return is the steps the pole stays up, at most 1,000 (the time limit)
    "brax-inverted-pendulum": Task("configs/brax_inverted_pendulum.json", (), steps=12_000, seeds=2,
                                   threshold=100.0, window=10, above_random=True),
    # DreamerV3's small preset with faster learning rates, on Craftax-Classic's symbolic observations (needs
    # requirements-craftax.txt). The random policy's episodes last about 150 steps.
    "craftax-classic-symbolic": Task("configs/craftax_classic_symbolic.json", (), steps=50_000, seeds=2,
                                     threshold=1.0, window=10, above_random=True),
    # Atari through envpool at the Atari 100k settings (needs requirements-atari.txt): Pong, and two games whose
    # return rises early for data-efficient agents. Each also gets the Atari score: its final evaluation,
    # human-normalised (atari_score below).
    "atari-pong": atari_task("Pong", margin=2.0, window=10),
    "atari-boxing": atari_task("Boxing", margin=5.0, window=5),
    "atari-krull": atari_task("Krull", margin=1000.0, window=5),
    # The DeepMind Control Suite through dm_control (needs requirements-dmc.txt), on DreamerV3's CPU-size DMC
    # presets: an episode is 1,000 physics steps, 500 env steps at action repeat 2, and never terminates. The
    # other three are the GPU script's (bench/gpu.sh runs them with --config at the full presets).
    "dmc-cartpole-balance": dmc_task("cartpole-balance", "states", steps=20_000, seeds=4),
    "dmc-cartpole-balance-pixels": dmc_task("cartpole-balance", "pixels", steps=20_000, seeds=2),
    "dmc-walker-walk": dmc_task("walker-walk", "states", steps=20_000, seeds=2),
    "dmc-cheetah-run": dmc_task("cheetah-run", "states", steps=20_000, seeds=2),
    "dmc-cartpole-swingup": dmc_task("cartpole-swingup", "states", steps=20_000, seeds=2),
}
ATARI = "atari_env"  # the environment of the tasks scored against the Atari reference scores

RANDOM_POLICY_ENVS = 64  # environments stepped side by side by the random policy
RANDOM_POLICY_STEPS = 1_000  # env steps of each of them; episodes still running at the end are not counted
RANDOM_POLICY_SEED = 0
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
FEW_SEEDS = 5  # below this many seeds the bootstrap CI is reported with a warning


def threshold_text(task: Task) -> str:
    return f"random + {task.threshold:g}" if task.above_random else f"{task.threshold:g}"


def list_tasks() -> str:
    """One line per task: name, config with its overrides, default steps and seeds, threshold, window."""
    width = max(len(name) for name in TASKS)
    lines = []
    for name, task in TASKS.items():
        config = " ".join([task.config] + [f"--set {override}" for override in task.overrides])
        lines.append(f"{name:<{width}}  {config}  steps {task.steps}, seeds {task.seeds}, "
                     f"threshold {threshold_text(task)} (mean of the last {task.window} episodes)")
    return "\n".join(lines)


def selected_tasks(names: str | None) -> list[str]:
    """The task names of --tasks (comma-separated, in the given order), or every task; ConfigError for an
    unknown one."""
    if names is None:
        return list(TASKS)
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    for name in chosen:
        if name not in TASKS:
            raise ConfigError(f"unknown task '{name}'; the tasks are {', '.join(TASKS)} (see --list)")
    if not chosen:
        raise ConfigError(f"--tasks names no task; the tasks are {', '.join(TASKS)}")
    return list(dict.fromkeys(chosen))


def task_configs(names: Sequence[str], steps: int | None, seeds: int | None, extra: Sequence[str],
                 config_file: str | None = None) -> dict[str, Config]:
    """Each task's config (its own file, or `config_file` for every task) with the task's overrides, the
    command line's steps and seeds, then its --set overrides; a mistake raises ConfigError naming the task.
    Reads no environment: nothing here imports JAX."""
    configs = {}
    for name in names:
        task = TASKS[name]
        overrides = [*task.overrides, f"num_steps={steps or task.steps}", f"num_seeds={seeds or task.seeds}",
                     *extra]
        try:
            configs[name] = load_config(config_file or os.path.join(ROOT, task.config), overrides)
            if configs[name].environment == ATARI:
                check_atari_scoring(configs[name])
        except ConfigError as error:
            raise ConfigError(f"task '{name}': {error}") from None
    return configs


def check_atari_scoring(config: Config) -> None:
    """An Atari task's score is the evaluation that ends its run: ConfigError where the game has no reference
    scores or no evaluation falls on the run's last env step."""
    try:
        reference_scores(config.env_config.env_name)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if not config.eval_every or config.num_steps % config.eval_every:
        raise ConfigError(f"its Atari score is the evaluation at the end of the run, so num_steps "
                          f"({config.num_steps}) must be a multiple of eval_every ({config.eval_every}); add "
                          f"--set eval_every={config.num_steps}")


def checked_environments(configs: dict[str, Config]) -> dict:
    """Each task's environment, checked as the run scripts check it (id, spaces, binary observations) before
    any task runs; a mistake raises ConfigError naming the task."""
    from environments import environment_from_config  # imports JAX
    from initialization import check_observations

    envs = {}
    for name, config in configs.items():
        try:
            envs[name] = environment_from_config(config)
            check_observations(config, envs[name])
        except ConfigError as error:
            raise ConfigError(f"task '{name}': {error}") from None
    return envs


# ---------------------------------------------------------------------------------------------------------
# Statistics over seeds.

def interquartile_mean(values, axis: int = -1):
    """Mean after cutting int(25% of n) values from each end along `axis` (scipy.stats.trim_mean(x, 0.25), as
    plot_metric.py computes it): with fewer than 4 values nothing is cut and it is the mean."""
    return trim_mean(np.asarray(values, dtype=float), 0.25, axis=axis)


def iqm_bootstrap_ci(values, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                     confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the IQM over seeds (plot_metric.bootstrap_ci), None for fewer than two seeds."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return None
    low, high = bootstrap_ci(values, interquartile_mean, resamples, seed, confidence)
    return float(low), float(high)


def seed_statistics(finals: list[float | None], threshold: float) -> dict:
    """Mean, IQM with its bootstrap CI and the fraction of seeds at or above `threshold`, over the seeds'
    final returns (a seed without a completed episode counts as below the threshold, outside the averages)."""
    values = np.array([value for value in finals if value is not None])
    notes = []
    if len(values) < len(finals):
        notes.append(f"{len(finals) - len(values)} seed(s) completed no episode")
    if len(values) == 1:
        notes.append("1 seed: no CI")
    elif 1 < len(values) < FEW_SEEDS:
        notes.append(f"only {len(values)} seeds: the bootstrap CI is rough"
                     + (" and the IQM trims nothing (it is the mean)" if len(values) < 4 else ""))
    successes = int(np.sum(values >= threshold)) if len(values) else 0
    return {"mean": float(np.mean(values)) if len(values) else None,
            "iqm": float(interquartile_mean(values)) if len(values) else None,
            "iqm_ci": list(iqm_bootstrap_ci(values) or []) or None,
            "successes": successes, "success_fraction": successes / len(finals), "notes": notes}


# ---------------------------------------------------------------------------------------------------------
# Atari scores: each seed's final evaluation, human-normalised with the standard random and human scores
# (envs/atari_scores.py), and their mean and median over the Atari tasks, as Atari 100k results are reported.

def final_evaluations(records: Sequence[dict], seeds: Sequence[int]) -> list[dict | None]:
    """Each seed's last evaluation in a run's records (its JSON lines, a record per seed per block):
    {"eval_return", "env_steps"}, the return None where no evaluation episode finished; None for a seed that was
    never evaluated."""
    last = {}
    for record in records:
        if "eval_return" in record:
            last[record["seed"]] = {"eval_return": record["eval_return"], "env_steps": record["env_steps"]}
    return [last.get(seed) for seed in seeds]


def atari_score(game: str, seeds: Sequence[int], evaluations: Sequence[dict | None]) -> dict:
    """One Atari task's score: per seed (in `seeds` order) its final evaluation return and that return
    human-normalised, their mean over the seeds that have one, and a note naming the seeds without one."""
    returns = [evaluation["eval_return"] if evaluation else None for evaluation in evaluations]
    normalized = [None if value is None else human_normalized(game, value) for value in returns]
    scored = [value for value in normalized if value is not None]
    missing = [str(seed) for seed, value in zip(seeds, returns) if value is None]
    random, human = reference_scores(game)
    return {"game": game, "random_score": random, "human_score": human, "eval_returns": returns,
            "eval_env_steps": [evaluation["env_steps"] if evaluation else None for evaluation in evaluations],
            "human_normalized": normalized, "mean_human_normalized": float(np.mean(scored)) if scored else None,
            "notes": [f"seed(s) {', '.join(missing)} have no final evaluation return (no evaluation episode "
                      "finished within eval_max_steps)"] if missing else []}


def atari_summary(results: Sequence[dict]) -> dict | None:
    """Over the Atari tasks of a run (the results with an `atari` score, atari_score): the mean and the median of
    each task's mean human-normalised score over its seeds, as Atari 100k aggregates over games; None where no
    Atari task ran. A task none of whose seeds has a score is listed in `unscored` and left out."""
    atari = {r["task"]: r["atari"] for r in results if r.get("atari")}
    if not atari:
        return None
    per_task = {task: score["mean_human_normalized"] for task, score in atari.items()}
    values = [value for value in per_task.values() if value is not None]
    return {"tasks": len(per_task), "games": {task: score["game"] for task, score in atari.items()},
            "per_task_human_normalized": per_task,
            "mean_human_normalized": float(np.mean(values)) if values else None,
            "median_human_normalized": float(np.median(values)) if values else None,
            "unscored": [task for task, value in per_task.items() if value is None]}


# ---------------------------------------------------------------------------------------------------------
# The random policy: the same step function under lax.scan (JAX environments, jitted) or a Python loop
# (gymnasium/gym objects), as the training loop's two drivers.

def random_policy_return(env, num_envs: int = RANDOM_POLICY_ENVS, steps: int = RANDOM_POLICY_STEPS,
                         seed: int = RANDOM_POLICY_SEED) -> dict:
    """Mean return of the episodes a uniformly random policy completes in `steps` env steps of `num_envs`
    environments (episodes still running at the end are not counted), with its standard error."""
    import jax
    import jax.numpy as jnp

    from agent_environment_interaction_loop import python_scan
    from environments import seed_environments
    is_python = getattr(env, "is_python", False)
    envs = seed_environments(env, range(num_envs), jax_env=not is_python)
    num_actions = env.spec.num_actions

    def step(carry, key):
        env_state, running, total, total_sq, count = carry
        action_key, env_key = jax.random.split(key)
        if env.spec.continuous:  # uniform in [-1, 1]^A, which the env maps to its bounds
            actions = jax.random.uniform(action_key, (num_envs, num_actions), minval=-1.0, maxval=1.0)
        else:
            actions = jax.random.randint(action_key, (num_envs,), 0, num_actions)
        env_state, _, reward, terminated, truncated = envs.step(jax.random.split(env_key, num_envs), env_state,
                                                                actions)
        running = running + reward  # [E]
        done = jnp.asarray(terminated | truncated)  # [E]
        ended = jnp.where(done, running, 0.0)
        carry = (env_state, jnp.where(done, 0.0, running), total + ended.sum(), total_sq + (ended ** 2).sum(),
                 count + done.sum())
        return carry, None

    def rollout(key):
        reset_key, key = jax.random.split(key)
        env_state, _ = envs.reset(jax.random.split(reset_key, num_envs))
        zero = jnp.zeros((), jnp.float32)
        init = (env_state, jnp.zeros(num_envs, jnp.float32), zero, zero, jnp.zeros((), jnp.int32))
        scan = python_scan if is_python else jax.lax.scan
        return scan(step, init, jax.random.split(key, steps))[0][2:]

    total, total_sq, count = (rollout if is_python else jax.jit(rollout))(jax.random.PRNGKey(seed))
    envs.close()
    total, total_sq, count = float(total), float(total_sq), int(count)
    if count == 0:
        return {"return": None, "standard_error": None, "episodes": 0, "env_steps": num_envs * steps}
    mean = total / count
    variance = max(total_sq / count - mean ** 2, 0.0) * count / max(count - 1, 1)
    return {"return": mean, "standard_error": float(np.sqrt(variance / count)), "episodes": count,
            "env_steps": num_envs * steps}


# ---------------------------------------------------------------------------------------------------------
# Running the suite.

def run_task(name: str, task: Task, config: Config, env, random_policy: dict, out_dir: str, progress: bool,
             diagnostics: bool, video: bool = False) -> dict:
    """Trains the task's seeds (records to OUT/<name>.jsonl) and summarises them against the random policy, with
    the speed and memory of the run and, for an Atari task, its score (atari_score)."""
    import jax

    from agent_environment_interaction_loop import device_memory_stats
    from experiment.runner import run

    output = os.path.join(out_dir, f"{name}.jsonl")
    print(f"{name}: {config.num_seeds} seeds of {config.env_config.env_name}, {config.num_steps} env steps each, "
          f"records -> {output}", file=sys.stderr)
    start = time.perf_counter()
    video_dir = os.path.join(out_dir, f"{name}-videos") if video else None  # episodes and dream strips
    result = run(config, env, seed=0, output=output, progress=progress, diagnostics=diagnostics,
                 video_dir=video_dir)
    wall_s = time.perf_counter() - start
    returns = result["returns"]  # per seed: every completed episode's return, in order
    finals = [float(np.mean(seed_returns[-task.window:])) if seed_returns else None for seed_returns in returns]
    threshold = task.threshold + (random_policy["return"] or 0.0) if task.above_random else task.threshold
    statistics = seed_statistics(finals, threshold)
    short = [i for i, seed_returns in enumerate(returns) if 0 < len(seed_returns) < task.window]
    if short:
        statistics["notes"].append(f"seed(s) {', '.join(map(str, short))} completed fewer than {task.window} "
                                   "episodes: their final return averages all they completed")
    atari = None
    if config.environment == ATARI:
        with open(output, encoding="utf-8") as file:
            records = [json.loads(line) for line in file]
        seeds = result["runs"].seeds
        atari = atari_score(config.env_config.env_name, seeds, final_evaluations(records, seeds))
        statistics["notes"].extend(atari.pop("notes"))
    state, runs = result["state"], len(returns)
    device_peak = device_memory_stats().get("peak_bytes_in_use")  # None on CPU
    return {
        "task": name, "config": task.config, "overrides": list(task.overrides),
        "env": config.env_config.env_name, "environment": config.environment, "jax_env": config.jax_env,
        "seeds": config.num_seeds, "random_policy": random_policy,
        "threshold": threshold, "threshold_rule": threshold_text(task), "above_random": task.above_random,
        "window": task.window, "final_returns": finals, "episodes": [len(seed_returns) for seed_returns in returns],
        **statistics,
        "env_steps_per_seed": int(state.env_steps[0]), "env_steps": int(np.sum(state.env_steps)),
        "updates_per_seed": int(state.updates[0]),
        "wall_s": wall_s, "compile_s": result["compile_s"], "run_s": result["run_s"],
        "env_steps_per_s": int(np.sum(state.env_steps)) / max(result["run_s"], 1e-9),  # all seeds, evaluation in
        "state_bytes_per_seed": sum(leaf.nbytes for leaf in jax.tree.leaves(state)) // runs,
        "replay_bytes_per_seed": sum(leaf.nbytes for leaf in jax.tree.leaves(state.replay)) // runs,
        "device_peak_bytes": device_peak, "device_peak_bytes_per_seed": device_peak // runs if device_peak else None,
        "atari": atari, "output": output,
    }


def _number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def markdown_table(results: Sequence[dict]) -> str:
    """The results as a Markdown table, one row per task."""
    lines = ["| task | env | random | final return per seed | mean | IQM [95% CI] | ≥ threshold | env steps | wall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        ci = r["iqm_ci"]
        iqm = _number(r["iqm"]) + (f" [{_number(ci[0])}, {_number(ci[1])}]" if ci else "")
        finals = " ".join(_number(value) for value in r["final_returns"])
        threshold = (f"{r['successes']}/{r['seeds']} ≥ {_number(r['threshold'])}"
                     + (f" ({r['threshold_rule']})" if r["above_random"] else ""))
        lines.append(f"| {r['task']} | {r['env']}{'' if r['jax_env'] else ' (Python)'} "
                     f"| {_number(r['random_policy']['return'])} | {finals} (last {r['window']} ep.) "
                     f"| {_number(r['mean'])} | {iqm} | {threshold} | {r['seeds']} × {r['env_steps_per_seed']:,} "
                     f"| {r['wall_s']:.0f} s |")
    notes = [f"{r['task']}: {note}" for r in results for note in r["notes"]]
    return "\n".join(lines + ([""] + [f"- {note}" for note in notes] if notes else []) + atari_table(results))


def _megabytes(value) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f} MB"


def atari_table(results: Sequence[dict]) -> list[str]:
    """The Atari tasks' scores as Markdown lines (none where no Atari task ran): a row per task with each seed's
    final evaluation return and human-normalised score, then their mean and median over the tasks."""
    summary = atari_summary(results)
    if summary is None:
        return []
    lines = ["", "| task | game: random, human | final evaluation return per seed | human-normalised per seed "
             "| mean | env steps/s | device peak per seed |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if not r.get("atari"):
            continue
        a = r["atari"]
        lines.append(f"| {r['task']} | {a['game']}: {a['random_score']:g}, {a['human_score']:g} "
                     f"| {' '.join(_number(value) for value in a['eval_returns'])} "
                     f"| {' '.join(_number(value) for value in a['human_normalized'])} "
                     f"| {_number(a['mean_human_normalized'])} | {r['env_steps_per_s']:.3g} "
                     f"| {_megabytes(r['device_peak_bytes_per_seed'])} |")
    unscored = f"; no score: {', '.join(summary['unscored'])}" if summary["unscored"] else ""
    lines += ["", f"Atari, {summary['tasks']} task(s): human-normalised score mean "
              f"{_number(summary['mean_human_normalized'])}, median {_number(summary['median_human_normalized'])} "
              f"(of each task's mean over its seeds){unscored}"]
    return lines


def _shown_path(path: str) -> str:
    """`path` relative to the current folder when it lies below it, else absolute."""
    relative = os.path.relpath(path)
    return os.path.abspath(path) if relative.startswith(os.pardir) else relative


def plot_commands(results: Sequence[dict], out_dir: str) -> list[str]:
    """One plot_metric.py command per task (their return scales differ too much to share an axis), with paths
    as seen from the current folder."""
    script = _shown_path(os.path.join(ROOT, "outputs", "plot_metric.py"))
    commands = []
    for r in results:
        title = (f"{r['task']}: episode return (random policy {_number(r['random_policy']['return'])}, "
                 f"threshold {_number(r['threshold'])})")
        commands.append(shlex.join(["python3", script, _shown_path(r["output"]), "--metric", "episode_return",
                                    "-o", _shown_path(os.path.join(out_dir, f"{r['task']}.png")), "--title", title]))
    return commands


def write_report(results: Sequence[dict], overrides: Sequence[str], out_dir: str,
                 machine: dict) -> tuple[dict, str]:
    """Writes the finished tasks' report to OUT/results.json and its Markdown table to OUT/results.md; returns
    (report, table)."""
    report = {"tasks": list(results), "overrides": list(overrides), "out_dir": out_dir,
              "random_policy": {"envs": RANDOM_POLICY_ENVS, "steps_per_env": RANDOM_POLICY_STEPS,
                                "seed": RANDOM_POLICY_SEED},
              "bootstrap": {"statistic": "iqm", "resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED,
                            "confidence": CONFIDENCE},
              "atari": atari_summary(results), "plot_commands": plot_commands(results, out_dir), "machine": machine}
    table = markdown_table(results)
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as file:
        json.dump(report, file, indent=2)
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as file:
        file.write(table + "\n")
    return report, table


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the tasks and exit")
    parser.add_argument("--tasks", default=None, metavar="A,B", help="comma-separated tasks to run (default: all)")
    parser.add_argument("--seeds", type=int, default=None, metavar="N", help="seeds per task (default: the task's)")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="env steps per seed (default: the task's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of every task run (repeatable)")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="run every selected task from this config file instead of its own, with the task's "
                             "overrides, steps and seeds (e.g. an Atari task at the full Atari 100k preset)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for each task's records (<task>.jsonl, overwritten) and results.json / "
                             "results.md (default bench/runs/learning/<timestamp>)")
    parser.add_argument("--no_diagnostics", action="store_true",
                        help="leave the model diagnostics (diag_*) out of the records")
    parser.add_argument("--no_progress", action="store_true", help="do not draw the progress bars")
    parser.add_argument("--video", action="store_true",
                        help="write each task's videos (an episode and the dream strip: real | reconstruction | open "
                             "loop) every video_every env steps and at the end, under OUT/<task>-videos")
    return parser


def main(argv=None):
    args = build_arg_parser().parse_args(argv)
    if args.list:
        print(list_tasks())
        return
    for flag, value in (("--seeds", args.seeds), ("--steps", args.steps)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    configs = task_configs(selected_tasks(args.tasks), args.steps, args.seeds, args.set, args.config)
    tasks = {name: dataclasses.replace(TASKS[name], config=args.config) if args.config else TASKS[name]
             for name in configs}
    out_dir = args.out or os.path.join(ROOT, "bench", "runs", "learning", time.strftime("%Y%m%d-%H%M%S"))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out {out_dir!r} is a file; it must name a folder")

    cli.use_compilation_cache()  # before JAX is imported, as the run scripts
    from bench_loop import machine_info  # noqa: E402  (imports JAX; this folder is on sys.path)

    envs = checked_environments(configs)
    from experiment.runner import NUMERICAL_FAULT_EXIT_CODE, NumericalFault
    os.makedirs(out_dir, exist_ok=True)
    randoms, results = {}, []
    for name, config in configs.items():
        env = envs[name]
        env_id = (config.environment, config.env_config.env_name, json.dumps(config.env_config.make_kwargs))
        if env_id not in randoms:  # tasks on the same environment share its measurement
            # DMC from pixels: measured from states, the same episodes without rendering 64,000 frames
            randoms[env_id] = random_policy_return(getattr(env, "without_rendering", lambda: env)())
        try:
            results.append(run_task(name, tasks[name], config, env, randoms[env_id], out_dir,
                                    progress=not args.no_progress, diagnostics=not args.no_diagnostics,
                                    video=args.video))
        except NumericalFault as fault:  # the tasks finished before it stay in OUT/results.json
            print(f"error: task {name!r}: {fault}", file=sys.stderr)
            return NUMERICAL_FAULT_EXIT_CODE
        # rewritten after every task, so that a suite stopped part-way keeps the tasks it finished
        report, table = write_report(results, args.set, out_dir, machine_info())
    print(json.dumps(report, indent=2))
    print("\n" + table + "\n\nlearning curves:\n" + "\n".join(report["plot_commands"]), file=sys.stderr)


if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages()  # before jax is imported; DREAMER_NO_HUGE_PAGES=1 to run without
    sys.exit(cli.exit_code_of(main))
