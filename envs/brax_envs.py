"""brax environments (MuJoCo-style continuous control written in JAX) as JaxEnvironments: reset and step are
pure, so the whole loop compiles and vmaps over seeds as it does for gymnax.

brax is an optional install (requirements-brax.txt) and is imported only when a brax environment is built."""

import contextlib
import difflib
import io
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from envs.protocol import EnvSpec, auto_reset
from experiment.config import ConfigError

REQUIREMENTS = "requirements-brax.txt"

# Registered names that are not offered, and why.
_LEFT_OUT = {
    "fast": "is brax's own unit-test stub, not a control task",
    "swimmer": "does not run with the installed JAX (brax 0.14's fluid forces call jnp.clip with the a_min "
               "argument JAX removed)",
}


def _brax_envs():
    """The brax.envs module, imported quietly (MuJoCo's optional warp backend prints when it is absent)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from brax import envs
    except ImportError:
        raise ConfigError(f"environment brax_env needs the brax package, which is not installed: install it with "
                          f"pip install -r {REQUIREMENTS}") from None
    return envs


def brax_env_names() -> list[str]:
    """The brax environment names brax_env takes."""
    return sorted(name for name in _brax_envs()._envs if name not in _LEFT_OUT)


class BraxEnvironment:
    """A registered brax environment, its time limit `episode_length` counted in physics steps and each action
    repeated for `action_repeat` of them (brax's own EpisodeWrapper, so the limit is brax's).

    Actions are vectors in [-1, 1]^A, brax's convention: environments whose actuators have a wider range
    (inverted_pendulum, humanoid, pusher) scale the action to it themselves, the others' actuators span
    [-1, 1]. The adapter clips the agent's action to [-1, 1] and passes it on.

    Episodes end by termination (brax's `done`, e.g. the pole fell) or at the time limit, which is reported as
    truncation (brax's `info['truncation']`), not termination. The step auto-resets with its own key, so every
    episode starts from its own random state: brax's AutoResetWrapper would restart every episode from the one
    cached first state instead."""

    def __init__(self, env_name: str, episode_length: int = 1000, action_repeat: int = 1):
        envs = _brax_envs()
        if env_name in _LEFT_OUT:
            raise ConfigError(f"brax environment '{env_name}' {_LEFT_OUT[env_name]}; choose one of "
                              f"{', '.join(brax_env_names())}")
        if env_name not in envs._envs:
            names = brax_env_names()
            closest = difflib.get_close_matches(env_name, names, n=1, cutoff=0.4)
            suggestion = f" (did you mean '{closest[0]}'?)" if closest else ""
            raise ConfigError(f"env_name '{env_name}' is not a brax environment{suggestion}; choose one of "
                              f"{', '.join(names)}")
        with warnings.catch_warnings():  # brax warns on every load that its own pipelines are unmaintained
            warnings.filterwarnings("ignore", message="Brax System", category=UserWarning)
            self._env = envs.create(env_name, episode_length=episode_length, action_repeat=action_repeat,
                                    auto_reset=False)
        self.episode_length, self.action_repeat = episode_length, action_repeat
        obs = jax.eval_shape(self.reset, jax.random.key(0))[1]  # traced abstractly: nothing runs
        self.spec = EnvSpec(tuple(obs.shape), np.dtype(np.float32), int(self._env.action_size), continuous=True)

    def reset(self, key):
        env_state = self._env.reset(key)
        return env_state, env_state.obs.astype(jnp.float32)

    def step(self, key, env_state, action):
        stepped = self._env.step(env_state, jnp.clip(action, -1.0, 1.0))  # [A]
        done = stepped.done > 0  # terminated, or at the time limit
        truncated = stepped.info["truncation"] > 0
        terminated = done & ~truncated

        fresh, _ = self.reset(key)
        env_state = auto_reset(done, fresh, stepped)  # keeps the state's dtypes (brax's rewards come weakly typed)
        return (env_state, env_state.obs.astype(jnp.float32), jnp.asarray(stepped.reward, jnp.float32),
                terminated, truncated)
