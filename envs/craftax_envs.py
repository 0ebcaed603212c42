"""Craftax and Craftax-Classic (package `craftax`, an optional install: requirements-craftax.txt) as pure JAX
environments: `environment: "craftax_env"` with one of `CRAFTAX_IDS` as env_name.

Craftax's own auto-reset ends an episode on `done`, which joins the time limit (`state.timestep >=
params.max_timesteps`) with the end of the game (death, standing in lava in Classic, beating the last boss
in Craftax). The adapter steps the game without Craftax's reset and tells the two apart: the end of the game
is `terminated`, the time limit alone is `truncated`. Then it auto-resets with the step's key, as gymnax does.

Observations are Craftax's own: symbolic vectors (float32), or images in [0, 1] (float32 [H, W, 3]), which
the conv encoder takes as they are (its 3x3 convolutions keep any height and width).

Each step also keeps the achievements and return of the episode it ended, which `episode_statistics` hands
to the loop for the output records: the number of achievements unlocked, each achievement (unlocked or not),
and the score, the return as a percentage of the maximum return (the Craftax scoreboard's "reward % max").
"""

import contextlib
import io
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs.protocol import EnvSpec
from experiment.config import ConfigError

CRAFTAX_IDS = ("Craftax-Classic-Symbolic-v1", "Craftax-Classic-Pixels-v1", "Craftax-Symbolic-v1", "Craftax-Pixels-v1")


class CraftaxState(NamedTuple):
    game: Any  # Craftax's EnvState of the current episode
    episode_return: jax.Array  # [] float32: the current episode's return so far
    ended_achievements: jax.Array  # [K] bool: achievements of the episode the last step ended (if it ended one)
    ended_return: jax.Array  # [] float32: return of the episode the last step ended (if it ended one)


def _import_craftax():
    """craftax's env constructor and its two achievement modules, or one sentence on how to install it."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Craftax's lines about its texture cache
            from craftax.craftax import constants as full
            from craftax.craftax_classic import constants as classic
            from craftax.craftax_env import make_craftax_env_from_name
    except ImportError:
        raise ConfigError("environment craftax_env needs the optional craftax package: install it with "
                          "pip install -r requirements-craftax.txt") from None

    def make(env_name: str):
        with contextlib.redirect_stdout(io.StringIO()):  # its renderer, imported here, prints them too
            return make_craftax_env_from_name(env_name, auto_reset=False)

    return make, full, classic


class CraftaxEnvironment:
    """One Craftax id as a JaxEnvironment; `max_timesteps` replaces the episode's time limit (10,000 steps in
    Classic and Craftax) where given."""

    def __init__(self, env_name: str, max_timesteps: int | None = None):
        if env_name not in CRAFTAX_IDS:
            raise ConfigError(f"env_name '{env_name}' is not a Craftax id; environment craftax_env takes one of "
                              f"{', '.join(CRAFTAX_IDS)}")
        make, full, classic = _import_craftax()
        self._env = make(env_name)
        self._params = self._env.default_params
        if max_timesteps is not None:
            self._params = self._params.replace(max_timesteps=max_timesteps)
        # The end of the game without the time limit: the same test, with a limit no episode reaches.
        self._no_time_limit = self._params.replace(max_timesteps=np.iinfo(np.int32).max)
        constants = classic if "Classic" in env_name else full
        self.achievement_names = tuple(a.name.lower() for a in constants.Achievement)
        # Classic rewards every achievement with 1; Craftax by its difficulty (1, 3, 5 or 8): 22 and 226 in all.
        # Health changes add to the reward too, but their sum over an episode is not positive.
        self.max_return = (float(len(self.achievement_names)) if constants is classic
                           else float(np.asarray(full.ACHIEVEMENT_REWARD_MAP).sum()))
        # (state, obs) of reset as shapes and dtypes, traced once: tracing the pixel renderer takes seconds.
        self.abstract_reset = jax.eval_shape(self.reset, jax.random.key(0))
        obs = self.abstract_reset[1]
        self.spec = EnvSpec(tuple(obs.shape), np.dtype(obs.dtype), int(self._env.num_actions))

    def reset(self, key):
        obs, game = self._env.reset_env(key, self._params)
        achievements = jnp.zeros(len(self.achievement_names), bool)
        return CraftaxState(game, jnp.float32(0.0), achievements, jnp.float32(0.0)), obs

    def step(self, key, env_state: CraftaxState, action):
        step_key, reset_key = jax.random.split(key)
        obs, game, reward, _, _ = self._env.step_env(step_key, env_state.game, action, self._params)
        reward = jnp.asarray(reward, jnp.float32)
        terminated = jnp.asarray(self._env.is_terminal(game, self._no_time_limit), bool)
        truncated = (game.timestep >= self._params.max_timesteps) & ~terminated
        episode_return = env_state.episode_return + reward
        ended = CraftaxState(game, episode_return, game.achievements.astype(bool), episode_return)

        # Auto-reset. Generating a world costs about twice a step: a `cond` generates one only at an episode's
        # end where it runs as a branch (one seed; Python stepping), and vmapped over seeds it becomes a select
        # of both, as gymnax's auto-reset is.
        def new_episode():
            fresh, fresh_obs = self.reset(reset_key)
            return fresh._replace(ended_achievements=ended.ended_achievements, ended_return=episode_return), fresh_obs

        env_state, obs = jax.lax.cond(terminated | truncated, new_episode, lambda: (ended, obs))
        return env_state, obs, reward, terminated, truncated

    def episode_statistics(self, env_state: CraftaxState) -> dict:
        """Statistics of the episode the step that returned `env_state` ended (meaningless where it ended none):
        achievements unlocked (count), each achievement (bool), score (% of the maximum return)."""
        achievements = env_state.ended_achievements
        return {"achievements": achievements.sum(dtype=jnp.int32),
                "score": 100.0 * env_state.ended_return / self.max_return,
                **{f"achievement_{name}": achievements[i] for i, name in enumerate(self.achievement_names)}}
