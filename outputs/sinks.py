"""What a run hands its outputs: after every block, a `Block` of records and media goes to each sink in the run's
list (records file, videos, wandb, TensorBoard, progress bar). A new output is a new sink; the loop stays as it is."""

import os
import sys
from typing import NamedTuple, Protocol

import numpy as np
from tqdm import tqdm

from experiment.config import variant_name

RETURN_WINDOW = 50  # episodes in the progress bar's and the final summary's mean return


def run_folder(directory: str, seed: int, variant: dict) -> str:
    """The folder of one run's files under `directory`: `seed0`, or `VARIANT-seed0` in a sweep."""
    return os.path.join(directory, f"{variant_name(variant) + '-' if variant else ''}seed{seed}")


class Block(NamedTuple):
    """One block's outputs, one entry per run of this process, in the order of the state's leading axis."""

    env_steps: int  # the env step every run reached at the end of the block
    records: list[dict]  # the JSON records (experiment.runner.block_records)
    returns: list[list[float]]  # the returns of the episodes each run completed in the block
    recordings: list | None  # videos asked for: each run's recorded episode and dream (agent.evaluation.RunObserver)
    media: list[dict[str, str]]  # each run's media files, {tag: path}; filled by the videos sink


class Sink(Protocol):
    def write(self, block: Block) -> None:
        """Takes one block's outputs. A sink that sends them elsewhere (wandb, TensorBoard) is best effort: an
        error turns it off with one warning, and training goes on."""

    def close(self) -> None:
        """Flushes and closes; called once, also when the run stops early."""


class ProgressBar:
    """The run's progress in env steps on stderr, with the mean return over each run's last RETURN_WINDOW
    episodes: redrawn in place on a terminal; in a log, a line of its own at most once a minute."""

    def __init__(self, total: int, done: int, enabled: bool, recent_returns: list[list[float]]):
        if sys.stderr.isatty():
            self._bar = tqdm(total=total, initial=done, unit="step", disable=not enabled, file=sys.stderr,
                             dynamic_ncols=True)
        else:
            self._bar = tqdm(total=total, initial=done, unit="step", disable=not enabled, file=sys.stderr,
                             mininterval=60.0, maxinterval=float("inf"), bar_format="{l_bar}{bar}{r_bar}\n")
        self._recent = [list(returns[-RETURN_WINDOW:]) for returns in recent_returns]

    def write(self, block: Block) -> None:
        for recent, returns in zip(self._recent, block.returns):
            recent.extend(returns)
            del recent[:-RETURN_WINDOW]
        returns = [r for recent in self._recent for r in recent]
        shown = f"{np.mean(returns):.3f}" if returns else "n/a"
        self._bar.set_postfix_str(f"return (last {RETURN_WINDOW}) {shown}", refresh=False)
        self._bar.update(block.env_steps - self._bar.n)

    def close(self) -> None:
        self._bar.close()
