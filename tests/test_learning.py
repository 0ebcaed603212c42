"""Learning test: the quickstart agent learns Catch far above a random policy (random scores about -0.6)."""

import dataclasses

import numpy as np

from config import load_config
from environments import environment_from_config
from experiment import run


def test_quickstart_agent_learns_catch():
    config = dataclasses.replace(load_config("configs/quickstart.json"), num_seeds=1)
    env = environment_from_config(config)
    result = run(config, env, seed=0, output=None, progress=False)
    returns = result["returns"][0]
    assert np.mean(returns[:50]) < 0.0  # it starts out no better than random...
    assert np.mean(returns[-50:]) >= 0.8  # ...and ends up catching nearly every ball
