"""Runs one seed of a DreamerV2 experiment: the multi-seed path with num_seeds forced to 1.

Usage: python3 dreamer_single_seed.py -c config.json [-s SEED] [-o OUTPUT] [--set KEY=VALUE ...]"""

import sys

from experiment import cli
from runtime import huge_pages

if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages()  # before jax is imported


def main(argv=None) -> int:
    return cli.script_main(argv, description=__doc__.splitlines()[0], single_seed=True)


if __name__ == "__main__":
    sys.exit(main())
