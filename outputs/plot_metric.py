"""Plot one metric from runner output files: mean across seeds with a 95% bootstrap CI, per file.

    python3 outputs/plot_metric.py OUTPUT [OUTPUT ...] --metric episode_return -o plot.png [--smooth N] [--summary]

Each OUTPUT is a JSON-lines file written by the runner's `-o` flag (one record per seed per block,
see README "Output format"). Each file is one line in the plot, labelled with its file name; the output of
a sweep (`--sweep`, records with a `variant` field) is one line per variant, over that variant's seeds.

Plot: at each `env_steps`, the mean of the metric across seeds, and a shaded 95% percentile
bootstrap confidence interval of that mean (seeds resampled with replacement, `--bootstrap`
resamples, fixed RNG seed). Null values (e.g. `episode_return` in a block where no episode
ended) are left out of the mean. `--smooth N` first replaces each seed's value at a block by the
mean of its numeric values over the last N blocks (a trailing moving average).

Summary (`--summary`, printed to stdout, one row per file), computed on unsmoothed values:
- `final`: per seed, the mean of the last `--last K` numeric values of the metric (nulls skipped;
  K=1: the last numeric value); then the mean of those per-seed values across seeds;
- `iqm`: the interquartile mean of the per-seed final values (25% trimmed from each end,
  `scipy.stats.trim_mean(x, 0.25)`);
- `ci_low`, `ci_high`: the 95% percentile bootstrap CI of `final` over seeds.
A sweep's variants are ranked: sorted by `final`, best (highest) first.

Errors (a missing or unreadable file, a metric absent from a file, no numeric values) print one
sentence on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats
from scipy.stats import trim_mean

CONFIDENCE = 0.95
RNG_SEED = 0


class UsageError(Exception):
    """A problem with the inputs, reported as one sentence and exit status 2."""


@dataclass(frozen=True)
class SeedCurves:
    """One file's metric as a [num_seeds, num_steps] table; NaN where a seed has no numeric value."""

    label: str
    seeds: np.ndarray  # [S]
    env_steps: np.ndarray  # [T], increasing
    values: np.ndarray  # [S, T]


def read_records(path: str) -> list[dict]:
    """The JSON objects of a JSON-lines file (blank lines skipped)."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.readlines()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}.") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"{path} line {number} is not valid JSON.") from None
        if not isinstance(record, dict):
            raise UsageError(f"{path} line {number} is not a JSON object.")
        records.append(record)
    if not records:
        raise UsageError(f"{path} holds no records.")
    return records


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def seed_curves(records: Sequence[dict], metric: str, label: str) -> SeedCurves:
    """Arrange records into a seeds x env_steps table of `metric` (a later duplicate record wins)."""
    if not any(metric in record for record in records):
        raise UsageError(f"metric {metric!r} is not in {label}.")
    table: dict[int, dict[int, float]] = {}
    for number, record in enumerate(records, start=1):
        if not _is_number(record.get("env_steps")):
            raise UsageError(f"record {number} of {label} has no numeric env_steps.")
        if not _is_number(record.get("seed", 0)):
            raise UsageError(f"record {number} of {label} has no numeric seed.")
        value = record.get(metric)
        row = table.setdefault(int(record.get("seed", 0)), {})
        row[int(record["env_steps"])] = float(value) if _is_number(value) else math.nan
    seeds = np.array(sorted(table))
    env_steps = np.array(sorted({step for row in table.values() for step in row}))
    values = np.full((len(seeds), len(env_steps)), np.nan)
    column = {step: index for index, step in enumerate(env_steps)}
    for i, seed in enumerate(seeds):
        for step, value in table[int(seed)].items():
            values[i, column[step]] = value
    if np.all(np.isnan(values)):
        raise UsageError(f"metric {metric!r} has no numeric values in {label}.")
    return SeedCurves(label, seeds, env_steps, values)


def variant_curves(records: Sequence[dict], metric: str, label: str, alone: bool) -> list[SeedCurves]:
    """seed_curves of each variant of a sweep's records (in the order they first appear), labelled by the
    variant (prefixed with `label` unless the file is `alone`); a file without variants is one SeedCurves."""
    variants: dict[str, list[dict]] = {}
    for record in records:
        variants.setdefault(str(record.get("variant", "")), []).append(record)
    if list(variants) == [""]:
        return [seed_curves(records, metric, label)]
    return [seed_curves(rows, metric, name if alone else f"{label} {name}") for name, rows in variants.items()]


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over the last axis, over the numeric values in each window (NaN if none)."""
    if window <= 1:
        return values
    valid = ~np.isnan(values)
    totals = np.cumsum(np.where(valid, values, 0.0), axis=-1)
    counts = np.cumsum(valid, axis=-1)
    totals[..., window:] = totals[..., window:] - totals[..., :-window].copy()
    counts[..., window:] = counts[..., window:] - counts[..., :-window].copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def bootstrap_ci(values, statistic, resamples: int = 2000, seed: int = RNG_SEED,
                 confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI (scipy.stats.bootstrap, seeds resampled with replacement, fixed RNG) of
    `statistic(values, axis)` over axis 0 (seeds), for each column.

    values: [S, T] (or [S]); returns (low, high), each [T] (or scalar). One seed gives its own value at both
    ends; a column where some resample holds no numeric value gets NaN at both ends.
    """
    values = np.asarray(values, dtype=float)
    if values.shape[0] < 2:
        return values[0], values[0]
    with np.errstate(invalid="ignore"), _quiet_nan_warnings():
        interval = scipy.stats.bootstrap((values,), statistic, n_resamples=resamples, confidence_level=confidence,
                                         method="percentile", axis=0, vectorized=True, batch=256,
                                         rng=np.random.default_rng(seed)).confidence_interval
    return interval.low, interval.high


def bootstrap_mean_ci(values, resamples: int = 2000, seed: int = RNG_SEED,
                      confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the NaN-ignoring mean over seeds (axis 0), see bootstrap_ci."""
    return bootstrap_ci(values, np.nanmean, resamples, seed, confidence)


@contextlib.contextmanager
def _quiet_nan_warnings():
    """Silence NumPy's "mean of empty slice" warnings: an all-NaN column gives NaN, as intended."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


def interquartile_mean(values: np.ndarray) -> float:
    """Mean after trimming 25% from each end: scipy.stats.trim_mean(x, 0.25)."""
    return float(trim_mean(np.asarray(values, dtype=float), 0.25))


def final_values(curves: SeedCurves, last: int) -> np.ndarray:
    """Per seed: the mean of its last `last` numeric values; seeds with none are left out."""
    finals = []
    for row in curves.values:
        numeric = row[~np.isnan(row)]
        if numeric.size:
            finals.append(float(np.mean(numeric[-last:])))
    return np.array(finals)


def summarize(curves: SeedCurves, last: int = 1, resamples: int = 2000) -> dict[str, float]:
    finals = final_values(curves, last)
    low, high = bootstrap_mean_ci(finals, resamples=resamples)
    return {"seeds": len(finals), "final": float(np.mean(finals)), "iqm": interquartile_mean(finals),
            "ci_low": float(low), "ci_high": float(high)}


def format_summary(rows: Sequence[tuple[str, dict[str, float]]], metric: str, last: int) -> str:
    width = max(len("file"), *(len(label) for label, _ in rows))
    lines = [f"{metric}: final = mean over seeds of each seed's last {last} numeric value(s); "
             f"95% bootstrap CI over seeds",
             f"{'file':<{width}}  {'seeds':>5}  {'final':>12}  {'iqm':>12}  {'ci_low':>12}  {'ci_high':>12}"]
    for label, stats in rows:
        lines.append(f"{label:<{width}}  {stats['seeds']:>5d}  {stats['final']:>12.6g}  {stats['iqm']:>12.6g}  "
                     f"{stats['ci_low']:>12.6g}  {stats['ci_high']:>12.6g}")
    return "\n".join(lines)


def plot(all_curves: Sequence[SeedCurves], metric: str, path: str, window: int, resamples: int,
         title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for curves in all_curves:
        values = smooth(curves.values, window)
        with _quiet_nan_warnings():
            mean = np.nanmean(values, axis=0)
        low, high = bootstrap_mean_ci(values, resamples=resamples)
        seen = ~np.isnan(mean)
        line, = axes.plot(curves.env_steps[seen], mean[seen], label=f"{curves.label} ({len(curves.seeds)} seeds)")
        axes.fill_between(curves.env_steps[seen], low[seen], high[seen], color=line.get_color(), alpha=0.25,
                          linewidth=0)
    axes.set_xlabel("env steps")
    axes.set_ylabel(metric + (f" (moving average, {window} blocks)" if window > 1 else ""))
    axes.set_title(title or f"{metric}: mean across seeds, 95% bootstrap CI")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _labels(paths: Sequence[str]) -> list[str]:
    names = [os.path.basename(path) for path in paths]
    return names if len(set(names)) == len(names) else list(paths)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outputs", nargs="+", metavar="OUTPUT", help="JSON-lines output files of the runner (-o)")
    parser.add_argument("--metric", default="episode_return", help="record field to plot (default: episode_return)")
    parser.add_argument("-o", "--plot", default=None, metavar="PNG", help="image file to write (Agg backend)")
    parser.add_argument("--smooth", type=int, default=1, metavar="N",
                        help="trailing moving-average window in blocks, per seed, for the plot (default 1: none)")
    parser.add_argument("--summary", action="store_true", help="print a table of final mean, IQM and 95%% CI per file")
    parser.add_argument("--last", type=int, default=1, metavar="K",
                        help="summary: average each seed's last K numeric values (default 1)")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="B", help="bootstrap resamples (default 2000)")
    parser.add_argument("--title", default=None, help="plot title")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        if args.plot is None and not args.summary:
            raise UsageError("nothing to do: give -o PNG, --summary, or both.")
        if args.smooth < 1 or args.last < 1 or args.bootstrap < 1:
            raise UsageError("--smooth, --last and --bootstrap must be at least 1.")
        all_curves = [curves for path, label in zip(args.outputs, _labels(args.outputs))
                      for curves in variant_curves(read_records(path), args.metric, label, len(args.outputs) == 1)]
        swept = len(all_curves) > len(args.outputs)
        if args.plot is not None:
            plot(all_curves, args.metric, args.plot, args.smooth, args.bootstrap, args.title)
        if args.summary:
            rows = [(curves.label, summarize(curves, args.last, resamples=args.bootstrap))
                    for curves in all_curves]
            if swept:  # rank the variants
                rows.sort(key=lambda row: -row[1]["final"])
            print(format_summary(rows, args.metric, args.last))
    except UsageError as error:
        print(f"plot_metric.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
