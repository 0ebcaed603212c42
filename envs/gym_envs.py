"""The gymnasium and legacy gym families: one env object per seed, stepped on the host between the agent's jitted
pieces (MinAtar/ and ALE/ ids register their packages when asked for)."""

import contextlib
import difflib
import importlib
import importlib.util
import io

import gymnax
import numpy as np

from envs.protocol import EnvSpec, check_action_space, to_bounds
from experiment.config import ConfigError

PYTHON_FAMILIES = {"gymnasium_env": "gymnasium", "gym_env": "gym"}

# Packages that register gymnasium ids when imported, by id prefix, and the pip package providing them.
_ID_PROVIDERS = {"MinAtar/": ("minatar.gym", "minatar"), "ALE/": ("ale_py", "ale-py")}


def _import_gym(module: str):
    """gymnasium, or legacy gym 0.26 without the deprecation banner it prints on import."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return importlib.import_module(module)


def _register_provider(gym, env_name: str) -> str | None:
    """Imports the package that registers env_name's namespace (MinAtar, ALE) if there is one; returns the
    pip package to name in an error when it is not installed."""
    for prefix, (module, package) in _ID_PROVIDERS.items():
        if env_name.startswith(prefix):
            try:
                provider = importlib.import_module(module)
            except ImportError:
                return package
            if prefix == "MinAtar/" and not any(name.startswith(prefix) for name in gym.envs.registry):
                provider.register_envs()  # minatar.gym registers its ids only when asked
            return package
    return None


def _unknown_python_id_message(module: str, env_name: str, package: str | None) -> str:
    gym = _import_gym(module)
    registered = list(gym.envs.registry)
    if package and importlib.util.find_spec(package.replace("-", "_")) is None:
        return (f"env_name '{env_name}' is not a registered {module} environment: its ids come from the "
                f"'{package}' package, install it with pip install {package}")
    if env_name in gymnax.registered_envs:
        return (f"env_name '{env_name}' is a gymnax id, not a {module} one: set environment to gymnax_env "
                "(and jax_env to true)")
    closest = difflib.get_close_matches(env_name, registered, n=1, cutoff=0.5)
    suggestion = f" (did you mean '{closest[0]}'?)" if closest else ""
    return (f"env_name '{env_name}' is not a registered {module} environment{suggestion}; list the valid ids with "
            f"python -c \"import {module}; print(list({module}.envs.registry))\"")


def _observation_spec(space, env_name: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the agent's observations for a gymnasium/gym Box space: vectors (n,) and images
    (H, W, C) as they are, grayscale (H, W) with a channel axis added; bool and uint8 kept, others float32."""
    shape = getattr(space, "shape", None)
    if type(space).__name__ != "Box" or shape is None or len(shape) not in (1, 2, 3):
        raise ConfigError(f"env_name '{env_name}' has the observation space {space}, but the encoders take a Box "
                          f"of shape (n,) (vector) or (H, W) / (H, W, C) (image)")
    dtype = np.dtype(space.dtype)
    dtype = dtype if dtype in (np.dtype(bool), np.dtype(np.uint8)) else np.dtype(np.float32)
    return (tuple(shape) + (1,) if len(shape) == 2 else tuple(shape)), dtype


class PythonEnvironmentFamily:
    """A gymnasium or gym id with its `make` keyword arguments: checks it once (registered id, discrete
    actions, usable observations) and creates one PythonEnvironment per seed with `instance(seed)`."""

    is_python = True

    def __init__(self, environment: str, env_name: str, env_kwargs: dict):
        self.module, self.env_name, self.env_kwargs = PYTHON_FAMILIES[environment], env_name, env_kwargs
        probe = self._make()
        try:
            action_space = probe.action_space
            num_actions, continuous, self.low, self.high = check_action_space(action_space, env_name)
            obs_shape, obs_dtype = _observation_spec(probe.observation_space, env_name)
            self.spec = EnvSpec(obs_shape, obs_dtype, num_actions, continuous)
            self.action_start = 0 if continuous else int(getattr(action_space, "start", 0))
        finally:
            probe.close()

    def _make(self, render: bool = False):
        gym = _import_gym(self.module)
        package = _register_provider(gym, self.env_name) if self.module == "gymnasium" else None
        if self.env_name not in gym.envs.registry:
            raise ConfigError(_unknown_python_id_message(self.module, self.env_name, package))
        # legacy gym's env checker calls np.bool8, which NumPy 2 removed: it is turned off
        extra = {"disable_env_checker": True} if self.module == "gym" else {}
        extra.update({"render_mode": "rgb_array"} if render else {})
        try:
            return gym.make(self.env_name, **extra, **self.env_kwargs)
        except TypeError as error:
            raise ConfigError(f"{self.module}.make('{self.env_name}') does not accept the env_config keys "
                              f"{', '.join(sorted(self.env_kwargs))} ({error})") from None
        except gym.error.Error as error:  # e.g. a missing optional dependency of the env
            raise ConfigError(f"{self.module}.make('{self.env_name}') failed: {error}") from None

    def instance(self, seed: int, render: bool = False) -> "GymEnvironment":
        """One seed's environment; with `render`, made with render_mode "rgb_array" (for videos)."""
        return GymEnvironment(self._make(render), self.spec, self.action_start, seed, self.low, self.high)

    def observations(self, count: int) -> np.ndarray:
        """First observations of `count` episodes (for the binary-state check)."""
        env = self.instance(0)
        return np.stack([env.reset(None) for _ in range(count)])


class GymEnvironment:
    """One gymnasium/gym env object with auto-reset. Seeded once from the run's seed at its first reset; its
    own generator goes on from there, so the key arguments are not used."""

    def __init__(self, env, spec: EnvSpec, action_start: int, seed: int, low=None, high=None):
        self.env, self.spec, self.action_start, self.seed = env, spec, action_start, seed
        self.low, self.high = low, high  # a Box's bounds, of its shape
        if hasattr(env.action_space, "seed"):
            env.action_space.seed(seed)

    def _obs(self, obs) -> np.ndarray:
        return np.asarray(obs, dtype=self.spec.obs_dtype).reshape(self.spec.obs_shape)

    def reseed(self, seed: int):
        """Seed the next reset (a resumed run's fresh episode)."""
        self.seed = seed

    def reset(self, key) -> np.ndarray:
        seed, self.seed = self.seed, None  # seed the first reset only
        obs, _ = self.env.reset(seed=seed)
        return self._obs(obs)

    def step(self, key, action):
        if self.spec.continuous:  # [A] in [-1, 1] -> the Box's shape, dtype and bounds
            action = to_bounds(np.asarray(action, np.float32).reshape(self.low.shape), self.low, self.high)
            action = action.astype(self.env.action_space.dtype)
        else:
            action = int(action) + self.action_start
        obs, reward, terminated, truncated, _ = self.env.step(action)
        if terminated or truncated:
            obs = self.reset(None)
        return self._obs(obs), float(reward), bool(terminated), bool(truncated)

    def render(self) -> np.ndarray:
        """The current frame as uint8 RGB [H, W, 3] (an env made with render=True; raises where it cannot)."""
        frame = self.env.render()
        if frame is None:
            raise ValueError(f"{type(self.env.unwrapped).__name__}.render() returned nothing")
        return np.asarray(frame, np.uint8)

    def close(self):
        self.env.close()
