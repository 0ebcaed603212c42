"""Runs `num_seeds` seeds of one DreamerV2 experiment in a single jitted, vmapped program.

Usage: python3 dreamer_multiseed.py -c config.json [-s SEED] [-o OUTPUT] [--set KEY=VALUE ...]"""

import sys

from experiment import cli
from runtime import huge_pages

if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages()  # before jax is imported


def main(argv=None) -> int:
    return cli.script_main(argv, description=__doc__.splitlines()[0], single_seed=False)


if __name__ == "__main__":
    sys.exit(main())
