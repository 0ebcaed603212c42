"""Learning tests: the quickstart agent learns Catch (random scores about -0.6), and the CartPole agent learns
gymnasium CartPole-v1 through the Python path (random scores about 22), far above a random policy."""

import dataclasses

import numpy as np

from config import load_config
from environments import environment_from_config
from experiment import run


def test_quickstart_agent_learns_catch():
    # The README's quickstart (seeds 0 and 1 vmapped in one program) for the first 12,000 of its 20,000 env
    # steps: the same twelve 1,000-step blocks of the same compiled program, so the same numbers up to there.
    config = dataclasses.replace(load_config("configs/quickstart.json"), num_steps=12_000)
    env = environment_from_config(config)
    result = run(config, env, seed=0, output=None, progress=False, diagnostics=False)
    first = [np.mean(returns[:50]) for returns in result["returns"]]
    last = [np.mean(returns[-50:]) for returns in result["returns"]]
    assert len(last) == 2 and max(first) < 0.0  # each seed starts out no better than random...
    # ...and each ends up well above random play (last 50 episodes: about -0.6, standard error 0.11). Measured
    # at 12,000 steps over twelve seed-runs (this run at 440f04d and after the update's noise was drawn outside
    # its scans, a change of random streams; a 4-seed run before and after that): nine held 0.5-1.0; three sat at 0.1
    # (catching about 55% of the balls), a plateau that rises to about 0.36 by 20,000 steps. Which seeds sit
    # there changes with any change of random streams: this run gave 0.52 and 0.72 before, 0.08 and 0.64 after.
    # So: every seed at least -0.2, and a mean over the two seeds of at least 0.2, clear margins over random
    # that a plateaued seed does not break.
    assert min(last) >= -0.2 and np.mean(last) >= 0.2


def test_cartpole_agent_learns_through_gymnasium():
    # The Python path: gymnasium CartPole-v1 objects stepped between the agent's jitted pieces. A random
    # policy scores about 22; seed 0 of this config averages about 210 over its last 20 episodes by 6,000 env
    # steps (113 by 4,000 steps, too close to the bar to run fewer).
    config = load_config("configs/cartpole.json")
    result = run(config, environment_from_config(config), seed=0, output=None, progress=False, diagnostics=False)
    returns = result["returns"][0]
    assert np.mean(returns[:20]) < 40
    assert np.mean(returns[-20:]) >= 100
