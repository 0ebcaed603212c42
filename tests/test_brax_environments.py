"""The brax adapter (envs.brax_envs.BraxEnvironment): spec, shapes and dtypes, auto-reset into fresh random
episodes, the time limit as truncation, seeds, the loop's seed i = single-seed run, and the one-sentence errors
(brax not installed, an unknown name, env_config keys). Skipped where brax is not installed, except the tests
that need no brax."""

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from environments import make_environment
from experiment.config import ConfigError, load_config
from experiment.runner import run
from runtime import checkpoint

EPISODE_LENGTH = 10  # short enough that the pole, left alone, is still up at the time limit
STEPS = 3 * EPISODE_LENGTH


@pytest.fixture(scope="module")
def pendulum():
    pytest.importorskip("brax")
    return make_environment("brax_env", "inverted_pendulum", {"episode_length": EPISODE_LENGTH})


@pytest.fixture(scope="module")
def rollout(pendulum):
    """rollout(keys, action) -> (obs, reward, terminated, truncated) of STEPS steps of one constant action from
    reset, one episode stream per key: jitted once, vmapped over keys, scanned over steps."""
    env = pendulum

    def stream(key, action):
        reset_key, steps_key = jax.random.split(key)

        def step(env_state, step_key):
            env_state, obs, reward, terminated, truncated = env.step(step_key, env_state, action)
            return env_state, (obs, reward, terminated, truncated)

        env_state, first_obs = env.reset(reset_key)
        outputs = jax.lax.scan(step, env_state, jax.random.split(steps_key, STEPS))[1]
        return first_obs, outputs

    jitted = jax.jit(jax.vmap(stream, in_axes=(0, None)))
    return lambda keys, action: jax.tree.map(np.asarray, jitted(keys, jnp.asarray(action, jnp.float32)))


def test_spec_shapes_and_dtypes(pendulum, rollout):
    assert pendulum.spec.obs_shape == (4,) and pendulum.spec.obs_dtype == np.float32
    assert pendulum.spec.continuous and pendulum.spec.num_actions == 1 and pendulum.spec.action_shape == (1,)
    first_obs, (obs, reward, terminated, truncated) = rollout(jax.random.split(jax.random.key(0), 2), [0.0])
    assert first_obs.shape == (2, 4) and first_obs.dtype == np.float32
    assert obs.shape == (2, STEPS, 4) and obs.dtype == np.float32
    assert reward.dtype == np.float32 and terminated.dtype == truncated.dtype == bool
    assert reward.shape == terminated.shape == truncated.shape == (2, STEPS)
    np.testing.assert_array_equal(reward, 1.0)  # +1 for every step the pole is up


def test_time_limit_is_truncation_and_each_episode_starts_afresh(rollout):
    first_obs, (obs, _, terminated, truncated) = rollout(jax.random.split(jax.random.key(1), 2), [0.0])
    assert not terminated.any()  # left alone, the pole does not fall within the limit
    ends = np.arange(EPISODE_LENGTH - 1, STEPS, EPISODE_LENGTH)
    for seed in range(2):
        np.testing.assert_array_equal(np.flatnonzero(truncated[seed]), ends)
        starts = np.concatenate([first_obs[seed][None], obs[seed, ends]])  # after a truncation: a new episode
        assert np.all(np.abs(starts) <= 0.01)  # brax's initial state: uniform noise in [-0.01, 0.01]
        assert len({tuple(start) for start in starts}) == len(starts)  # every episode starts elsewhere
        assert np.abs(obs[seed, ends - 1]).max() > 0.01  # ... not where the last one ended
    assert not np.array_equal(obs[0], obs[1])  # two seeds differ


def test_a_fallen_pole_terminates_and_actions_are_clipped_to_one(rollout):
    keys = jax.random.split(jax.random.key(2), 2)
    first_obs, (obs, reward, terminated, truncated) = rollout(keys, [1.0])
    assert terminated.sum(axis=1).min() >= 2  # pushed hard one way, the pole falls before the time limit
    assert not (terminated & truncated).any()
    ends = np.flatnonzero(terminated[0])
    assert np.all(np.diff(np.concatenate([[-1], ends])) < EPISODE_LENGTH)
    assert np.all(np.abs(obs[0, ends]) <= 0.01)  # the next episode starts upright
    clipped = rollout(keys, [5.0])
    for a, b in zip(jax.tree.leaves(clipped), jax.tree.leaves((first_obs, (obs, reward, terminated, truncated)))):
        np.testing.assert_array_equal(a, b)


def test_seed_i_of_multiseed_run_equals_single_seed_run(pendulum, tmp_path):
    config = load_config("configs/debug.json", ["environment=brax_env", "env_config.env_name=inverted_pendulum",
                                                "env_config.episode_length=40", "binary_state=false",
                                                "update_seed_batch=1", "num_steps=150"])
    env = make_environment("brax_env", "inverted_pendulum", {"episode_length": 40})
    multi = run(dataclasses.replace(config, num_seeds=2), env, seed=5, output=None, progress=False)
    single = run(config, env, seed=6, output=None, progress=False)
    assert int(single["state"].updates[0]) > 0 and len(single["returns"][0]) >= 3
    assert multi["returns"][1] == single["returns"][0]
    assert multi["returns"][0] != multi["returns"][1]
    # brax's physics vmapped over two seeds rounds differently from one seed (a few ulp in some inertias), so
    # the states agree to rounding rather than bit for bit, unlike gymnax's (docs/brax.md)
    for (path, multi_leaf), single_leaf in zip(jax.tree_util.tree_flatten_with_path(multi["state"])[0],
                                               jax.tree.leaves(single["state"])):
        np.testing.assert_allclose(multi_leaf[1], single_leaf[0], rtol=1e-4, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    path = str(tmp_path / "run.ckpt")  # brax's state (a dataclass with dicts) goes through a checkpoint
    checkpoint.save(path, single["state"], {})
    loaded, _ = checkpoint.load(path, jax.eval_shape(lambda: single["state"]))
    for loaded_leaf, leaf in zip(jax.tree.leaves(loaded), jax.tree.leaves(single["state"])):
        np.testing.assert_array_equal(loaded_leaf, leaf)


@pytest.mark.parametrize("env_name, fragments", [
    ("inverted_pendulm", ["'inverted_pendulm' is not a brax environment", "did you mean 'inverted_pendulum'?",
                          "halfcheetah", "reacher"]),
    ("swimmer", ["'swimmer' does not run", "choose one of", "ant"]),
])
def test_unknown_names_are_refused_listing_the_valid_ones(pendulum, env_name, fragments):
    with pytest.raises(ConfigError) as error:
        make_environment("brax_env", env_name)
    message = str(error.value)
    assert "\n" not in message and "fast" not in message.split("choose one of")[1]
    for fragment in fragments:
        assert fragment in message


def test_without_brax_installed_the_error_names_the_requirements_file(monkeypatch):
    monkeypatch.setitem(sys.modules, "brax", None)  # import brax now raises ImportError
    with pytest.raises(ConfigError) as error:
        make_environment("brax_env", "inverted_pendulum")
    assert str(error.value) == ("environment brax_env needs the brax package, which is not installed: install it "
                                "with pip install -r requirements-brax.txt")


@pytest.mark.parametrize("override, fragments", [
    ("env_config.max_episode_steps=200", ["unknown config key 'env_config.max_episode_steps'; brax_env takes "
                                          "env_config.episode_length and env_config.action_repeat besides "
                                          "env_config.env_name"]),
    ("env_config.episode_lenght=5", ["unknown config key 'env_config.episode_lenght'; did you mean "
                                     "'env_config.episode_length'? brax_env takes"]),
    ("env_config.episode_length=0", ["env_config.episode_length must be an integer >= 1, got 0"]),
    ("env_config.action_repeat=1.5", ["env_config.action_repeat must be an integer >= 1, got 1.5"]),
])
def test_env_config_keys_brax_does_not_take_are_refused(override, fragments):
    with pytest.raises(ConfigError) as error:
        load_config("configs/debug.json", ["environment=brax_env", "env_config.env_name=inverted_pendulum", override])
    for fragment in fragments:
        assert fragment in str(error.value)


def test_episode_length_and_action_repeat_reach_brax(pendulum):
    config = load_config("configs/debug.json", ["environment=brax_env", "env_config.env_name=inverted_pendulum",
                                                "env_config.episode_length=500", "env_config.action_repeat=2"])
    assert config.env_config.make_kwargs == {"episode_length": 500, "action_repeat": 2}
    env = make_environment(config.environment, config.env_config.env_name, config.env_config.make_kwargs)
    assert (env.episode_length, env.action_repeat) == (500, 2)
    with pytest.raises(ConfigError, match="takes only env_config.env_name, episode_length, action_repeat"):
        make_environment("brax_env", "inverted_pendulum", {"backend": "spring"})
