"""The entry scripts' command line, the config check they run before importing JAX, and the folder of JAX's
persistent compilation cache they use.

Importing JAX, haiku and gymnax takes several seconds; a mistake in the command line or the config file
(unknown key, wrong type, value out of range) is reported before that, in a fraction of a second.
Mistakes that need the environment's registry (an unknown env id) are reported by `runner.run_command`.

Compiling the block takes tens of seconds on two CPU cores for the reference config. A resumed run, or another run
with the same config and seed count, compiles the very same programs, so the scripts keep them in JAX's
persistent compilation cache: by default `$XDG_CACHE_HOME/dreamer-jax/xla` (`~/.cache/dreamer-jax/xla`).
A loaded program is the compiled one, so the numbers do not change. JAX runs what it loads from there, so the
folder is created readable by its owner only, and a folder that another user could change is not used. A set
`JAX_COMPILATION_CACHE_DIR` is used as it is; `DREAMER_NO_COMPILATION_CACHE=1` turns the cache off. JAX reads
a truncated entry (a run killed while JAX wrote it) as a miss: it warns and compiles again, and keeps the
entry, so the warning comes back until the folder is deleted."""

import argparse
import os
import sys
from dataclasses import replace
from typing import Callable, Sequence

from experiment.config import Config, ConfigError, load_config, with_sweep
from outputs.wandb_runs import DEFAULT_PROJECT, MODES


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
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="sweep a numeric hyper-parameter over these values (repeatable: the variants are every "
                             "combination); each variant runs all seeds, vmapped together in one program")
    parser.add_argument("--no_progress", action="store_true", help="do not draw the progress bar")
    parser.add_argument("-g", "--group", default=None,
                        help="wandb group shared by every seed's run (default: a generated name, printed at start)")
    parser.add_argument("--tag", action="append", default=[], help="wandb tag for every seed's run (repeatable)")
    parser.add_argument("--wandb_project", default=DEFAULT_PROJECT, help=f"wandb project (default {DEFAULT_PROJECT})")
    parser.add_argument("--wandb", choices=MODES, default=None,
                        help="wandb mode: one run per seed; default offline unless WANDB_MODE is set "
                             "(offline runs are uploaded later with `wandb sync`)")
    parser.add_argument("--video", action="store_true",
                        help="write videos every video_every env steps and at the end: one episode of the agent per "
                             "seed and the world model's predictions beside it (GIF and PNG, to --video_dir, wandb "
                             "and --tensorboard)")
    parser.add_argument("--video_dir", default=None, metavar="DIR",
                        help="folder of the videos, one subfolder per seed (default: the -o file's name without "
                             "its extension, plus _videos)")
    parser.add_argument("--tensorboard", default=None, metavar="DIR",
                        help="also write the metrics (and videos) as TensorBoard event files, one subfolder per seed")
    parser.add_argument("--save_checkpoint", default="checkpoint.ckpt", metavar="PATH",
                        help="checkpoint written every checkpoint_frequency env steps, at the end and on "
                             "SIGINT/SIGTERM (default checkpoint.ckpt; '' for none)")
    parser.add_argument("--load_checkpoint", default=None, metavar="PATH",
                        help="resume the run stored in this checkpoint (a missing file starts a fresh run; with "
                             "--evaluate, the agent to evaluate, and a missing file is an error)")
    parser.add_argument("--evaluate", type=int, default=None, metavar="N",
                        help="train nothing: play N evaluation episodes per seed (and sweep variant) with the "
                             "--load_checkpoint agent's eval_policy, write their returns to -o and print a summary "
                             "line per seed (see docs/evaluation.md)")
    parser.add_argument("--export", default=None, metavar="PATH",
                        help="at the end (after training or --evaluate), write what acting needs, the world model's "
                             "and policy's parameters and the config, to PATH (.npz with a JSON header, no pickle)")
    parser.add_argument("--coordinator_address", default=None, metavar="HOST:PORT",
                        help="join a run of several processes through JAX's distributed runtime, with process 0 "
                             "at this address (found by JAX itself on Slurm and Open MPI); see docs/devices.md")
    parser.add_argument("--num_processes", type=int, default=None, help="processes of the distributed run")
    parser.add_argument("--process_id", type=int, default=None, help="this process's id, 0..num_processes-1")
    return parser


def parse_command_line(argv: Sequence[str] | None, description: str,
                       single_seed: bool) -> tuple[argparse.Namespace, Config]:
    """(arguments, config) of a command line; raises ConfigError for a mistake in the config or an override.
    argparse's own errors (an unknown flag) exit 2 with its usage message, as for any script."""
    args = build_arg_parser(description).parse_args(argv)
    if args.evaluate is not None and args.evaluate < 1:
        raise ConfigError(f"--evaluate must be at least 1 episode, got {args.evaluate}")
    config = with_sweep(load_config(args.config, args.set), args.sweep)
    return args, replace(config, num_seeds=1) if single_seed else config


def checked_command_line(argv: Sequence[str] | None, description: str,
                         single_seed: bool) -> tuple[argparse.Namespace, Config] | None:
    """parse_command_line's (arguments, config), or None after printing a mistake's one-sentence error."""
    try:
        return parse_command_line(argv, description, single_seed)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def exit_code_of(main: Callable[[], object]) -> int:
    """The bench scripts' entry: the exit code `main()` returns (0 when it returns none), or 2 after printing the
    one sentence of a ConfigError it raised (a mistake in the config, an override or the environment id), as the
    run scripts answer the same mistake."""
    try:
        code = main()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0


def script_main(argv: Sequence[str] | None, description: str, single_seed: bool) -> int:
    """The entry scripts' main: the command line and config are read once and checked before JAX is imported
    (a mistake: one sentence, exit 2, in a fraction of a second), then the compilation cache is set up and the
    run starts (`runner.run_command`)."""
    parsed = checked_command_line(argv, description, single_seed)
    if parsed is None:
        return 2
    args, config = parsed
    use_compilation_cache()
    from runtime import devices  # imports JAX: after the cache folder is set, as JAX reads it when imported
    try:  # before JAX uses any device
        devices.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    except devices.DistributedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.evaluate is not None:
        from experiment import saved_agent
        return saved_agent.evaluate_command(args, config)
    from experiment import runner
    return runner.run_command(args, config)


CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
CACHE_OPT_OUT = "DREAMER_NO_COMPILATION_CACHE"


def default_compilation_cache(environ) -> str | None:
    """The scripts' default cache folder, or None where JAX's own setting stands (a folder already set in
    JAX_COMPILATION_CACHE_DIR, the cache turned off with DREAMER_NO_COMPILATION_CACHE set to any non-empty
    value) or no absolute home folder is known. A relative XDG_CACHE_HOME is ignored, as the XDG spec says."""
    if environ.get(CACHE_VARIABLE) or environ.get(CACHE_OPT_OUT):
        return None
    base = environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dreamer-jax", "xla") if os.path.isabs(base) else None


def _unsafe_folder(path: str) -> str | None:
    """Why another user could change what is in `path` (owned by someone else, or writable by group or
    others), or None. POSIX only: elsewhere nothing is checked."""
    if not hasattr(os, "getuid"):
        return None
    for status in (os.lstat(path), os.stat(path)):  # the entry itself, then what it links to (if a link)
        if status.st_uid != os.getuid():
            return "belongs to another user"
    if status.st_mode & 0o022:
        return "is writable by group or others"
    return None


def use_compilation_cache() -> str | None:
    """Sets up the default cache folder for this process (prepare_compilation_cache) and returns the cache
    folder in use, or None. Once jax is imported it no longer reads the variable, so then nothing is set."""
    if "jax" in sys.modules:
        return None
    return prepare_compilation_cache(os.environ)


def prepare_compilation_cache(environ) -> str | None:
    """Points JAX_COMPILATION_CACHE_DIR in `environ` at the default folder; returns the cache folder in use, or
    None. The folder and its `dreamer-jax` parent are created readable by their owner only; where either cannot
    be created, or another user could change its contents, no cache is used (one warning line)."""
    path = default_compilation_cache(environ)
    if path is None:
        return environ.get(CACHE_VARIABLE) or None
    try:
        for folder in (os.path.dirname(path), path):
            os.makedirs(folder, mode=0o700, exist_ok=True)
            reason = _unsafe_folder(folder)
            if reason:
                print(f"warning: compilation cache folder {folder!r} {reason}; compiling without a cache",
                      file=sys.stderr)
                return None
    except OSError as error:
        print(f"warning: compilation cache folder {path!r} unusable ({error.strerror or error}); compiling "
              "without a cache", file=sys.stderr)
        return None
    environ[CACHE_VARIABLE] = path
    return path
