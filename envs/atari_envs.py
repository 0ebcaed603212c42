"""Atari through envpool (an optional install: requirements-atari.txt): `environment: "atari_env"`, with the
game as `env_config.env_name` (`Pong`, `Breakout`, ...; envpool's names without `-v5`).

envpool steps a pool of games in C++ threads, one game per seed, seeded with the seed. With `jax_env` true the
pool is stepped inside the compiled loop through envpool's XLA interface (`env.xla()`): act for all seeds,
one pool step, store, train, all in one program. With `jax_env` false the same pool is stepped from Python
with envpool's ordinary `step`; both give the same numbers (tests/test_atari.py).

The frames follow DreamerV3's Atari 100k protocol unless env_config says otherwise (ATARI_SETTINGS; each
value and its source in docs/atari.md): 64x64 RGB, action repeat 4 with the last two frames max-pooled, no
sticky actions, up to 30 no-op starts, the minimal action set, a lost life is not an episode end, rewards
unclipped, 108,000 frames an episode at most (a time limit: truncation).

**Episode ends.** envpool starts a new episode on the step after the one that ended an episode, ignoring that
step's action, and returns the new episode's first frame with reward 0. The adapter reports the end on that
step: the game's last frame is one more step of the episode, with reward 0, after which it terminates (or is
truncated). So an episode's return is the game's, its length one step more, and the replay holds the last
frame, followed by the first frame of the next episode, as with every other environment here.

**State.** The pool lives outside the run's pytree (as a Python environment's objects do): the run state holds
only its XLA handle and each seed's pending episode end. A checkpoint cannot hold the games, so on resume each
seed starts a new episode, in a pool seeded from the seed and the step count.
"""

import importlib.util
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs.protocol import EnvSpec, check_setting_names
from experiment.config import ConfigError

# env_config key: DreamerV3's Atari 100k value (docs/atari.md gives each one's source).
ATARI_SETTINGS = {
    "frame_size": 64,  # frames are frame_size x frame_size, resized with OpenCV's INTER_AREA
    "gray_scale": False,  # RGB
    "action_repeat": 4,  # frames per agent step; the last two are max-pooled
    "noop_max": 30,  # an episode starts with up to this many no-op actions (0: none)
    "sticky_actions": 0.0,  # probability that the emulator repeats the previous action
    "full_action_space": False,  # the game's minimal action set
    "episodic_life": False,  # a lost life ends the episode (True) or not (DreamerV3: lives unused)
    "reward_clip": False,  # clip rewards to their sign
    "max_episode_frames": 108_000,  # time limit in emulator frames (30 minutes of play); reached: truncated
    "fire_reset": False,  # press FIRE at the start of games that need it
}


def _import_envpool():
    if importlib.util.find_spec("envpool") is None:
        raise ConfigError("environment atari_env needs the optional envpool package: install it with "
                          "pip install -r requirements-atari.txt")
    import envpool
    from envpool.atari.registration import atari_game_list
    return envpool, ["".join(part.capitalize() for part in game.split("_")) for game in atari_game_list]


def atari_games() -> list[str]:
    """The games envpool has ROMs for, by the names env_config.env_name takes."""
    return _import_envpool()[1]


def _checked_settings(settings: dict) -> dict:
    """ATARI_SETTINGS updated with env_config's keys, each checked (one sentence per mistake)."""
    check_setting_names("atari_env", settings, ATARI_SETTINGS)
    values = dict(ATARI_SETTINGS)
    for key, value in settings.items():
        default = ATARI_SETTINGS[key]
        if isinstance(default, bool):
            valid = isinstance(value, bool)
        elif isinstance(default, float):
            valid = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
        else:
            least = 0 if key == "noop_max" else 1
            valid = isinstance(value, int) and not isinstance(value, bool) and value >= least
        if not valid:
            kind = ("true or false" if isinstance(default, bool) else "a probability in [0, 1]"
                    if isinstance(default, float) else f"an integer >= {0 if key == 'noop_max' else 1}")
            raise ConfigError(f"env_config.{key} must be {kind}, got {value!r}")
        values[key] = value
    return values


def envpool_options(settings: dict) -> dict:
    """envpool.make's keyword arguments for ATARI_SETTINGS-style settings (the mapping docs/atari.md lists)."""
    s = settings
    return dict(env_type="gymnasium", img_height=s["frame_size"], img_width=s["frame_size"],
                gray_scale=s["gray_scale"], stack_num=1, frame_skip=s["action_repeat"], noop_max=s["noop_max"],
                repeat_action_probability=float(s["sticky_actions"]), full_action_space=s["full_action_space"],
                episodic_life=s["episodic_life"], zero_discount_on_life_loss=False, reward_clip=s["reward_clip"],
                max_episode_steps=s["max_episode_frames"] // s["action_repeat"], use_fire_reset=s["fire_reset"],
                use_inter_area_resize=True)


class PoolState(NamedTuple):
    """The run state's part of a pool, with a leading seed axis: the pool's XLA handle (the same in every
    row) and the episode end each seed's last pool step reported, which the next step reports (module doc)."""

    handle: jax.Array  # [N, handle bytes] uint8
    terminated: jax.Array  # [N] bool
    truncated: jax.Array  # [N] bool


class AtariEnvironment:
    """One game with its settings: checked once; `pool(seeds)` gives the loop's environments, `instance(seed)`
    one seed's game stepped from Python (evaluation episodes and videos, which run beside the training pool)."""

    is_python = True  # evaluation, videos and the random baseline step it from Python, one object per seed
    is_pool = True  # the loop steps all seeds' games as one pool (environments.seed_environments)

    def __init__(self, env_name: str, **settings):
        envpool, games = _import_envpool()
        if env_name not in games:
            raise ConfigError(f"env_name '{env_name}' is not an Atari game envpool has; choose one of "
                              f"{', '.join(games)}")
        self.env_name, self.settings = env_name, _checked_settings(settings)
        self.options = envpool_options(self.settings)
        def make(seeds):  # envpool takes int32 seeds; a resumed run's are drawn from [0, 2**32)
            seeds = [int(seed) % 2**31 for seed in seeds]
            return envpool.make(f"{env_name}-v5", num_envs=len(seeds), env_seed=seeds, seed=seeds[0], **self.options)

        self._make = make
        self.pools: list[AtariPool] = []  # the pools made and not closed
        probe = self._make([0])
        channels, height, width = probe.observation_space.shape
        self.spec = EnvSpec((height, width, channels), np.dtype(np.uint8), int(probe.action_space.n))
        probe.close()

    def pool(self, seeds, compiled: bool, placement=None) -> "AtariPool":
        """All seeds' games as one pool, stepped inside the compiled loop (`compiled`) or from Python."""
        if compiled and placement is not None and len(placement.devices) > 1:
            raise ConfigError("environment atari_env steps its pool inside the compiled loop on one device only, "
                              f"but the runs are placed on {len(placement.devices)}; set jax_env to false to step "
                              "it from Python, or run on one device")
        pool = AtariPool(self, [int(seed) for seed in seeds], compiled, placement)
        self.pools.append(pool)  # a compiled program holds only the pool's handle: the family keeps it alive
        return pool

    def instance(self, seed: int, render: bool = False) -> "AtariGame":
        return AtariGame(self, seed)

    def observations(self, count: int) -> np.ndarray:
        """First frames of `count` games (for the binary-state check)."""
        pool = self._make(list(range(count)))
        obs, _ = pool.reset()
        pool.close()
        return np.moveaxis(obs, 1, -1)


def _hwc(obs):
    """envpool's [N, C, H, W] frames as [N, H, W, C]; NumPy or JAX."""
    return obs.transpose(0, 2, 3, 1)


class AtariPool:
    """The seeds' games as one envpool pool, with the loop's interface (envs.batched.VmappedEnvironments for
    `compiled`, envs.batched.PythonEnvironments otherwise): reset(keys) -> (env_state, obs); step(keys,
    env_state, actions) -> (env_state, obs, reward, terminated, truncated), every array with a seed axis. The
    games follow their own seeds, so the keys are not used.

    Compiled, env_state is a PoolState and step is traceable; from Python, env_state is a placeholder and the
    pending episode ends are kept here. In a run of several processes (Python only) each process's pool holds
    its own runs' games and `placement` moves the arrays between the loop and the host."""

    restarts_on_resume = True  # the games cannot be checkpointed: each seed starts a new episode

    def __init__(self, family: AtariEnvironment, seeds: list[int], compiled: bool, placement=None):
        self.family, self.spec, self.compiled = family, family.spec, compiled
        hooks = placement is not None and placement.process_count > 1
        self._to_host = placement.local if hooks else (lambda x: x)
        self._from_host = placement.put if hooks else (lambda x: x)
        self._start(seeds)

    def _start(self, seeds: list[int]):
        self.pool = self.family._make(seeds)
        self.num = len(seeds)
        self._handle, _, _, self._xla_step = self.pool.xla()
        self._pending = (np.zeros(self.num, bool), np.zeros(self.num, bool))

    def reseed(self, seeds: list[int]):
        """A new pool whose games are seeded with `seeds` (a resumed run's fresh episodes)."""
        self.pool.close()
        self._start(seeds)

    def reset(self, keys):
        obs, _ = self.pool.reset()
        self._pending = (np.zeros(self.num, bool), np.zeros(self.num, bool))
        if self.compiled:
            state = PoolState(np.tile(np.asarray(self._handle)[None], (self.num, 1)), *self._pending)
        else:
            state = np.zeros(self.num, np.int32)
        return state, _hwc(obs)

    def reset_shapes(self, keys):
        """Shapes and dtypes of reset's result, without resetting."""
        seeds = lambda *shape, dtype: jax.ShapeDtypeStruct((self.num, *shape), dtype)
        obs = seeds(*self.spec.obs_shape, dtype=np.uint8)
        if not self.compiled:
            return seeds(dtype=np.int32), obs
        handle = seeds(np.asarray(self._handle).size, dtype=np.uint8)
        return PoolState(handle, seeds(dtype=bool), seeds(dtype=bool)), obs

    def step(self, keys, env_state, actions):
        if not self.compiled:
            return self._python_step(actions)
        handle, (obs, reward, terminated, truncated, _) = self._xla_step(env_state.handle[0],
                                                                         actions.astype(jnp.int32))
        state = PoolState(jnp.broadcast_to(handle, env_state.handle.shape), terminated, truncated)
        return (state, _hwc(obs), reward.astype(jnp.float32), env_state.terminated, env_state.truncated)

    def _python_step(self, actions):
        actions = np.asarray(self._to_host(actions), np.int32)
        obs, reward, terminated, truncated, _ = self.pool.step(actions)
        ended, self._pending = self._pending, (np.asarray(terminated, bool), np.asarray(truncated, bool))
        return self._from_host((np.zeros(self.num, np.int32), _hwc(obs), np.asarray(reward, np.float32), *ended))

    def step_one_seed(self, key, env_state, action):
        """step for a run of one seed whose state has no seed axis (the loop's unvmapped single-seed block)."""
        batched = jax.tree.map(lambda x: x[None], (key, env_state, action))
        return jax.tree.map(lambda x: x[0], self.step(*batched))

    def episode_statistics(self, env_state) -> dict:
        return {}

    episode_statistics_one_seed = episode_statistics

    def close(self):
        self.pool.close()
        if self in self.family.pools:
            self.family.pools.remove(self)


class AtariGame:
    """One seed's game as a PythonEnvironment (a pool of one, seeded from the seed), with the pool's episode
    ends; `render` draws the current frame."""

    def __init__(self, family: AtariEnvironment, seed: int):
        self.family, self.spec = family, family.spec
        self.pool, self.seed = None, seed
        self._pending, self._frame = (False, False), None

    def reseed(self, seed: int):
        """The next reset starts a game seeded with `seed`."""
        self.seed = seed

    def reset(self, key) -> np.ndarray:
        """A new game, seeded with the seed; each later reset's seed is drawn from the previous one."""
        if self.pool is not None:
            self.pool.close()
        self.pool = self.family._make([self.seed])
        self.seed = int(np.random.SeedSequence(self.seed).generate_state(1)[0])
        obs, _ = self.pool.reset()
        self._pending, self._frame = (False, False), _hwc(obs)[0]
        return self._frame

    def step(self, key, action):
        obs, reward, terminated, truncated, _ = self.pool.step(np.full(1, int(action), np.int32))
        ended, self._pending = self._pending, (bool(terminated[0]), bool(truncated[0]))
        self._frame = _hwc(obs)[0]
        return self._frame, float(reward[0]), *ended

    def render(self) -> np.ndarray:
        return self._frame

    def close(self):
        if self.pool is not None:
            self.pool.close()
