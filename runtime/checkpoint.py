"""Checkpoints of the run state: one pickle-free `.npz` file (every leaf keyed by its tree path, plus a JSON
header), written atomically, and validated leaf by leaf against the state the current config builds."""

import json
import os
import time
import zipfile
from typing import Any, NamedTuple

import jax
import numpy as np

from experiment.config import OBSERVATION_KEYS, Config, config_to_dict
from outputs import records

FORMAT = "dreamer-jax checkpoint"
FORMAT_VERSION = 1
PROJECT_VERSION = "0.1.0"  # bump when the run state changes in a way old checkpoints cannot follow
HEADER_KEY = "__header__"  # the JSON header, stored as a uint8 array of its UTF-8 bytes
# Keys of the config a resume may change: the length of the run, how often it is checkpointed, and how many
# seeds' updates run together (a speed and memory setting whose default depends on the device), and what is
# observed of the run (evaluation, videos).
RESUMABLE_KEYS = ("num_steps", "checkpoint_frequency", "update_seed_batch") + OBSERVATION_KEYS
# Test hook: seconds to sleep inside a save, after the temp file is written and before it replaces the
# checkpoint, so a test can kill the process in the middle of a save.
TEST_SLEEP_ENV = "DREAMER_CHECKPOINT_TEST_SLEEP_S"


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded or does not fit this run: the message is one sentence."""


def tree_arrays(state) -> dict[str, np.ndarray]:
    """Every leaf of `state` as a host array, keyed by its tree path, e.g. ".replay.obs"."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(state))
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def save(path: str, state, header: dict[str, Any], file_format: str = FORMAT) -> None:
    """Writes `state` and `header` to `path` atomically: a kill at any instant leaves either the previous
    checkpoint or the new one. The temp file `PATH.tmp` sits in the same folder, so os.replace is atomic.
    `file_format` names what the file is in its header (an exported policy is not a checkpoint)."""
    header = {"format": file_format, "format_version": FORMAT_VERSION, "project_version": PROJECT_VERSION,
              "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **header}
    arrays = tree_arrays(state)
    arrays[HEADER_KEY] = np.frombuffer(json.dumps(header).encode("utf-8"), np.uint8)
    temp = path + ".tmp"
    with open(temp, "wb") as file:
        np.savez(file, **arrays)
        file.flush()
        os.fsync(file.fileno())
        if os.environ.get(TEST_SLEEP_ENV):
            time.sleep(float(os.environ[TEST_SLEEP_ENV]))
    os.replace(temp, path)
    _fsync_folder(os.path.dirname(os.path.abspath(path)))


def check_save_path(path: str) -> None:
    """Refuses, before a run starts, a checkpoint path that a save would fail on."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path {path!r} is a directory; --save_checkpoint needs a file name")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise CheckpointError(f"the folder of checkpoint path {path!r} does not exist")


def _fsync_folder(folder: str) -> None:
    """Makes the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_header(path: str) -> dict[str, Any]:
    """The JSON header of checkpoint `path`, after checking that the file is a checkpoint this version reads.
    Raises CheckpointError with one sentence otherwise; never unpickles anything."""
    with _open_archive(path) as archive:
        return _header(path, archive)


def load(path: str, expected) -> tuple[Any, dict[str, Any]]:
    """(state, header) from checkpoint `path`. `expected` is the state tree the current config builds (arrays
    or jax.ShapeDtypeStruct, e.g. from jax.eval_shape): every leaf must be present with its shape and dtype,
    and no other leaf may be. Raises CheckpointError naming the file and the leaf."""
    expected_leaves, treedef = jax.tree_util.tree_flatten_with_path(expected)
    expected_keys = [jax.tree_util.keystr(p) for p, _ in expected_leaves]
    with _open_archive(path) as archive:
        header = _header(path, archive)
        stored = set(archive.files) - {HEADER_KEY}
        flattened = _flattened_leaves(archive.files, stored, expected_keys)
        stored = (stored - {k for parts in flattened.values() for k in parts}) | set(flattened)
        missing = [k for k in expected_keys if k not in stored and k not in LEAVES_ADDED_SINCE]
        if missing:
            raise CheckpointError(f"checkpoint {path!r} lacks the state leaf {missing[0]!r} "
                                  f"({len(missing)} missing): it was written for a different model or config")
        extra = sorted(stored - set(expected_keys))
        if extra:
            raise CheckpointError(f"checkpoint {path!r} has the state leaf {extra[0]!r} that this run does not "
                                  f"have ({len(extra)} extra): it was written for a different model or config")
        arrays = []
        for key, (_, leaf) in zip(expected_keys, expected_leaves):
            if key not in stored:  # a leaf added after this checkpoint was written: its initial value
                array = np.full(leaf.shape, LEAVES_ADDED_SINCE[key], leaf.dtype)
            elif key in flattened:
                # each part keeps the leading (seed) axes of the flat leaf; the rest is raveled and concatenated
                array = np.concatenate([_read_array(path, archive, part).reshape(*leaf.shape[:-1], -1)
                                        for part in flattened[key]], axis=-1)
            else:
                array = _read_array(path, archive, key)
            if array.shape != tuple(leaf.shape) or array.dtype != leaf.dtype:
                raise CheckpointError(f"checkpoint {path!r} holds leaf {key!r} as {array.dtype}{list(array.shape)}, "
                                      f"but this run needs {np.dtype(leaf.dtype)}{list(leaf.shape)}")
            arrays.append(array)
    return jax.device_put(jax.tree_util.tree_unflatten(treedef, arrays)), header


def load_part(path: str, expected, prefixes: tuple[str, ...]):
    """The leaves of `expected` (as for `load`) whose tree path starts with one of `prefixes`, read from checkpoint
    `path` and checked as `load` checks them, in a tree of `expected`'s structure holding None at every other
    leaf: the rest of the file (the replay, the optimizer states) is not read. Raises CheckpointError."""
    expected_leaves, treedef = jax.tree_util.tree_flatten_with_path(expected)
    arrays = []
    with _open_archive(path) as archive:
        _header(path, archive)
        for path_keys, leaf in expected_leaves:
            key = jax.tree_util.keystr(path_keys)
            if not key.startswith(prefixes):
                arrays.append(None)
                continue
            if key not in archive.files:
                raise CheckpointError(f"checkpoint {path!r} lacks the state leaf {key!r}: it was written for a "
                                      "different model or config")
            array = _read_array(path, archive, key)
            if array.shape != tuple(leaf.shape) or array.dtype != leaf.dtype:
                raise CheckpointError(f"checkpoint {path!r} holds leaf {key!r} as {array.dtype}{list(array.shape)}, "
                                      f"but this run needs {np.dtype(leaf.dtype)}{list(leaf.shape)}")
            arrays.append(array)
    return jax.device_put(jax.tree_util.tree_unflatten(treedef, arrays))


# State leaves added after the checkpoint format's version began, with the initial value a resume of an older
# checkpoint gives them. `.return_scale`: the EMA of the imagined returns' spread, only read with
# return_normalization, an option the older checkpoints' configs cannot have had.
LEAVES_ADDED_SINCE = {".return_scale": 0.0}


def _flattened_leaves(names: list[str], stored: set[str], expected_keys: list[str]) -> dict[str, list[str]]:
    """Leaves this version keeps as one flat vector that the checkpoint holds as a tree of leaves under the same
    path: {expected key: the checkpoint's keys below it, in the order they were written (the tree's order)}.
    The optimizer moments became flat vectors (`agent.training_step.make_optimizer`); checkpoints written before
    keep one array per parameter (`.opt_states.world_model[1][0].mu['world_model/~/gru']['b']`), and a resume
    concatenates them as `optax.flatten` does."""
    flattened = {}
    for key in expected_keys:
        if key not in stored:
            parts = [name for name in names if name.startswith(key + "[") and name in stored]
            if parts:
                flattened[key] = parts
    return flattened


def _open_archive(path: str):
    """The npz archive at `path`, opened with allow_pickle=False after a look at its first bytes."""
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {error.strerror or error}") from None
    if magic[:1] == b"\x80":
        raise CheckpointError(f"{path!r} is a pickle, not a checkpoint; pickles are never loaded, as they can run code")
    if magic != b"PK\x03\x04":
        raise CheckpointError(f"{path!r} is not a checkpoint (not an .npz archive)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt ({_reason(error)})") from None


def _read_array(path: str, archive, key: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as error:
        if "pickle" in str(error):
            raise CheckpointError(f"checkpoint {path!r} holds pickled data in leaf {key!r}; "
                                  "pickles are never loaded, as they can run code") from None
        raise CheckpointError(f"checkpoint {path!r} is corrupt in leaf {key!r} ({_reason(error)})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt in leaf {key!r} "
                              f"({_reason(error)})") from None


def _header(path: str, archive) -> dict[str, Any]:
    if HEADER_KEY not in archive.files:
        raise CheckpointError(f"{path!r} is an .npz archive but not a checkpoint (it has no {HEADER_KEY} entry)")
    raw = _read_array(path, archive, HEADER_KEY)
    try:
        header = json.loads(raw.astype(np.uint8).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint {path!r} has a corrupt header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is an .npz archive but not a checkpoint (its header is not a {FORMAT} header)")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version {header.get('format_version')!r}, "
                              f"this program reads version {FORMAT_VERSION} only")
    return header


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def config_differences(stored: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """Dotted config keys whose values differ between the checkpoint's config and the given one, leaving out
    the keys a resume may change. A key the checkpoint's config lacks (added to the config since) has its
    default there, the value that run had."""
    def flat(d, prefix=""):
        items = {}
        for k, v in d.items():
            items.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return items
    defaults, stored, given = flat(config_to_dict(Config())), flat(stored), flat(given)
    stored = {**{k: defaults[k] for k in given if k in defaults}, **stored}  # keys added since: their defaults
    return [f"{k} (checkpoint {stored.get(k)!r}, now {given.get(k)!r})" for k in sorted(set(stored) | set(given))
            if k not in RESUMABLE_KEYS and stored.get(k) != given.get(k)]


class Resume(NamedTuple):
    """What a run continues from: the validated state and where the previous run left off."""

    state: Any
    seed: int  # the first seed; seed i of the run is seed + i
    env_steps: int
    recent_returns: list[list[float]]  # per seed, the last returns before the checkpoint
    output_bytes: int | None  # truncate the output file to this many bytes and append; None: start it anew
    output_records: int
    wandb: dict[str, Any] | None  # {"group", "run_ids"} of the tracked runs, if any


def prepare_resume(path: str, config_dict: dict[str, Any], expected, seed: int | None, num_steps: int,
                   output: str | None) -> Resume:
    """Reads and validates checkpoint `path` for a run of config `config_dict` whose initial state has the
    shapes of `expected`, writing nothing. Raises CheckpointError with one sentence when the checkpoint does
    not fit: another config (other than RESUMABLE_KEYS), another seed, num_steps below its env steps, an
    output file shorter than when the checkpoint was taken, or any bad leaf."""
    header = read_header(path)
    differences = config_differences(header.get("config", {}), config_dict)
    if differences:
        raise CheckpointError(f"checkpoint {path!r} belongs to a run with another config, differing in "
                              f"{'; '.join(differences)}; a resume may change only {', '.join(RESUMABLE_KEYS)}")
    stored_seed = header["seeds"][0]
    if seed is not None and seed != stored_seed:
        raise CheckpointError(f"checkpoint {path!r} belongs to seed {stored_seed}, not {seed}; "
                              "leave out -s to resume it")
    if num_steps < header["env_steps"]:
        raise CheckpointError(f"checkpoint {path!r} is at env step {header['env_steps']}, beyond num_steps "
                              f"{num_steps}; set num_steps to at least {header['env_steps']}")
    state, header = load(path, expected)
    try:
        output_bytes, output_records = records.bytes_to_keep(output, header["output"], path)
    except records.OutputMismatch as error:
        raise CheckpointError(str(error)) from None
    return Resume(state, stored_seed, header["env_steps"], header["recent_returns"], output_bytes, output_records,
                  header.get("wandb"))
