"""The gymnax family: any registered gymnax id with a discrete or bounded Box action space, stepped inside the
compiled loop."""

import difflib

import gymnax
import jax
import jax.numpy as jnp
import numpy as np

from envs.protocol import EnvSpec, check_action_space, to_bounds
from experiment.config import ConfigError


class GymnaxEnvironment:
    """A registered gymnax environment with its default parameters (gymnax 1.x already auto-resets)."""

    def __init__(self, env_name: str):
        if env_name not in gymnax.registered_envs:
            raise ConfigError(_unknown_gymnax_id_message(env_name))
        self._env, self._params = gymnax.make(env_name)
        action_space = self._env.action_space(self._params)
        num_actions, continuous, self._low, self._high = check_action_space(action_space, env_name)
        # The observation space's declared dtype is not always what reset returns (Catch declares int32 and
        # returns float32), so the spec is read from reset itself, traced abstractly at no cost.
        obs = jax.eval_shape(self.reset, jax.random.key(0))[1]
        self.spec = EnvSpec(tuple(obs.shape), np.dtype(obs.dtype), num_actions, continuous)

    def reset(self, key):
        obs, env_state = self._env.reset(key, self._params)
        return env_state, obs

    def step(self, key, env_state, action):
        if self.spec.continuous:  # [A] in [-1, 1] -> the Box's shape and bounds
            action = to_bounds(action.reshape(self._low.shape), self._low, self._high)
        obs, env_state, reward, terminated, truncated, _ = self._env.step(key, env_state, action, self._params)
        return (env_state, obs, jnp.asarray(reward, jnp.float32), jnp.asarray(terminated, bool),
                jnp.asarray(truncated, bool))


def _unknown_gymnax_id_message(env_name: str) -> str:
    closest = difflib.get_close_matches(env_name, gymnax.registered_envs, n=1, cutoff=0.4)
    suggestion = f" (did you mean '{closest[0]}'?)" if closest else ""
    return (f"env_name '{env_name}' is not a registered gymnax environment{suggestion}; list the valid ids with "
            f"python -c \"import gymnax; print(gymnax.registered_envs)\"")
