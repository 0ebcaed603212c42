"""The environment registry: picks the family named by `config.environment` and builds it, and gives the loop
all seeds' environments at once. The families live in envs/, each over the protocol in envs/protocol.py:

| environment | module | stepped |
| --- | --- | --- |
| gymnax_env | envs/gymnax_envs.py | inside the compiled loop |
| brax_env | envs/brax_envs.py (optional install) | inside the compiled loop |
| craftax_env | envs/craftax_envs.py (optional install) | inside the compiled loop |
| open_grid_env | envs/grid_world.py | inside the compiled loop |
| atari_env | envs/atari_envs.py (optional install) | one envpool pool of all seeds' games, in or out of the loop |
| gymnasium_env, gym_env | envs/gym_envs.py | on the host, one object per seed |
| dmc_env | envs/dmc_envs.py (optional install) | on the host, one object per seed |
"""

from typing import Sequence

import jax

from envs.batched import JaxAsPythonEnvironment, PythonEnvironments, VmappedEnvironments
from envs.grid_world import make_open_grid
from envs.gym_envs import PYTHON_FAMILIES, PythonEnvironmentFamily
from envs.gymnax_envs import GymnaxEnvironment
from experiment.config import JAX_FAMILY_KEYS, ConfigError


def _make_brax(env_name: str, **env_kwargs):
    from envs.brax_envs import BraxEnvironment  # brax itself is imported only when asked for
    return BraxEnvironment(env_name, **env_kwargs)


def _make_craftax(env_name: str):
    from envs.craftax_envs import CraftaxEnvironment  # imports the optional craftax package, if installed
    return CraftaxEnvironment(env_name)


def _make_atari(env_name: str, **settings):
    from envs.atari_envs import AtariEnvironment  # imports the optional envpool package, if installed
    return AtariEnvironment(env_name, **settings)


def _make_dmc(env_name: str, **settings):
    from envs.dmc_envs import DmcEnvironment  # imports the optional dm_control package, if installed
    return DmcEnvironment(env_name, **settings)


_FAMILIES = {"gymnax_env": GymnaxEnvironment, "open_grid_env": make_open_grid, "brax_env": _make_brax,
             "craftax_env": _make_craftax}
_POOL_FAMILIES = {"atari_env": _make_atari}  # they check their env_config keys themselves
_KEYED_PYTHON_FAMILIES = {"dmc_env": _make_dmc}  # one object per seed; they check their env_config keys themselves


def make_environment(environment: str, env_name: str, env_kwargs: dict | None = None):
    """Builds the environment named by config.environment and config.env_config (env_name plus, for
    gymnasium and gym, extra keyword arguments for `make`). JAX families return a JaxEnvironment; gymnasium
    and gym return a PythonEnvironmentFamily that creates one instance per seed.

    Raises ConfigError, with one sentence, for an unknown family or name, extra keys a JAX family does not
    take, or an action or observation space the agent cannot use.
    """
    env_kwargs = dict(env_kwargs or {})
    if environment in PYTHON_FAMILIES:
        return PythonEnvironmentFamily(environment, env_name, env_kwargs)
    if environment in _POOL_FAMILIES:
        return _POOL_FAMILIES[environment](env_name, **env_kwargs)
    if environment in _KEYED_PYTHON_FAMILIES:
        return _KEYED_PYTHON_FAMILIES[environment](env_name, **env_kwargs)
    if environment not in _FAMILIES:
        valid = ", ".join(f"'{name}'" for name in [*_FAMILIES, *_POOL_FAMILIES, *PYTHON_FAMILIES,
                                                   *_KEYED_PYTHON_FAMILIES])
        raise ConfigError(f"unknown environment '{environment}', choose one of {valid}")
    extra = sorted(set(env_kwargs) - set(JAX_FAMILY_KEYS.get(environment, ())))
    if extra:
        raise ConfigError(f"environment {environment} takes only env_config.env_name"
                          f"{''.join(', ' + key for key in JAX_FAMILY_KEYS.get(environment, ()))}, got the extra "
                          f"key(s) {', '.join(extra)} (extra keys are passed to make by gymnasium_env and gym_env)")
    return _FAMILIES[environment](env_name, **env_kwargs)


def environment_from_config(config):
    """make_environment for a Config."""
    return make_environment(config.environment, config.env_config.env_name, config.env_config.make_kwargs)


def seed_environments(env, seeds: Sequence[int], jax_env: bool, placement=None):
    """The loop's environments for these seeds: the JAX env vmapped (jax_env), else one Python object per
    seed (gymnasium/gym instances seeded from their seed, or the JAX env wrapped as a Python object). With a
    `placement` of several processes (devices.Placement), `seeds` are this process's runs'. A pool family
    (atari_env) gives one pool of all seeds' games, stepped inside the compiled loop (jax_env) or from Python."""
    if getattr(env, "is_pool", False):
        return env.pool(seeds, compiled=jax_env, placement=placement)
    if jax_env:
        return VmappedEnvironments(env)
    hooks = (placement.local, placement.put) if placement is not None and placement.process_count > 1 else ()
    if getattr(env, "is_python", False):
        return PythonEnvironments([env.instance(int(seed)) for seed in seeds], *hooks)
    reset, step = jax.jit(env.reset), jax.jit(env.step)
    return PythonEnvironments([JaxAsPythonEnvironment(env.spec, reset, step) for _ in seeds], *hooks)
