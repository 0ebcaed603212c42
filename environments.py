"""The environment protocol the agent-environment loop uses, and its adapters: gymnax and an example grid world.
Every environment here is pure JAX: reset and step are functions of their arguments, so they jit and vmap."""

import difflib
from typing import Any, NamedTuple, Protocol

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces

from config import ConfigError


class EnvSpec(NamedTuple):
    """What the agent needs to know to build its networks and replay buffer."""

    obs_shape: tuple[int, ...]  # e.g. (10, 10, 6) for MinAtar, (10, 5) for Catch, (4,) for CartPole
    obs_dtype: np.dtype  # dtype of the observations the environment returns
    num_actions: int  # actions are integers in [0, num_actions)


class JaxEnvironment(Protocol):
    """A pure JAX environment: no Python state changes, so reset and step can be jitted and vmapped.

    step auto-resets: when terminated | truncated, the env_state and obs it returns start a fresh episode,
    while reward, terminated and truncated describe the transition that just ended. reward is a float32
    scalar, terminated and truncated are bool scalars. Terminated means the episode truly ended (no
    bootstrapping); truncated means it was cut off by a time limit (bootstrap from the value).
    """

    spec: EnvSpec

    def reset(self, key: jax.Array) -> tuple[Any, jax.Array]:
        """Returns (env_state, obs) of a new episode."""

    def step(self, key: jax.Array, env_state: Any, action: jax.Array) -> tuple[Any, jax.Array, ...]:
        """Returns (env_state, obs, reward, terminated, truncated)."""


class GymnaxEnvironment:
    """A registered gymnax environment with its default parameters (gymnax 1.x already auto-resets)."""

    def __init__(self, env_name: str):
        if env_name not in gymnax.registered_envs:
            raise ConfigError(_unknown_gymnax_id_message(env_name))
        self._env, self._params = gymnax.make(env_name)
        action_space = self._env.action_space(self._params)
        if not isinstance(action_space, spaces.Discrete):
            shape = getattr(action_space, "shape", None)
            raise ConfigError(f"gymnax environment '{env_name}' has a {type(action_space).__name__} action space "
                              f"of shape {shape}, but only discrete action spaces are supported")
        # The observation space's declared dtype is not always what reset returns (Catch declares int32 and
        # returns float32), so the spec is read from reset itself, traced abstractly at no cost.
        obs = jax.eval_shape(self.reset, jax.random.key(0))[1]
        self.spec = EnvSpec(tuple(obs.shape), np.dtype(obs.dtype), int(action_space.n))

    def reset(self, key):
        obs, env_state = self._env.reset(key, self._params)
        return env_state, obs

    def step(self, key, env_state, action):
        obs, env_state, reward, terminated, truncated, _ = self._env.step(key, env_state, action, self._params)
        return (env_state, obs, jnp.asarray(reward, jnp.float32), jnp.asarray(terminated, bool),
                jnp.asarray(truncated, bool))


def _unknown_gymnax_id_message(env_name: str) -> str:
    closest = difflib.get_close_matches(env_name, gymnax.registered_envs, n=1, cutoff=0.4)
    suggestion = f" (did you mean '{closest[0]}'?)" if closest else ""
    return (f"env_name '{env_name}' is not a registered gymnax environment{suggestion}; list the valid ids with "
            f"python -c \"import gymnax; print(gymnax.registered_envs)\"")


class OpenGridState(NamedTuple):
    position: jax.Array  # [2] int32: the agent's (row, column)
    time: jax.Array  # [] int32: steps taken in this episode


class OpenGridEnvironment:
    """An example of a hand-written JAX environment; copy it to add your own.

    The agent walks on an open 7x7 grid from a random cell to a goal in the bottom-right corner. Actions
    0-3 move up, right, down, left (walls stop it). Reaching the goal gives reward 1 and terminates the
    episode; after 50 steps without reaching it the episode is truncated. The observation is a binary
    image [7, 7, 2]: channel 0 marks the agent, channel 1 the goal.
    """

    size = 7
    max_steps = 50
    goal = (size - 1, size - 1)
    moves = ((-1, 0), (0, 1), (1, 0), (0, -1))  # (d_row, d_column) per action

    def __init__(self):
        self.spec = EnvSpec((self.size, self.size, 2), np.dtype(np.float32), num_actions=len(self.moves))

    def reset(self, key):
        # Draw one of the cells before the goal in row-major order: the goal is the last cell.
        cell = jax.random.randint(key, (), 0, self.size * self.size - 1)
        env_state = OpenGridState(position=jnp.stack([cell // self.size, cell % self.size]),
                                  time=jnp.zeros((), jnp.int32))
        return env_state, self._observe(env_state)

    def step(self, key, env_state, action):
        position = jnp.clip(env_state.position + jnp.array(self.moves)[action], 0, self.size - 1)
        moved = OpenGridState(position=position, time=env_state.time + 1)
        terminated = jnp.all(position == jnp.array(self.goal))
        truncated = (moved.time >= self.max_steps) & ~terminated
        reward = terminated.astype(jnp.float32)

        # Auto-reset, as gymnax does: both branches are computed and one is selected, which keeps it vmappable.
        reset_state, _ = self.reset(key)
        done = terminated | truncated
        env_state = jax.tree.map(lambda fresh, old: jnp.where(done, fresh, old), reset_state, moved)
        return env_state, self._observe(env_state), reward, terminated, truncated

    def _observe(self, env_state):
        obs = jnp.zeros(self.spec.obs_shape, jnp.float32)  # [H, W, 2]
        obs = obs.at[env_state.position[0], env_state.position[1], 0].set(1.0)
        return obs.at[self.goal[0], self.goal[1], 1].set(1.0)


def _make_open_grid(env_name: str) -> OpenGridEnvironment:
    if env_name != "OpenGrid":
        raise ConfigError(f"environment open_grid_env has only the env_name 'OpenGrid', got '{env_name}'")
    return OpenGridEnvironment()


_FAMILIES = {"gymnax_env": GymnaxEnvironment, "open_grid_env": _make_open_grid}


def make_environment(environment: str, env_name: str) -> JaxEnvironment:
    """Builds the environment named by config.environment and config.env_config.env_name.

    Raises ConfigError, with one sentence, for an unknown family or name or a non-discrete action space.
    """
    if environment not in _FAMILIES:
        valid = ", ".join(f"'{name}'" for name in _FAMILIES)
        raise ConfigError(f"unknown environment '{environment}', choose one of {valid}")
    return _FAMILIES[environment](env_name)
