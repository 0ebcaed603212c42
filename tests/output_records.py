"""Reading a run's output file for comparisons: every field but the timing one."""

import json


def records_without_timing(path):
    """The JSON-lines records of `path`, each without `steps_per_second` (which differs from run to run)."""
    lines = [json.loads(line) for line in open(path)]
    for line in lines:
        line.pop("steps_per_second")
    return lines


# The same run in programs of another shape (more seeds or sweep variants side by side, another device or
# process count) is bit-identical on the Intel Xeon these comparisons were written on. On an AMD EPYC, XLA:CPU
# rounds the same per-run computation differently in the larger program: the world model's loss reductions
# differ in the 7th digit from the first update on, then the return scale, a leaf of the run state (also at
# f1b95ab, before the files moved). Such comparisons hold integer fields exactly and float fields to this
# relative tolerance.
FLOAT_RTOL = 1e-4


def assert_same_run_records(actual: list[dict], expected: list[dict]) -> None:
    """Records of one run computed in two programs: the same fields, integers equal, floats to FLOAT_RTOL."""
    import numpy as np

    assert [sorted(r) for r in actual] == [sorted(r) for r in expected]
    for a, e in zip(actual, expected):
        for name, value in e.items():
            if isinstance(value, float) and a[name] is not None:
                np.testing.assert_allclose(a[name], value, rtol=FLOAT_RTOL, atol=1e-6, err_msg=name)
            else:
                assert a[name] == value, name
