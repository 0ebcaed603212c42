"""Experiment tracking with Weights & Biases: one wandb run per seed, all in one process.

A `Tracker` opens one wandb run per seed of an invocation (per variant and seed for a sweep). The
runs share a `group`, so the wandb UI shows the seeds of one invocation as one comparison; each run is
named `f"{group}-seed{seed}"` (`f"{group}-{variant}-seed{seed}"` in a sweep) and carries the full config
plus `seed`, `num_seeds` and `env_name` (and the variant's values, and `variant` naming it).
Per block, `log_block` takes the records that the runner writes to its JSON-lines output (one
per seed) and logs their numeric fields against `env_steps`, which is also the wandb step. A
resumed run (`run_ids` from a checkpoint) continues each seed's run: its steps continue those
of the first part, and a record at or below the last logged env_steps is skipped.

Tracking is best effort and never stops training:
- mode "offline" (the default, unless WANDB_MODE is set) writes runs under `directory/wandb/`
  and prints once how to upload them later with `wandb sync`;
- mode "online" without an API key or without network falls back to "offline";
- mode "disabled" neither imports wandb nor writes anything;
- any exception raised by wandb (an import failure included) prints one warning line on stderr
  and turns the tracker into a no-op.
wandb never prompts: the tracker sets WANDB_SILENT, WANDB_CONSOLE=off and the matching settings.
"""

from __future__ import annotations

import datetime
import netrc
import os
import secrets
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from experiment.config import variant_name

MODES = ("online", "offline", "disabled")
DEFAULT_PROJECT = "dreamer-jax"
_DEFAULT_BASE_URL = "https://api.wandb.ai"


def default_mode() -> str:
    """The mode to use when none is given: WANDB_MODE if the user set it, else "offline"."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode == "dryrun":  # wandb's old name for offline
        return "offline"
    return mode if mode in MODES else "offline"


def make_group_name(env_name: str | None = None, now: datetime.datetime | None = None) -> str:
    """A readable, unique group name: `<env>-<YYYYmmdd-HHMMSS>-<4 hex>`, e.g. `catch-bsuite-20261124-081500-3fa2`."""
    now = now or datetime.datetime.now()
    stem = _slug(env_name) if env_name else "dreamer"
    return f"{stem}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _slug(text: str) -> str:
    chars = [c.lower() if c.isalnum() else "-" for c in text]
    return "-".join(part for part in "".join(chars).split("-") if part) or "dreamer"


def _env_name(config: Mapping[str, Any]) -> str | None:
    env_config = config.get("env_config")
    if isinstance(env_config, Mapping) and env_config.get("env_name"):
        return str(env_config["env_name"])
    name = config.get("env_name")
    return str(name) if name else None


def _have_api_key() -> bool:
    """Whether wandb could authenticate without prompting: an API key in the environment or in netrc."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", _DEFAULT_BASE_URL)).hostname or ""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _can_reach_server(timeout: float = 3.0) -> bool:
    parsed = urlparse(os.environ.get("WANDB_BASE_URL", _DEFAULT_BASE_URL))
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def numeric_metrics(record: Mapping[str, Any]) -> dict[str, float | int]:
    """The loggable part of one output record: its int and float fields (bools as 0/1), None and others dropped."""
    out: dict[str, float | int] = {}
    for key, value in record.items():
        if key == "seed" or value is None:
            continue
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float)):
            out[key] = value
        elif hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / jax scalar
            out[key] = value.item()
    return out


def _histograms(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record's non-empty lists of numbers (the evaluation's per-episode returns) as wandb histograms."""
    lists = {key: value for key, value in record.items() if isinstance(value, list) and value
             and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)}
    if not lists:
        return {}
    import wandb

    return {key: wandb.Histogram(value) for key, value in lists.items()}


def _last_env_steps(run: Any) -> int | None:
    """The last env_steps a resumed run logged, from its summary: known online, None offline (wandb cannot
    see an offline run's earlier part)."""
    try:
        last = run.summary.get("env_steps")
    except Exception:  # noqa: BLE001 - only an optimisation, never a reason to stop tracking
        return None
    return last if isinstance(last, int) and not isinstance(last, bool) else None


class Tracker:
    """One wandb run per seed of one invocation, all in this process, grouped under `group`.

    Args:
        config_dict: the full config as plain data (e.g. `config.to_dict()`); goes in each run's config.
        seeds: the seed of each run of the invocation, in the order of the records.
        group: the wandb group shared by all runs; None generates a readable name (see `make_group_name`).
        project: the wandb project.
        mode: "online", "offline" or "disabled"; None means WANDB_MODE if set, else "offline".
        tags: wandb tags of every run.
        run_ids: wandb run ids, one per seed, to continue those runs after a checkpoint resume
            (`resume="allow"`); None starts new runs. `tracker.run_ids` gives the ids to store.
        directory: where wandb writes its `wandb/` folder.
        env_name: the environment name for the run config and the generated group; by default
            `config_dict["env_config"]["env_name"]`.
        variants: in a sweep, each run's swept values ({key: value}), one per entry of `seeds`.

    Attributes: `group`, `run_ids` (None where a run is not open), `mode` (the mode in effect),
    `active` (whether anything is logged), `sync_dirs` (offline run directories).
    """

    def __init__(
        self,
        config_dict: Mapping[str, Any],
        seeds: Sequence[int],
        group: str | None = None,
        project: str = DEFAULT_PROJECT,
        mode: str | None = None,
        tags: Sequence[str] = (),
        run_ids: Sequence[str] | None = None,
        directory: str = ".",
        env_name: str | None = None,
        variants: Sequence[Mapping[str, float]] | None = None,
    ) -> None:
        self.seeds = [int(seed) for seed in seeds]
        self.variants = [dict(v) for v in variants] if variants is not None else [{} for _ in self.seeds]
        if len(self.variants) != len(self.seeds):
            raise ValueError(f"got {len(self.variants)} variants for {len(self.seeds)} seeds, expected one per run")
        if run_ids is not None and len(run_ids) != len(self.seeds):
            raise ValueError(f"got {len(run_ids)} run ids for {len(self.seeds)} seeds, expected one per seed")
        mode = default_mode() if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"wandb mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.env_name = env_name or _env_name(config_dict)
        self.group = group or make_group_name(self.env_name)
        self.project = project
        self.directory = os.path.abspath(directory)
        self.run_ids: list[str | None] = list(run_ids) if run_ids is not None else [None] * len(self.seeds)
        self.sync_dirs: list[str] = []
        self.mode = mode
        self._runs: list[Any] = []
        self._logged_up_to: list[int | None] = [None] * len(self.seeds)  # last env_steps logged, per run
        self._warned = False
        if mode == "disabled":
            return
        try:
            self._start(dict(config_dict), list(tags))
        except Exception as error:  # noqa: BLE001 - a tracking failure must never stop training
            self._fail(error)

    @property
    def num_variants(self) -> int:
        return len({variant_name(v) for v in self.variants})

    @property
    def active(self) -> bool:
        return bool(self._runs)

    def _start(self, config: dict[str, Any], tags: list[str]) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ["WANDB_CONSOLE"] = "off"
        if self.mode == "online" and not _have_api_key():
            self._note("no wandb API key found (WANDB_API_KEY or `wandb login`), logging offline")
            self.mode = "offline"
        elif self.mode == "online" and not _can_reach_server():
            self._note("cannot reach the wandb server, logging offline")
            self.mode = "offline"
        import wandb  # only here: mode "disabled" must not import it

        os.makedirs(self.directory, exist_ok=True)
        settings = wandb.Settings(
            silent=True,
            console="off",
            disable_git=True,
            save_code=False,
            x_disable_stats=True,
            x_save_requirements=False,
            init_timeout=60.0,
        )
        for index, (seed, variant) in enumerate(zip(self.seeds, self.variants)):
            name = variant_name(variant)
            run_config = {**config, **variant, "seed": seed, "num_seeds": len(self.seeds) // self.num_variants,
                          "env_name": self.env_name, **({"variant": name} if variant else {})}
            kwargs: dict[str, Any] = {}
            if self.run_ids[index] is not None:
                kwargs = {"id": self.run_ids[index], "resume": "allow"}
            run = wandb.init(
                project=self.project,
                group=self.group,
                name=f"{self.group}-{name + '-' if name else ''}seed{seed}",
                config=run_config,
                tags=tags or None,
                mode=self.mode,
                dir=self.directory,
                reinit="create_new",
                settings=settings,
                **kwargs,
            )
            run.define_metric("env_steps")
            run.define_metric("*", step_metric="env_steps")
            self._runs.append(run)
            self.run_ids[index] = run.id
            self._logged_up_to[index] = _last_env_steps(run) if kwargs else None
            if self.mode == "offline":
                self.sync_dirs.append(run.settings.sync_dir)
        if self.mode == "offline" and self.sync_dirs:
            parent = os.path.dirname(self.sync_dirs[0])
            self._note(
                f"{len(self.sync_dirs)} offline runs (group {self.group}) in {parent}; "
                f"upload them later with: wandb sync {os.path.join(parent, 'offline-run-*')}"
            )

    def log_block(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Log one block: one output record per run (matched by its `seed` and `variant` fields, else by
        position)."""
        if not self._runs:
            return
        try:
            by_run = {(seed, variant_name(v)): index for index, (seed, v) in enumerate(zip(self.seeds, self.variants))}
            for position, record in enumerate(records):
                run = (record.get("seed"), record.get("variant", ""))
                index = by_run.get(run, position) if "seed" in record else position
                if index >= len(self._runs):
                    continue
                metrics = numeric_metrics(record)
                step = int(metrics["env_steps"]) if "env_steps" in metrics else None
                last = self._logged_up_to[index]
                if not metrics or (step is not None and last is not None and step <= last):
                    continue  # nothing to log, or already in this run (a resume re-ran blocks logged after
                    # its checkpoint, say before a crash)
                # The wandb step is env_steps, so it is the same in every part of a resumed run (an offline
                # resume restarts wandb's own counter at 0) and a block logged twice has one step.
                self._runs[index].log({**metrics, **_histograms(record)}, step=step)
                self._logged_up_to[index] = step if step is not None else last
        except Exception as error:  # noqa: BLE001
            self._fail(error)

    def log_media(self, env_steps: int, media: Sequence[Mapping[str, str]]) -> None:
        """Log each run's media files ({tag: path}, one dict per run in the order of the seeds) at `env_steps`:
        GIFs as wandb videos, other images as wandb images."""
        if not self._runs or not any(media):
            return
        try:
            import wandb

            for run, files in zip(self._runs, media):
                if files:
                    run.log({"env_steps": env_steps, **{
                        tag: wandb.Video(path, format="gif") if path.endswith(".gif") else wandb.Image(path)
                        for tag, path in files.items()}}, step=env_steps)
        except Exception as error:  # noqa: BLE001
            self._fail(error)

    def write(self, block) -> None:
        """The sink interface (outputs.sinks): the block's records, then its media files."""
        self.log_block(block.records)
        self.log_media(block.env_steps, block.media)

    def close(self) -> None:
        self.finish()

    def finish(self) -> None:
        """Close every run and wait until wandb has written them out; safe to call twice."""
        runs, self._runs = self._runs, []
        for run in runs:
            try:
                run.finish()
            except Exception as error:  # noqa: BLE001
                self._fail(error)
        if runs:
            try:
                # run.finish() can return before wandb's service process has written the last run's file
                # (seen with wandb 0.31: the offline file of the last run held only its header); teardown
                # waits for the service, so the files are complete when this returns.
                import wandb

                wandb.teardown()
            except Exception as error:  # noqa: BLE001
                self._fail(error)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()

    def _fail(self, error: BaseException) -> None:
        """Warn once, close what can be closed, and become a no-op."""
        if not self._warned:
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            print(f"warning: wandb tracking turned off ({type(error).__name__}: {message}); "
                  "training goes on, metrics are still in the output file", file=sys.stderr)
            self._warned = True
        runs, self._runs = self._runs, []
        for run in runs:
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001
                pass

    @staticmethod
    def _note(message: str) -> None:
        print(f"wandb: {message}", file=sys.stderr)
