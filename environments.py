"""The environment protocols the agent-environment loop uses, and their adapters.

JAX environments (gymnax, brax in brax_environments.py, Craftax in craftax_environments.py, the example
grid world) are pure: reset and step are functions of their arguments, so the whole loop jits and vmaps over
seeds. Python environments (gymnasium, legacy gym) are objects with state of their own, one per seed, stepped
on the host between the agent's jitted pieces. The loop sees both through a batched interface over the seed
axis: `VmappedEnvironments` and `PythonEnvironments`."""

import contextlib
import difflib
import importlib
import importlib.util
import io
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import gymnax
import jax
import jax.numpy as jnp
import numpy as np

from config import JAX_FAMILY_KEYS, ConfigError


class EnvSpec(NamedTuple):
    """What the agent needs to know to build its networks and replay buffer.

    Discrete actions are integers in [0, num_actions). Continuous (Box) actions are float32 vectors of
    num_actions components in [-1, 1], the Box flattened and normalised: the environment maps them to its
    bounds (`to_bounds`), so the agent never sees them."""

    obs_shape: tuple[int, ...]  # e.g. (10, 10, 6) for MinAtar, (10, 5) for Catch, (4,) for CartPole
    obs_dtype: np.dtype  # dtype of the observations the environment returns
    num_actions: int  # discrete: number of actions; continuous: components of the action vector
    continuous: bool = False  # a Box action space

    @property
    def action_shape(self) -> tuple[int, ...]:
        """Shape of one action as the agent and the replay hold it: () for discrete, (num_actions,) for Box."""
        return (self.num_actions,) if self.continuous else ()

    @property
    def action_dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self.continuous else np.dtype(np.int32)


def to_bounds(action, low, high):
    """A normalised action in [-1, 1] (clipped there) -> the Box [low, high], elementwise; works on NumPy and
    JAX arrays alike."""
    action = action.clip(-1.0, 1.0)
    return low + (action + 1.0) * 0.5 * (high - low)


def check_action_space(space, env_name: str) -> tuple[int, bool, np.ndarray | None, np.ndarray | None]:
    """(num_actions, continuous, low, high) of a gymnax, gymnasium or gym action space: Discrete, or a Box with
    finite bounds (low and high of the Box's shape, float32). Raises ConfigError, naming the space, for any
    other space (MultiDiscrete, Dict, Tuple, ...) and for a Box with an infinite bound."""
    kind = type(space).__name__
    if kind == "Discrete":
        return int(space.n), False, None, None
    if kind != "Box":
        raise ConfigError(f"env_name '{env_name}' has the action space {space!r} ({kind}), but only Discrete and "
                          "bounded Box action spaces are supported")
    shape = tuple(np.shape(space.low)) or tuple(getattr(space, "shape", ()) or ())
    low = np.broadcast_to(np.asarray(space.low, np.float32), shape).copy()
    high = np.broadcast_to(np.asarray(space.high, np.float32), shape).copy()
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low < high)):
        raise ConfigError(f"env_name '{env_name}' has the action space {space!r} with an unbounded or empty range "
                          "(low must be finite and below a finite high in every component), but the agent needs "
                          "a bounded Box to map its actions in [-1, 1] to")
    return int(np.prod(shape, dtype=np.int64)), True, low, high


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

    # Optional: `episode_statistics(env_state) -> {name: scalar}`, statistics of the episode that the step which
    # returned env_state ended (read only where it ended one), e.g. Craftax's achievements. The output records
    # hold their means over the episodes each block ended; environments without it add nothing to the records.


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


def auto_reset(done, fresh, stepped):
    """The env state after a step: `fresh` (a new episode's) where `done`, else `stepped`. Both are computed and
    one is selected, as gymnax's auto-reset does, which keeps the step vmappable. Each leaf keeps the fresh
    state's dtype, so the state's type is the same at every step."""
    return jax.tree.map(lambda new, old: jnp.where(done, new, old).astype(new.dtype), fresh, stepped)


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


def _make_open_grid(env_name: str) -> OpenGridEnvironment:
    if env_name != "OpenGrid":
        raise ConfigError(f"environment open_grid_env has only the env_name 'OpenGrid', got '{env_name}'")
    return OpenGridEnvironment()


def _make_brax(env_name: str, **env_kwargs):
    from brax_environments import BraxEnvironment  # brax itself is imported only when asked for
    return BraxEnvironment(env_name, **env_kwargs)


def _make_craftax(env_name: str):
    from craftax_environments import CraftaxEnvironment  # imports the optional craftax package, if installed
    return CraftaxEnvironment(env_name)


_FAMILIES = {"gymnax_env": GymnaxEnvironment, "open_grid_env": _make_open_grid, "brax_env": _make_brax,
             "craftax_env": _make_craftax}


def make_environment(environment: str, env_name: str, env_kwargs: dict | None = None):
    """Builds the environment named by config.environment and config.env_config (env_name plus, for
    gymnasium and gym, extra keyword arguments for `make`). JAX families return a JaxEnvironment; gymnasium
    and gym return a PythonEnvironmentFamily that creates one instance per seed.

    Raises ConfigError, with one sentence, for an unknown family or name, extra keys a JAX family does not
    take, or an action or observation space the agent cannot use.
    """
    env_kwargs = dict(env_kwargs or {})
    if environment in _PYTHON_FAMILIES:
        return PythonEnvironmentFamily(environment, env_name, env_kwargs)
    if environment not in _FAMILIES:
        valid = ", ".join(f"'{name}'" for name in [*_FAMILIES, *_PYTHON_FAMILIES])
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


# ---------------------------------------------------------------------------------------------------------
# Python environments: gymnasium and legacy gym objects, one per seed.

class PythonEnvironment(Protocol):
    """One seed's environment, stepped on the host. Observations follow the family's EnvSpec (shape, dtype).

    step auto-resets like the JAX environments: after terminated | truncated it returns the first
    observation of a new episode, with the reward and flags of the transition that ended. The key arguments
    are the seed's JAX keys for this reset or step; environments with their own random generator ignore them.
    """

    def reset(self, key) -> np.ndarray:
        """Starts a new episode; returns its first observation."""

    def step(self, key, action) -> tuple[np.ndarray, float, bool, bool]:
        """Returns (obs, reward, terminated, truncated)."""


_PYTHON_FAMILIES = {"gymnasium_env": "gymnasium", "gym_env": "gym"}

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
        self.module, self.env_name, self.env_kwargs = _PYTHON_FAMILIES[environment], env_name, env_kwargs
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


# ---------------------------------------------------------------------------------------------------------
# The loop's view: all seeds' environments at once, arrays with a leading seed axis.

class VmappedEnvironments:
    """A JAX environment vmapped over seeds: traceable, so the whole block compiles."""

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

    def __init__(self, envs: Sequence[PythonEnvironment], to_host: Callable = None, from_host: Callable = None):
        self.envs, self.spec = list(envs), envs[0].spec
        self._placeholder = np.zeros(len(self.envs), np.int32)
        self._needs_keys = any(isinstance(env, JaxAsPythonEnvironment) for env in self.envs)
        self._to_host, self._from_host = to_host or (lambda x: x), from_host or (lambda x: x)
        self.episode_statistics = _no_statistics  # a Python environment's episodes report none

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


def seed_environments(env, seeds: Sequence[int], jax_env: bool, placement=None):
    """The loop's environments for these seeds: the JAX env vmapped (jax_env), else one Python object per
    seed (gymnasium/gym instances seeded from their seed, or the JAX env wrapped as a Python object). With a
    `placement` of several processes (devices.Placement), `seeds` are this process's runs'."""
    if jax_env:
        return VmappedEnvironments(env)
    hooks = (placement.local, placement.put) if placement is not None and placement.process_count > 1 else ()
    if getattr(env, "is_python", False):
        return PythonEnvironments([env.instance(int(seed)) for seed in seeds], *hooks)
    reset, step = jax.jit(env.reset), jax.jit(env.step)
    return PythonEnvironments([JaxAsPythonEnvironment(env.spec, reset, step) for _ in seeds], *hooks)
