"""Environments stepped in Python (gymnasium, legacy gym, a JAX env wrapped as an object) through the same
block function under the Python drivers: parity with the jitted loop, one compilation per piece, seeds,
truncation, observation conversion and the one-sentence refusals."""

import dataclasses
import json

import gymnasium
import jax
import numpy as np
import pytest

from agent_environment_interaction_loop import PYTHON_DRIVERS, make_block_function, python_cond, python_scan
from environments import environment_from_config, make_environment, seed_environments
from envs.batched import PythonEnvironments
from experiment.cli import script_main as main
from experiment.config import ConfigError, load_config
from experiment.runner import initial_state, run
from initialization import make_agent


@pytest.fixture(scope="module")
def debug_config():
    return load_config("configs/debug.json")


def _records(path):
    with open(path) as file:
        return [json.loads(line) for line in file]


def test_python_drivers_have_the_lax_signatures():
    carry, ys = python_scan(lambda c, x: (c + x, c * x), 1, np.arange(4))
    assert carry == 7 and list(ys) == [0, 1, 4, 12]
    carry, ys = python_scan(lambda c, _: (c + 1, {"c": c}), 0, None, length=3)
    assert carry == 3 and list(ys["c"]) == [0, 1, 2]
    assert python_cond(np.bool_(True), lambda a, b: a + b, lambda a, b: a - b, 5, 2) == 7
    assert python_cond(False, lambda a, b: a + b, lambda a, b: a - b, 5, 2) == 3


def test_jax_env_through_python_drivers_matches_the_jitted_loop(debug_config, tmp_path):
    # The gymnax env wrapped as a Python object, stepped by the Python drivers, with training (10 updates).
    results = {}
    for jax_env in (True, False):
        config = dataclasses.replace(debug_config, jax_env=jax_env)
        output = tmp_path / f"jax_env_{jax_env}.out"
        results[jax_env] = run(config, environment_from_config(config), seed=3, output=str(output), progress=False,
                               diagnostics=False)
        results[jax_env]["records"] = _records(output)
    jitted, python = results[True], results[False]
    assert len(jitted["returns"][0]) > 10
    assert python["returns"] == jitted["returns"]
    losses = [name for name in jitted["records"][-1] if name.endswith("loss")]
    assert len(losses) >= 5 and int(python["state"].updates[0]) == 10
    for python_record, jitted_record in zip(python["records"], jitted["records"], strict=True):
        for name in losses:
            if jitted_record[name] is not None:
                np.testing.assert_allclose(python_record[name], jitted_record[name], rtol=1e-4, atol=1e-5)
    for python_leaf, jitted_leaf in zip(jax.tree.leaves(python["state"].params),
                                        jax.tree.leaves(jitted["state"].params), strict=True):
        np.testing.assert_allclose(python_leaf, jitted_leaf, rtol=1e-4, atol=1e-5)


def test_python_pieces_compile_once(debug_config):
    config = dataclasses.replace(debug_config, num_seeds=2, jax_env=False)
    env = environment_from_config(config)
    agent = make_agent(config, env)
    envs = seed_environments(env, [0, 1], config.jax_env)
    state = initial_state(config, agent, envs, seed=0)
    block = make_block_function(config, agent, envs, config.training_start_time, PYTHON_DRIVERS)
    state, _ = block(state, config.training_start_time + config.train_frequency)  # acting, then a first update
    sizes = {name: piece._cache_size() for name, piece in block.pieces.items()}
    assert int(state.updates[0]) == 1 and all(size == 1 for size in sizes.values()), sizes
    state, metrics = block(state, 30)
    assert int(state.updates[0]) == 4 and np.asarray(metrics.trained).sum() == 3
    assert {name: piece._cache_size() for name, piece in block.pieces.items()} == sizes


SMALL = ["num_hidden_units=32", "num_hidden_layers=1", "num_features=4", "feature_width=4", "batch_size=4",
         "sequence_length=8", "rollout_length=4"]  # the debug config's sizes: quick to compile


def _cartpole_config(**changes):
    config = load_config("configs/cartpole.json", ["num_steps=300", "training_start_time=300"] + SMALL)
    return dataclasses.replace(config, **changes)


def test_gymnasium_multiseed_seeds_differ_and_match_single_seed_runs():
    acting = _cartpole_config()
    multi = run(dataclasses.replace(acting, num_seeds=2), environment_from_config(acting), seed=7, output=None,
                progress=False)
    single = run(acting, environment_from_config(acting), seed=8, output=None, progress=False)
    assert len(single["returns"][0]) > 5
    assert multi["returns"][1] == single["returns"][0]
    assert multi["returns"][0] != multi["returns"][1]
    np.testing.assert_array_equal(multi["state"].obs[1], single["state"].obs[0])
    for multi_leaf, single_leaf in zip(jax.tree.leaves(multi["state"].params), jax.tree.leaves(single["state"].params)):
        np.testing.assert_array_equal(multi_leaf[1], single_leaf[0])


def test_same_seed_same_numbers_on_gymnasium():
    config = _cartpole_config()
    first = run(config, environment_from_config(config), seed=1, output=None, progress=False)
    second = run(config, environment_from_config(config), seed=1, output=None, progress=False)
    assert first["returns"] == second["returns"]


def test_time_limit_is_truncation_not_termination():
    env = make_environment("gymnasium_env", "CartPole-v1", {"max_episode_steps": 5})
    instance = env.instance(0)
    instance.reset(None)
    steps = [instance.step(None, step % 2) for step in range(5)]  # alternate: the pole stays up for 5 steps
    assert [s[2:] for s in steps] == [(False, False)] * 4 + [(False, True)]
    # auto-reset: the observation after the cut is a fresh episode's first one (small values)
    assert np.all(np.abs(steps[-1][0]) <= 0.05)


def test_gymnasium_termination_is_terminated():
    instance = make_environment("gymnasium_env", "CartPole-v1").instance(0)
    instance.reset(None)
    flags = [instance.step(None, 0)[2:] for _ in range(60)]  # always push left: the pole falls
    assert (True, False) in flags and (False, True) not in flags


def test_minatar_gymnasium_ids_give_binary_frames():
    env = make_environment("gymnasium_env", "MinAtar/SpaceInvaders-v1")
    assert env.spec.obs_shape == (10, 10, 6) and env.spec.obs_dtype == np.dtype(bool) and env.spec.num_actions == 4
    envs = seed_environments(env, [0, 1], jax_env=False)
    _, obs = envs.reset(None)
    assert obs.shape == (2, 10, 10, 6) and obs.dtype == bool
    _, obs, reward, terminated, truncated = envs.step(None, None, np.array([0, 3]))
    assert obs.shape == (2, 10, 10, 6) and reward.dtype == np.float32 and terminated.dtype == bool


def test_minatar_gymnasium_run_stores_packed_frames(tmp_path):
    config = load_config("configs/debug.json", [
        "environment=gymnasium_env", "jax_env=false", "env_config.env_name=MinAtar/Breakout-v1",
        "num_steps=120", "binary_state=true"])
    result = run(config, environment_from_config(config), seed=0, output=None, progress=False)
    assert int(result["state"].updates[0]) == 2
    assert result["state"].replay.obs.dtype == np.uint8 and result["state"].replay.obs.shape[-1] == 50  # 10x10x4 bits


def test_legacy_gym_env_runs():
    config = _cartpole_config(environment="gym_env")
    result = run(config, environment_from_config(config), seed=0, output=None, progress=False)
    assert len(result["returns"][0]) > 5 and int(result["state"].env_steps[0]) == 300


class _GrayscaleEnv(gymnasium.Env):
    """A tiny registered env with an (H, W) uint8 image: the agent sees (H, W, 1)."""

    observation_space = gymnasium.spaces.Box(0, 255, (4, 5), np.uint8)
    action_space = gymnasium.spaces.Discrete(3, start=1)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.integers(0, 256, (4, 5), dtype=np.uint8), {}

    def step(self, action):
        assert action in (1, 2, 3)
        return self.np_random.integers(0, 256, (4, 5), dtype=np.uint8), 1.0, action == 3, False, {}


class _DictObsEnv(_GrayscaleEnv):
    observation_space = gymnasium.spaces.Dict({"x": gymnasium.spaces.Box(0, 1, (2,))})


class _MultiDiscreteEnv(_GrayscaleEnv):
    action_space = gymnasium.spaces.MultiDiscrete([2, 3])


gymnasium.register("TestGrayscale-v0", entry_point=_GrayscaleEnv)
gymnasium.register("TestMultiDiscrete-v0", entry_point=_MultiDiscreteEnv)
gymnasium.register("TestDictObs-v0", entry_point=_DictObsEnv)


def test_observations_are_converted_to_the_spec():
    env = make_environment("gymnasium_env", "TestGrayscale-v0")
    assert env.spec.obs_shape == (4, 5, 1) and env.spec.obs_dtype == np.dtype(np.uint8)
    envs = PythonEnvironments([env.instance(seed) for seed in (0, 1)])
    _, first = envs.reset(None)
    _, obs, reward, terminated, truncated = envs.step(None, None, np.array([1, 2]))  # actions start at 1
    assert first.shape == obs.shape == (2, 4, 5, 1) and not np.array_equal(first[0], first[1])
    assert list(terminated) == [False, True] and list(reward) == [1.0, 1.0]


@pytest.mark.parametrize("args, fragments", [
    (["env_config.env_name=CartPol-v1"], ["'CartPol-v1' is not a registered gymnasium environment",
                                          "did you mean 'CartPole-v1'"]),
    (["env_config.env_name=SpaceInvaders-MinAtar"], ["is a gymnax id", "gymnax_env"]),
    (["env_config.env_name=MinAtar/SpaceInvader-v1"], ["'MinAtar/SpaceInvader-v1' is not a registered gymnasium",
                                                       "did you mean 'MinAtar/SpaceInvaders-v1'"]),
    (["env_config.env_name=TestMultiDiscrete-v0"], ["action space MultiDiscrete", "(MultiDiscrete)",
                                                    "only Discrete and bounded Box action spaces"]),
    (["env_config.env_name=TestDictObs-v0"], ["observation space Dict", "Box of shape (n,)"]),
    (["env_config.colour=red"], ["does not accept the env_config keys colour"]),
    (["environment=gym_env", "env_config.env_name=CartPol-v1"], ["not a registered gym environment"]),
    (["binary_state=true"], ["binary_state is true but CartPole-v1 observations are not all 0 or 1"]),
])
def test_refusals_exit_2_with_one_sentence(args, fragments, capsys, tmp_path):
    argv = ["-c", "configs/cartpole.json", "-o", str(tmp_path / "out"), "--save_checkpoint", "", "--wandb",
            "disabled"] + [a for arg in args for a in ("--set", arg)]
    assert main(argv, "test", single_seed=True) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "out").exists()


def test_extra_keys_for_a_jax_family_are_refused():
    with pytest.raises(ConfigError, match="takes only env_config.env_name"):
        make_environment("gymnax_env", "Catch-bsuite", {"max_steps": 3})


def test_gymnasium_run_resumes_from_a_checkpoint(tmp_path, capsys):
    ckpt, out = tmp_path / "run.ckpt", tmp_path / "run.out"
    common = ["-c", "configs/cartpole.json", "-o", str(out), "--save_checkpoint", str(ckpt), "--wandb", "disabled",
              "--no_progress", "--set", "eval_frequency=100", "--set", "training_start_time=100",
              "--set", "train_frequency=20"] + [a for arg in SMALL for a in ("--set", arg)]
    assert main(common + ["--set", "num_steps=200"], "test", single_seed=True) == 0
    assert main(common + ["--set", "num_steps=300", "--load_checkpoint", str(ckpt)], "test", single_seed=True) == 0
    records = _records(out)
    assert [r["env_steps"] for r in records] == [100, 200, 300]
    assert [r["updates"] for r in records] == [0, 5, 10]  # training went on from the checkpoint's state
    assert "resuming from env step 200" in capsys.readouterr().out
