"""Runs `num_seeds` seeds of one DreamerV2 experiment in a single jitted, vmapped program.

Usage: python3 dreamer_multiseed.py -c config.json [-s SEED] [-o OUTPUT] [--set KEY=VALUE ...]"""

import sys

import cli
import huge_pages

if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages()  # before jax is imported


def main(argv=None) -> int:
    description = __doc__.splitlines()[0]
    # A mistake in the command line or config is reported before JAX is imported (seconds): cli.py.
    error = cli.config_error_exit_code(argv, description, single_seed=False)
    if error is not None:
        return error
    cli.use_compilation_cache()  # before jax is imported
    import experiment

    return experiment.main(argv, description=description, single_seed=False)


if __name__ == "__main__":
    sys.exit(main())
