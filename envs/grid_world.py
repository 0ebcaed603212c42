"""The example grid world (environment open_grid_env): a hand-written JAX environment to copy when adding one."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs.protocol import EnvSpec, auto_reset
from experiment.config import ConfigError


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

        reset_state, _ = self.reset(key)
        env_state = auto_reset(terminated | truncated, reset_state, moved)
        return env_state, self._observe(env_state), reward, terminated, truncated

    def _observe(self, env_state):
        obs = jnp.zeros(self.spec.obs_shape, jnp.float32)  # [H, W, 2]
        obs = obs.at[env_state.position[0], env_state.position[1], 0].set(1.0)
        return obs.at[self.goal[0], self.goal[1], 1].set(1.0)


def make_open_grid(env_name: str) -> OpenGridEnvironment:
    if env_name != "OpenGrid":
        raise ConfigError(f"environment open_grid_env has only the env_name 'OpenGrid', got '{env_name}'")
    return OpenGridEnvironment()
