"""The entry scripts' command line, the config check they run before importing JAX, and the folder of JAX's
persistent compilation cache they use.

Importing JAX, haiku and gymnax takes several seconds; a mistake in the command line or the config file
(unknown key, wrong type, value out of range) is reported before that, in a fraction of a second. Mistakes
that need the environment's registry (an unknown env id) are reported by `experiment.main` after it.

Compiling the block takes 15-25 s on two CPU cores for the reference config. A resumed run, or another run
with the same config and seed count, compiles the very same programs, so the scripts keep them in JAX's
persistent compilation cache: by default `$XDG_CACHE_HOME/dreamer-jax/xla` (`~/.cache/dreamer-jax/xla`).
A loaded program is the compiled one, so the numbers do not change. JAX runs what it loads from there, so the
folder is created readable by its owner only, and a folder that others can write to is not used. A set
`JAX_COMPILATION_CACHE_DIR` is used as it is; `DREAMER_NO_COMPILATION_CACHE=1` turns the cache off. JAX reads
a truncated entry (a run killed while JAX wrote it) as a miss: it warns and compiles again, and keeps the
entry, so the warning comes back until the folder is deleted."""

import argparse
import os
import sys
from dataclasses import replace
from typing import Sequence

from config import Config, ConfigError, load_config
from tracking import DEFAULT_PROJECT, MODES


def build_arg_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-c", "--config", required=True,
                        help="JSON config file (see config.json; unknown keys are errors)")
    parser.add_argument("-s", "--seed", type=int, default=None,
                        help="random seed; with several seeds, seed i of the run uses SEED+i (default 0, or the "
                             "checkpoint's seed on resume)")
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
    parser.add_argument("--save_checkpoint", default="checkpoint.ckpt", metavar="PATH",
                        help="checkpoint written every checkpoint_frequency env steps, at the end and on "
                             "SIGINT/SIGTERM (default checkpoint.ckpt; '' for none)")
    parser.add_argument("--load_checkpoint", default=None, metavar="PATH",
                        help="resume the run stored in this checkpoint (a missing file starts a fresh run)")
    return parser


def parse_command_line(argv: Sequence[str] | None, description: str,
                       single_seed: bool) -> tuple[argparse.Namespace, Config]:
    """(arguments, config) of a command line; raises ConfigError for a mistake in the config or an override.
    argparse's own errors (an unknown flag) exit 2 with its usage message, as for any script."""
    args = build_arg_parser(description).parse_args(argv)
    config = load_config(args.config, args.set)
    return args, replace(config, num_seeds=1) if single_seed else config


def config_error_exit_code(argv: Sequence[str] | None, description: str, single_seed: bool) -> int | None:
    """2 after printing the one-sentence error where the command line or config has a mistake, else None."""
    try:
        parse_command_line(argv, description, single_seed)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return None


CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
CACHE_OPT_OUT = "DREAMER_NO_COMPILATION_CACHE"


def default_compilation_cache(environ) -> str | None:
    """The scripts' default cache folder, or None where JAX's own setting stands (the folder already set in
    JAX_COMPILATION_CACHE_DIR, or the cache turned off with DREAMER_NO_COMPILATION_CACHE)."""
    if environ.get(CACHE_VARIABLE) or environ.get(CACHE_OPT_OUT):
        return None
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dreamer-jax", "xla")


def use_compilation_cache(environ=os.environ) -> str | None:
    """Points JAX_COMPILATION_CACHE_DIR at the default folder (call it before importing jax); returns the folder
    used, or None. A folder that cannot be created, belongs to another user or that others can write to is
    not used (one warning line): the run compiles as without a cache."""
    path = default_compilation_cache(environ)
    if path is None:
        return environ.get(CACHE_VARIABLE) or None
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        status = os.stat(path)
    except OSError as error:
        print(f"warning: compilation cache folder {path!r} unusable ({error.strerror}); compiling without it",
              file=sys.stderr)
        return None
    if (hasattr(os, "getuid") and status.st_uid != os.getuid()) or status.st_mode & 0o022:
        print(f"warning: compilation cache folder {path!r} is writable by others; compiling without it",
              file=sys.stderr)
        return None
    environ[CACHE_VARIABLE] = path
    return path
