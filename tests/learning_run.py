"""Run by tests/test_learning.py in a process of its own: `python3 learning_run.py CONFIG [KEY=VALUE ...]` runs
the config (with those overrides) from seed 0 through experiment.runner.run and prints each seed's episode
returns as one JSON list of lists. The learning runs are long, so the test starts them compiling every program
as the scripts do, at their LLVM level (the suite's own processes compile for speed of compiling,
tests/conftest.py): a run's float rounding, and with it the run, is the one the thresholds were set on."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from environments import environment_from_config  # noqa: E402
from experiment.config import load_config  # noqa: E402
from experiment.runner import run  # noqa: E402


def main(config_path, *overrides):
    config = load_config(config_path, list(overrides))
    result = run(config, environment_from_config(config), seed=0, output=None, progress=False, diagnostics=False)
    print(json.dumps([[float(r) for r in returns] for returns in result["returns"]]))


if __name__ == "__main__":
    main(*sys.argv[1:])
