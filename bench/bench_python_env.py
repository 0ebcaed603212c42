"""Times the Python path (an environment stepped in Python between the agent's jitted pieces) against the
jitted path (the whole block compiled) on the same config and one seed, and prints one JSON object.

By default: MinAtar SpaceInvaders through the `minatar` package's gymnasium id (Python) vs gymnax
SpaceInvaders-MinAtar (jitted), both with the config's network and training settings.

    python3 bench/bench_python_env.py -c config.json --steps 100
"""

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiment import cli  # noqa: E402
from runtime import huge_pages  # noqa: E402

if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages()  # before jax is imported; DREAMER_NO_HUGE_PAGES=1 to measure without

import jax.numpy as jnp  # noqa: E402
from bench_loop import machine_info, time_block  # noqa: E402  (this folder is on sys.path when run as a script)

from agent_environment_interaction_loop import JAX_DRIVERS, PYTHON_DRIVERS, jit_block, make_block_function  # noqa: E402
from environments import environment_from_config, seed_environments  # noqa: E402
from experiment.config import load_config  # noqa: E402
from experiment.runner import initial_state  # noqa: E402
from initialization import make_agent  # noqa: E402


def bench_path(config, steps: int, repeats: int) -> dict:
    """Acting-only and with-training seconds per env step of one seed on config's environment and path."""
    config = dataclasses.replace(config, num_seeds=1, eval_frequency=steps,
                                 training_start_time=max(config.training_start_time, (repeats + 2) * steps))
    env = environment_from_config(config)
    agent = make_agent(config, env)
    envs = seed_environments(env, [0], config.jax_env)
    state = initial_state(config, agent, envs, seed=0)
    start = time.perf_counter()
    if config.jax_env:
        block = jit_block(make_block_function(config, agent, envs, steps, JAX_DRIVERS)).lower(state).compile()
    else:
        block = make_block_function(config, agent, envs, steps, PYTHON_DRIVERS)
    state, _ = block(state)  # warm-up; for the Python path this compiles the acting pieces
    warmup_s = time.perf_counter() - start
    state, acting_s = time_block(block, state, repeats)
    assert int(state.updates[0]) == 0, "acting-only blocks must not train"
    # Jump the shared step counter past training_start_time: the replay already holds enough sequences.
    state = state._replace(env_steps=jnp.full_like(state.env_steps, config.training_start_time))
    state, _ = block(state)  # warm-up: compiles the training update on the Python path
    state, training_s = time_block(block, state, repeats)
    assert int(state.updates[0]) > 0
    envs.close()
    return {"environment": config.environment, "env": config.env_config.env_name, "jax_env": config.jax_env,
            "acting_s_per_step": acting_s / steps, "training_s_per_step": training_s / steps,
            "first_block_s": warmup_s}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="config.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for both paths (repeatable)")
    parser.add_argument("--jax_env_name", default="SpaceInvaders-MinAtar", help="gymnax id of the jitted path")
    parser.add_argument("--python_env_name", default="MinAtar/SpaceInvaders-v1",
                        help="gymnasium id of the Python path")
    parser.add_argument("--steps", type=int, default=100, help="env steps per timed block")
    parser.add_argument("--repeats", type=int, default=2, help="timed blocks per phase (best is kept)")
    args = parser.parse_args(argv)
    jitted = load_config(args.config, args.set + ["environment=gymnax_env", "jax_env=true",
                                                  f"env_config.env_name={args.jax_env_name}"])
    python = load_config(args.config, args.set + ["environment=gymnasium_env", "jax_env=false",
                                                  f"env_config.env_name={args.python_env_name}"])
    results = {}
    for name, config in (("jitted", jitted), ("python", python)):
        print(f"timing the {name} path on {config.env_config.env_name}", file=sys.stderr)
        results[name] = bench_path(config, args.steps, args.repeats)
    print(json.dumps({
        "config": args.config, "overrides": args.set, "steps_per_block": args.steps,
        "train_frequency": jitted.train_frequency, **results,
        "python_over_jitted_acting": results["python"]["acting_s_per_step"] / results["jitted"]["acting_s_per_step"],
        "python_over_jitted_training": (results["python"]["training_s_per_step"]
                                        / results["jitted"]["training_s_per_step"]),
        "machine": machine_info(),
    }, indent=2))


if __name__ == "__main__":
    sys.exit(cli.exit_code_of(main))
