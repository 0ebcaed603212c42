"""Times the training update of two checkouts of this project in one process, alternately, and prints one JSON
object: each checkout's best and median time over the rounds, their ratios and the loss each computed.

    python3 bench/bench_ab.py --baseline /path/to/other/checkout -c config.json --rounds 10
    python3 bench/bench_ab.py -c config.json   # this checkout against itself: the noise floor

On a shared 2-core machine the same update measured in fresh processes minutes apart varies by 5-35%, more than
most changes gain. Here both programs are compiled first (the baseline's from its own modules, then this
checkout's), and each round times one call of each, the order swapped every round, so both run under the same
conditions. The config file and `--set` overrides are read by each checkout's own config module, so they must be
valid for both. Progress goes to stderr.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

from experiment import cli  # noqa: E402
from experiment.config import ConfigError  # noqa: E402  (this checkout's: what cli.exit_code_of answers)
from runtime import huge_pages  # noqa: E402

if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages()  # before jax is imported; DREAMER_NO_HUGE_PAGES=1 to measure without

import jax  # noqa: E402


# The project's modules, imported afresh from each checkout (its bench_update for `filled_replay`).
def drop_project_modules(checkouts) -> None:
    """Forgets every imported module whose file lies in one of `checkouts`, so the next import of a project
    module reads the checkout now first on sys.path (the two checkouts' modules share their names)."""
    roots = tuple(os.path.join(os.path.abspath(checkout), "") for checkout in checkouts)
    for name, module in list(sys.modules.items()):
        if os.path.abspath(getattr(module, "__file__", None) or "").startswith(roots):
            sys.modules.pop(name, None)


def describe(checkout: str) -> str | None:
    """`git describe --always --dirty` of a checkout, or None outside git."""
    try:
        done = subprocess.run(["git", "-C", checkout, "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def compiled_update(checkout: str, config_path: str, overrides: list[str]):
    """(compiled train_update, a state with a filled replay) built from `checkout`'s own modules."""
    drop_project_modules((HERE, checkout))
    saved_path = list(sys.path)
    sys.path[:0] = [checkout, os.path.join(checkout, "bench")]
    try:
        from bench_update import filled_replay

        from agent_environment_interaction_loop import compiler_options
        from environments import environment_from_config
        from experiment.config import load_config
        from initialization import make_agent
        try:
            c = load_config(config_path, overrides)
            env = environment_from_config(c)
        except Exception as error:  # the checkout's own ConfigError class: answered as this checkout's
            if type(error).__name__ == "ConfigError":
                raise ConfigError(f"{error} (read by the checkout at {checkout})") from None
            raise
        agent = make_agent(c, env)
        env_state, obs = jax.jit(env.reset)(jax.random.PRNGKey(1))  # the same state as bench_update.py's
        state = jax.jit(agent.init_state)(jax.random.PRNGKey(0), env_state, obs)
        fill = jax.jit(lambda buffer, key: filled_replay(c, agent, env.spec, buffer, key))
        state = state._replace(replay=fill(state.replay, jax.random.PRNGKey(1)))
        update = jax.jit(agent.train_update, compiler_options=compiler_options()).lower(state).compile()
        return update, state
    finally:
        sys.path[:] = saved_path
        drop_project_modules((HERE, checkout))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="config.json")
    parser.add_argument("--baseline", default=HERE, help="the other checkout's root (default: this checkout)")
    parser.add_argument("--rounds", type=int, default=10, help="calls of each update timed (default 10)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be a positive integer, got {args.rounds}")
    baseline = os.path.abspath(args.baseline)
    if not os.path.isfile(os.path.join(baseline, "initialization.py")):
        parser.error(f"--baseline must be the root of a checkout of this project (with initialization.py), "
                     f"got {args.baseline}")
    config_path = os.path.abspath(args.config)
    from bench_loop import machine_info  # this checkout's, before the checkouts' modules come and go

    from environments import environment_from_config
    from experiment.config import load_config
    environment_from_config(load_config(config_path, args.set))  # a mistake is answered before anything runs

    machine = machine_info()
    checkouts = {"baseline": baseline, "candidate": HERE}
    programs, losses = {}, {}
    for role, checkout in checkouts.items():
        print(f"compiling the update of {role} {checkout}", file=sys.stderr)
        start = time.perf_counter()
        programs[role] = compiled_update(checkout, config_path, args.set)
        update, state = programs[role]
        losses[role] = float(jax.block_until_ready(update(state))[1]["model_loss"])  # also the warm-up call
        print(f"  {time.perf_counter() - start:.1f} s", file=sys.stderr)
    times = {role: [] for role in checkouts}
    for round_ in range(args.rounds):
        order = list(checkouts) if round_ % 2 == 0 else list(checkouts)[::-1]
        for role in order:
            update, state = programs[role]
            start = time.perf_counter()
            jax.block_until_ready(update(state))
            times[role].append(time.perf_counter() - start)
        print(f"round {round_ + 1}: " + ", ".join(f"{role} {times[role][-1]:.3f} s" for role in checkouts),
              file=sys.stderr)
    report = {"config": args.config, "overrides": args.set, "rounds": args.rounds}
    for role, checkout in checkouts.items():
        report[role] = {"checkout": checkout, "commit": describe(checkout), "best_s": min(times[role]),
                        "median_s": statistics.median(times[role]), "times_s": times[role],
                        "model_loss": losses[role]}
    report["best_ratio"] = report["candidate"]["best_s"] / report["baseline"]["best_s"]
    report["median_ratio"] = report["candidate"]["median_s"] / report["baseline"]["median_s"]
    report["machine"] = machine
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(cli.exit_code_of(main))
