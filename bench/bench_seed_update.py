"""Times the training update of all seeds as the loop runs it (batches of `update_seed_batch` seeds one after
another, or all vmapped) and prints one JSON object: compile seconds, seconds per call and per seed, peak RSS.

    python3 bench/bench_seed_update.py -c config.json --seeds 8
    python3 bench/bench_seed_update.py -c config.json --seeds 8 --form in_place   # the accelerators' loop

--form picks how batches follow one another (agent_environment_interaction_loop.seed_batched_update): a scan
from the old state to a new one (the CPU default) or a loop writing each batch back in place (the accelerators'
default). The replay holds random-looking frames, enough to sample full batches.
"""

import argparse
import dataclasses
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiment import cli  # noqa: E402
from runtime import huge_pages  # noqa: E402

if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages()  # before jax is imported; DREAMER_NO_HUGE_PAGES=1 to measure without

import jax  # noqa: E402
from bench_loop import machine_info  # noqa: E402  (this folder is on sys.path when run as a script)
from bench_update import filled_replay  # noqa: E402

from agent_environment_interaction_loop import (  # noqa: E402
    compiler_options,
    seed_batched_update,
    update_seed_batch,
    update_seed_bytes,
)
from environments import environment_from_config, seed_environments  # noqa: E402
from experiment.config import load_config  # noqa: E402
from experiment.runner import initial_state  # noqa: E402
from initialization import make_agent  # noqa: E402

FORMS = {"default": None, "scan": False, "in_place": True}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="config.json")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--form", choices=sorted(FORMS), default="default",
                        help="how seed batches follow one another (default: the backend's)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after a warm-up (best is kept)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be a positive integer, got {args.seeds}")
    c = dataclasses.replace(load_config(args.config, args.set), num_seeds=args.seeds)
    env = environment_from_config(c)
    agent = make_agent(c, env)
    state = initial_state(c, agent, seed_environments(env, range(args.seeds), jax_env=True), seed=0)

    fill = jax.jit(jax.vmap(lambda buffer, key: filled_replay(c, agent, env.spec, buffer, key)))
    state = state._replace(replay=fill(state.replay, jax.random.split(jax.random.PRNGKey(1), args.seeds)))
    update = jax.jit(seed_batched_update(agent, c.update_seed_batch, update_seed_bytes(c), FORMS[args.form]),
                     donate_argnums=0, compiler_options=compiler_options())
    start = time.perf_counter()
    compiled = update.lower(state).compile()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats + 1):  # the first call is a warm-up
        start = time.perf_counter()
        state, metrics = compiled(state)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    best = min(times[1:]) if args.repeats else times[0]
    print(json.dumps({
        "config": args.config, "overrides": args.set, "seeds": args.seeds, "form": args.form,
        "update_seed_batch": update_seed_batch(c.update_seed_batch, args.seeds, seed_bytes=update_seed_bytes(c)),
        "updates": [int(u) for u in state.updates],  # each seed's, after the calls: one a call
        "compile_s": compile_s, "call_s": times, "update_s": best, "update_s_per_seed": best / args.seeds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine": machine_info(),
    }, indent=2))


if __name__ == "__main__":
    sys.exit(cli.exit_code_of(main))
