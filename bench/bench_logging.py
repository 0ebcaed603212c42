"""Times the per-block logging path against the block it follows and prints one JSON object.

After each training block: host-side records (`block_records`), model diagnostics (the jitted, vmapped
`agent.diagnose` plus fetching and merging its scalars), writing the JSON lines, and wandb logging (offline,
into a temporary folder). Overheads are given as % of the block's time, as measured with `--steps` env steps
per block and extrapolated to the config's `eval_frequency` (logging costs the same per block, the block
grows with its steps).

With `--observe`, also what a block that evaluates and writes videos adds (evaluation.RunObserver): the
evaluation episodes (`eval_episodes` per seed, `eval_policy`), one recorded episode per seed with the model's
dream of it drawn to GIF and PNG files, and TensorBoard event files of the records and those files. They run
only after the blocks that cross a multiple of `eval_every` / `video_every`, so their share of the run is the
per-block figure times eval_frequency / eval_every (given for the config's or `--set` values).

    python3 bench/bench_logging.py -c configs/quickstart.json
    python3 bench/bench_logging.py -c config.json --seeds 1 --steps 50
    python3 bench/bench_logging.py -c configs/quickstart.json --observe --set eval_every=10000
"""

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiment import cli  # noqa: E402
from runtime import huge_pages  # noqa: E402

if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages()  # before jax is imported; DREAMER_NO_HUGE_PAGES=1 to measure without

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_loop import loop_block, machine_info  # noqa: E402  (this folder)

from agent.evaluation import DREAM_CONTEXT, RunObserver  # noqa: E402
from environments import environment_from_config  # noqa: E402
from experiment.config import config_to_dict, load_config  # noqa: E402
from experiment.runner import block_records, diagnostic_keys, jit_diagnose, runs_of  # noqa: E402
from outputs.sinks import Block  # noqa: E402
from outputs.tensorboard_events import TensorBoardSink  # noqa: E402
from outputs.videos import VideoFiles  # noqa: E402
from outputs.wandb_runs import Tracker  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="configs/quickstart.json")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the config's)")
    parser.add_argument("--steps", type=int, default=None, help="env steps per timed block (default eval_frequency)")
    parser.add_argument("--blocks", type=int, default=3, help="timed training blocks (medians are reported)")
    parser.add_argument("--wandb", default="offline", choices=("offline", "disabled"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--observe", action="store_true",
                        help="also time evaluation episodes, videos and TensorBoard files after each block")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    eval_frequency = config.eval_frequency
    steps = args.steps or eval_frequency
    num_seeds = args.seeds or config.num_seeds
    # The first block only acts (fills replay); then the shared step counter jumps past training_start_time.
    built = loop_block(config, environment_from_config(config), num_seeds, steps,
                       max(2 * steps, config.sequence_length))
    config, agent, state, block, block_compile_s = built.config, built.agent, built.state, built.block, built.compile_s
    keys = diagnostic_keys(range(num_seeds))
    start = time.perf_counter()
    diagnose = jit_diagnose(agent).lower(state.params, state.hparams, state.replay, keys).compile()
    diagnose_compile_s = time.perf_counter() - start

    state, _ = block(state)
    state = state._replace(env_steps=jnp.full_like(state.env_steps, config.training_start_time))
    folder = tempfile.mkdtemp(prefix="bench_logging_")
    tracker = Tracker(config_to_dict(config), list(range(num_seeds)), "bench", mode=args.wandb, directory=folder)
    out = io.BytesIO()
    times = {name: [] for name in ("block", "records", "diagnostics", "write", "wandb")}
    observed = ("evaluation", "tensorboard", "video") if args.observe else ()
    times.update({name: [] for name in observed})
    if args.observe:
        env = environment_from_config(config)
        observer = RunObserver(config, env, agent, runs_of(config, 0), os.path.join(folder, "videos"))
        tensorboard = TensorBoardSink(os.path.join(folder, "tensorboard"), runs_of(config, 0).seeds)
        videos = VideoFiles(os.path.join(folder, "videos"), runs_of(config, 0).seeds, runs_of(config, 0).variants,
                            env.spec, config.binary_state, DREAM_CONTEXT)
        start = time.perf_counter()  # compiled at first use, as in a run
        observer.evaluate(state, 0)
        observer.record(state, 0)
        observe_compile_s = time.perf_counter() - start
    for _ in range(args.blocks):
        start = time.perf_counter()
        state, metrics = block(state)
        jax.block_until_ready(state)
        times["block"].append(time.perf_counter() - start)
        assert int(state.updates[0]) > 0
        start = time.perf_counter()
        records, _ = block_records(metrics, state, 0, times["block"][-1], steps)
        times["records"].append(time.perf_counter() - start)
        start = time.perf_counter()
        diag = jax.device_get(diagnose(state.params, state.hparams, state.replay, keys))
        for i, record in enumerate(records):
            record.update({f"diag_{name}": float(value[i]) if np.isfinite(value[i]) else None
                           for name, value in diag.items()})
        times["diagnostics"].append(time.perf_counter() - start)
        start = time.perf_counter()
        out.writelines((json.dumps(r) + "\n").encode() for r in records)
        out.flush()
        times["write"].append(time.perf_counter() - start)
        start = time.perf_counter()
        tracker.log_block(records)
        times["wandb"].append(time.perf_counter() - start)
        if args.observe:
            steps_now = int(state.env_steps[0])
            start = time.perf_counter()
            episodes = observer.evaluate(state, steps_now)
            times["evaluation"].append(time.perf_counter() - start)
            start = time.perf_counter()
            tensorboard.write(Block(steps_now, records, [[] for _ in records], None, [{} for _ in records]))
            times["tensorboard"].append(time.perf_counter() - start)
            start = time.perf_counter()
            block = Block(steps_now, records, [[] for _ in records], observer.recordings(state, steps_now),
                          [{} for _ in records])
            videos.write(block)
            tensorboard.write(block._replace(records=[]))
            times["video"].append(time.perf_counter() - start)
    tracker.finish()

    median = {name: statistics.median(values) for name, values in times.items()}
    logging_s = sum(v for name, v in median.items() if name not in ("block", *observed))
    block_at_eval = median["block"] / steps * eval_frequency

    def pct(seconds, block_s):
        return round(100 * seconds / block_s, 3)

    print(json.dumps({
        "config": args.config, "overrides": args.set, "env": config.env_config.env_name, "seeds": num_seeds,
        "steps_per_timed_block": steps, "eval_frequency": eval_frequency, "wandb": args.wandb,
        "median_s": median, "all_s": times,
        "overhead_pct_of_timed_block": {"diagnostics": pct(median["diagnostics"], median["block"]),
                                        "logging_total": pct(logging_s, median["block"])},
        "overhead_pct_of_eval_frequency_block": {"diagnostics": pct(median["diagnostics"], block_at_eval),
                                                 "logging_total": pct(logging_s, block_at_eval)},
        **({"observe": {
            "eval_episodes": config.eval_episodes, "eval_policy": config.eval_policy,
            "eval_max_steps": config.eval_max_steps, "video_max_frames": config.video_max_frames,
            "eval_episode_lengths": [int(x) for x in np.asarray(episodes.lengths).ravel()],
            "compile_s": observe_compile_s,
            "pct_of_timed_block": {name: pct(median[name], median["block"]) for name in observed},
            "pct_of_eval_frequency_block": {name: pct(median[name], block_at_eval) for name in observed},
            # TensorBoard scalars after every block; evaluation and videos (with their TensorBoard images)
            # amortised over the blocks between two of them
            "pct_of_run": {
                "tensorboard_scalars": pct(median["tensorboard"], block_at_eval),
                "evaluation": (round(pct(median["evaluation"], block_at_eval) * eval_frequency / config.eval_every, 3)
                               if config.eval_every else None),
                "video": round(pct(median["video"], block_at_eval) * eval_frequency / config.video_every, 3)},
        }} if args.observe else {}),
        "block_compile_s": block_compile_s, "diagnose_compile_s": diagnose_compile_s,
        "diag_keys": sorted(diag),
        "machine": machine_info(),
    }, indent=2))


if __name__ == "__main__":
    sys.exit(cli.exit_code_of(main))
