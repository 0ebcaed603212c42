"""The loop's view of the environments: all seeds' at once, arrays with a leading seed axis. A JAX environment
is vmapped (and compiles into the block); Python environments are one object per seed stepped in a Python loop."""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from envs.protocol import EnvSpec, JaxEnvironment, PythonEnvironment


class JaxAsPythonEnvironment:
    """A JAX environment stepped on the host as a Python object, with the seed's keys: run through the
    Python drivers it gives the numbers of the jitted loop (the parity test), and it is how jax_env false
    runs a JAX environment."""

    def __init__(self, spec: EnvSpec, jitted_reset: Callable, jitted_step: Callable):
        self.spec, self._reset, self._step = spec, jitted_reset, jitted_step  # shared by all seeds: compiled once
        self.env_state = None

    def reseed(self, seed: int):
        """Nothing to do: episodes follow the keys the loop passes, which a resumed run derives afresh."""

    def reset(self, key) -> np.ndarray:
        self.env_state, obs = self._reset(key)
        return np.asarray(obs)

    def step(self, key, action):
        action = jnp.asarray(action, self.spec.action_dtype)
        self.env_state, obs, reward, terminated, truncated = self._step(key, self.env_state, action)
        return np.asarray(obs), float(reward), bool(terminated), bool(truncated)

    def close(self):
        pass


class VmappedEnvironments:
    """A JAX environment vmapped over seeds: traceable, so the whole block compiles."""

    restarts_on_resume = False  # the env state is part of the checkpointed run state

    def __init__(self, env: JaxEnvironment):
        self.spec = env.spec
        self.reset = jax.vmap(env.reset)
        self.step = jax.vmap(env.step)
        self.step_one_seed = env.step  # one seed's state without the seed axis
        statistics = getattr(env, "episode_statistics", None)
        self.episode_statistics = jax.vmap(statistics) if statistics else _no_statistics
        self.episode_statistics_one_seed = statistics or _no_statistics

    def reset_shapes(self, keys):
        return jax.eval_shape(self.reset, keys)

    def close(self):
        pass


def _no_statistics(env_state) -> dict:
    return {}


class PythonEnvironments:
    """One PythonEnvironment per seed, stepped in a Python loop; takes and returns host arrays. The env_state
    the run state holds for them is a placeholder (each env object keeps its own state).

    In a run of several processes the objects are this process's runs' and the loop's arrays hold every
    process's runs: `to_host` takes step's keys and actions to this process's host arrays and `from_host` puts
    its results back (devices.Placement.local and .put); by default both leave the arrays as they are."""

    restarts_on_resume = True  # the objects cannot be checkpointed: each seed starts a new episode

    def __init__(self, envs: Sequence[PythonEnvironment], to_host: Callable = None, from_host: Callable = None):
        self.envs, self.spec = list(envs), envs[0].spec
        self._placeholder = np.zeros(len(self.envs), np.int32)
        self._needs_keys = any(isinstance(env, JaxAsPythonEnvironment) for env in self.envs)
        self._to_host, self._from_host = to_host or (lambda x: x), from_host or (lambda x: x)
        self.episode_statistics = _no_statistics  # a Python environment's episodes report none

    def reseed(self, seeds: Sequence[int]):
        """Seeds each object's next reset (a resumed run's fresh episodes)."""
        for env, seed in zip(self.envs, seeds):
            env.reseed(seed)

    def _keys(self, keys):
        return list(keys) if self._needs_keys else [None] * len(self.envs)

    def reset(self, keys):
        obs = np.stack([env.reset(key) for env, key in zip(self.envs, self._keys(keys))])
        return self._placeholder, obs

    def step(self, keys, env_state, actions):
        keys, actions = self._to_host((keys, actions))
        actions = np.asarray(actions)
        outputs = [env.step(key, action) for env, key, action in zip(self.envs, self._keys(keys), actions)]
        obs, reward, terminated, truncated = zip(*outputs)
        return self._from_host((self._placeholder, np.stack(obs), np.asarray(reward, np.float32),
                                np.asarray(terminated, bool), np.asarray(truncated, bool)))

    def reset_shapes(self, keys):
        spec = self.spec
        return (jax.ShapeDtypeStruct(self._placeholder.shape, np.int32),
                jax.ShapeDtypeStruct((len(self.envs), *spec.obs_shape), spec.obs_dtype))

    def close(self):
        for env in self.envs:
            env.close()
