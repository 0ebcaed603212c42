"""Learning tests: the quickstart agent learns Catch (random scores about -0.6), and the CartPole agent learns
gymnasium CartPole-v1 through the Python path (random scores about 22), far above a random policy; the DreamerV3
small preset, unchanged but for the environment, learns two different tasks: Catch (discrete actions, 0/1 frames)
and gymnax Pendulum-v1 (continuous actions, real-valued observations)."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def episode_returns(config: str, *overrides: str) -> list[list[float]]:
    """Each seed's episode returns of the config's run from seed 0, in a process of its own whose programs are
    all compiled as the scripts compile them, at LLVM level 1, as when these thresholds were set (the rest of the
    suite compiles for speed of compiling, tests/conftest.py: slower to run, and rounded differently, which makes
    these long runs different runs)."""
    flags = os.environ.get("DREAMER_TEST_USER_XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
        flags = f"{flags} --xla_backend_optimization_level=1".strip()
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "learning_run.py"), config, *overrides],
                          cwd=ROOT, env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_quickstart_agent_learns_catch():
    # The README's quickstart as it is: seeds 0 and 1 vmapped in one program, 20,000 env steps. Catch is solved
    # at 1.0 (every ball caught); random play scores about -0.6 over 50 episodes (standard error 0.11).
    seeds = episode_returns("configs/quickstart.json")
    first = [np.mean(returns[:50]) for returns in seeds]
    last = [np.mean(returns[-50:]) for returns in seeds]
    assert len(last) == 2 and max(first) < 0.0  # each seed starts out no better than random...
    assert min(last) >= 0.8, last  # ...and each catches at least 90% of the balls over its last 50 episodes


def test_cartpole_agent_learns_through_gymnasium():
    # The Python path: gymnasium CartPole-v1 objects stepped between the agent's jitted pieces. A random
    # policy scores about 22; seed 0 of this config averages about 210 over its last 20 episodes by 6,000 env
    # steps (113 by 4,000 steps, too close to the bar to run fewer).
    returns = episode_returns("configs/cartpole.json")[0]
    assert np.mean(returns[:20]) < 40
    assert np.mean(returns[-20:]) >= 100


def test_dreamerv3_small_preset_learns_catch():
    # The DreamerV3 small preset as it is (Catch, 12,000 env steps), seed 0 alone: seeds 0-3 end at 1.00, 0.96,
    # 1.00, 1.00 over their last 50 episodes (bench/results.md, Learning per task). Random play scores about -0.6.
    returns = np.asarray(episode_returns("configs/dreamerv3_small.json", "num_seeds=1")[0], float)
    assert np.mean(returns[:50]) < 0.0
    assert np.mean(returns[-50:]) >= 0.8, np.mean(returns[-50:])


def test_dreamerv3_small_preset_learns_pendulum():
    # The same preset with only the environment changed: gymnax Pendulum-v1, continuous actions (DreamerV3's
    # bounded normal with the dynamics gradient) and real-valued observations (binary_state false, which
    # describes the environment). Random play scores about -1,200. Seed 0, the seed that the truncated normal
    # left at -876: each of 4 seeds is at -146 to -238 per 1,000-step block by 4,000-5,000 env steps
    # (docs/continuous_actions.md).
    returns = np.asarray(episode_returns("configs/dreamerv3_small.json", "env_config.env_name=Pendulum-v1",
                                         "binary_state=false", "num_seeds=1", "num_steps=5000")[0], float)
    assert len(returns) == 25  # episodes of 200 steps
    assert np.mean(returns[:5]) < -900  # the first 1,000 steps are random play
    assert np.mean(returns[-10:]) >= -400, np.mean(returns[-10:])
