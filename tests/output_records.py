"""Reading a run's output file for comparisons: every field but the timing one."""

import json


def records_without_timing(path):
    """The JSON-lines records of `path`, each without `steps_per_second` (which differs from run to run)."""
    lines = [json.loads(line) for line in open(path)]
    for line in lines:
        line.pop("steps_per_second")
    return lines
