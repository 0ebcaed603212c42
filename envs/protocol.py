"""The protocol every environment family follows: the spec the agent is built from, pure reset/step for JAX
environments (auto-resetting), one object per seed for Python environments, and the helpers the families share
(action bounds, the auto-reset select)."""

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from experiment.config import ConfigError


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


def check_setting_names(environment: str, settings: dict, known) -> None:
    """Refuses, with one sentence listing the family's keys, an env_config key the family does not take."""
    for key in settings:
        if key not in known:
            raise ConfigError(f"environment {environment} takes no env_config.{key}; its keys are env_name, "
                              f"{', '.join(known)}")


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


def auto_reset(done, fresh, stepped):
    """The env state after a step: `fresh` (a new episode's) where `done`, else `stepped`. Both are computed and
    one is selected, as gymnax's auto-reset does, which keeps the step vmappable. Each leaf keeps the fresh
    state's dtype, so the state's type is the same at every step."""
    return jax.tree.map(lambda new, old: jnp.where(done, new, old).astype(new.dtype), fresh, stepped)


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
