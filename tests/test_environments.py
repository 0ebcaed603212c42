"""Tests of the environment protocol: specs, jit/vmap, auto-reset, truncation and the one-sentence errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from environments import make_environment
from envs.grid_world import OpenGridEnvironment
from envs.protocol import EnvSpec
from experiment.config import ConfigError

UP, RIGHT, DOWN = 0, 1, 2


@pytest.mark.parametrize("env_name, spec", [
    ("Catch-bsuite", EnvSpec((10, 5), np.dtype(np.float32), 3)),
    ("SpaceInvaders-MinAtar", EnvSpec((10, 10, 6), np.dtype(np.float32), 4)),
    ("CartPole-v1", EnvSpec((4,), np.dtype(np.float32), 2)),
])
def test_gymnax_spec_matches_what_reset_and_step_return(env_name, spec):
    env = make_environment("gymnax_env", env_name)
    assert env.spec == spec
    env_state, obs = jax.jit(env.reset)(jax.random.key(0))
    env_state, obs, reward, terminated, truncated = jax.jit(env.step)(jax.random.key(1), env_state, 0)
    assert obs.shape == spec.obs_shape and obs.dtype == spec.obs_dtype
    assert reward.shape == () and reward.dtype == jnp.float32
    assert terminated.shape == () and terminated.dtype == bool
    assert truncated.shape == () and truncated.dtype == bool


def test_minatar_observations_are_binary():
    env = make_environment("gymnax_env", "SpaceInvaders-MinAtar")
    _, obs = env.reset(jax.random.key(0))
    assert set(np.unique(np.asarray(obs))) <= {0.0, 1.0}


@pytest.mark.parametrize("environment, env_name", [("gymnax_env", "Catch-bsuite"), ("open_grid_env", "OpenGrid")])
def test_reset_and_step_vmap_over_keys(environment, env_name):
    env = make_environment(environment, env_name)
    keys = jax.random.split(jax.random.key(0), 8)
    env_states, obs = jax.jit(jax.vmap(env.reset))(keys)
    assert obs.shape == (8, *env.spec.obs_shape)
    actions = jnp.arange(8) % env.spec.num_actions
    _, obs, reward, terminated, truncated = jax.jit(jax.vmap(env.step))(keys, env_states, actions)
    assert obs.shape == (8, *env.spec.obs_shape)
    assert reward.shape == terminated.shape == truncated.shape == (8,)


def rollout(env, policy, num_steps, keys):
    """Runs policy(env_state, key) -> action from reset, one episode stream per key, under jit, vmap and
    lax.scan; returns (reward, terminated, truncated), each [num_keys, num_steps]."""
    def step(carry, key):
        env_state, obs = carry
        action_key, step_key = jax.random.split(key)
        env_state, obs, reward, terminated, truncated = env.step(step_key, env_state, policy(env_state, action_key))
        return (env_state, obs), (reward, terminated, truncated)

    def run(key):
        reset_key, steps_key = jax.random.split(key)
        return jax.lax.scan(step, env.reset(reset_key), jax.random.split(steps_key, num_steps))[1]

    return jax.tree.map(np.asarray, jax.jit(jax.vmap(run))(keys))


def test_catch_auto_resets_every_nine_steps():
    env = make_environment("gymnax_env", "Catch-bsuite")
    random_policy = lambda env_state, key: jax.random.randint(key, (), 0, env.spec.num_actions)
    reward, terminated, truncated = rollout(env, random_policy, 30, jax.random.split(jax.random.key(0), 4))
    for seed in range(4):
        np.testing.assert_array_equal(np.flatnonzero(terminated[seed]) + 1, [9, 18, 27])
    assert set(reward[terminated]) <= {-1.0, 1.0}
    assert np.all(reward[~terminated] == 0.0) and not truncated.any()


def test_cartpole_time_limit_is_truncation_not_termination():
    env = make_environment("gymnax_env", "CartPole-v1")
    env_state, _ = env.reset(jax.random.key(0))
    last_step_state = env_state.replace(time=499)  # the pole starts upright, so only the time limit ends it
    env_state, _, _, terminated, truncated = env.step(jax.random.key(1), last_step_state, 0)
    assert truncated and not terminated
    assert env_state.time == 0  # auto-reset


def test_open_grid_walking_away_from_the_goal_is_truncated_at_step_50():
    env = make_environment("open_grid_env", "OpenGrid")
    always_up = lambda env_state, key: UP  # the goal is in the bottom row, so this never reaches it
    reward, terminated, truncated = rollout(env, always_up, 60, jax.random.split(jax.random.key(0), 8))
    for seed in range(8):
        np.testing.assert_array_equal(np.flatnonzero(truncated[seed]) + 1, [50])
    assert not terminated.any() and np.all(reward == 0.0)


def test_open_grid_walking_to_the_goal_terminates_with_reward_one():
    env = make_environment("open_grid_env", "OpenGrid")
    goal_row, goal_column = OpenGridEnvironment.goal
    toward_goal = lambda env_state, key: jnp.where(env_state.position[0] < goal_row, DOWN, RIGHT)
    keys = jax.random.split(jax.random.key(0), 8)
    reward, terminated, truncated = rollout(env, toward_goal, 12, keys)
    first_episode_keys = jax.vmap(lambda key: jax.random.split(key)[0])(keys)  # as rollout splits them
    starts = np.asarray(jax.vmap(env.reset)(first_episode_keys)[0].position)  # [8, 2]
    for seed, (start_row, start_column) in enumerate(starts):
        distance = goal_row - start_row + goal_column - start_column
        first_end = np.flatnonzero(terminated[seed])[0] + 1
        assert first_end == distance and reward[seed, first_end - 1] == 1.0
        assert np.all(reward[seed, :first_end - 1] == 0.0)
    assert not truncated.any()


def test_open_grid_observation_marks_agent_and_goal():
    env = make_environment("open_grid_env", "OpenGrid")
    env_state, obs = env.reset(jax.random.key(3))
    assert obs.sum() == 2.0
    assert obs[env_state.position[0], env_state.position[1], 0] == 1.0
    assert obs[OpenGridEnvironment.goal + (1,)] == 1.0


@pytest.mark.parametrize("environment, env_name, expected", [
    ("mujoco_env", "Pong", ["'mujoco_env'", "'gymnax_env'", "'atari_env'"]),
    ("gymnax_env", "Breakout", ["'Breakout'", "not a registered gymnax environment", "'Breakout-MinAtar'",
                                "gymnax.registered_envs"]),
    ("open_grid_env", "ClosedGrid", ["'ClosedGrid'", "'OpenGrid'"]),
])
def test_configuration_mistakes_raise_one_line_config_error(environment, env_name, expected, capsys):
    with pytest.raises(ConfigError) as error:
        make_environment(environment, env_name)
    message = str(error.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message
    assert capsys.readouterr() == ("", "")  # gymnax printed nothing
