"""The DeepMind Control Suite through dm_control (an optional install: requirements-dmc.txt): `environment:
"dmc_env"`, with `env_config.env_name` DOMAIN-TASK (`walker-walk`, `cartpole-swingup`, `ball_in_cup-catch`, ...).

One dm_control environment per seed, stepped from Python between the agent's jitted pieces (`jax_env` false),
each made with `task_kwargs={'random': seed}`. Observations (`env_config.observation`) are `states`, the task's
observation dict flattened into one float32 vector in the dict's own order (`observation_layout`), or
`pixels`, uint8 RGB frames rendered by MuJoCo. An agent step repeats its action `action_repeat` times and sums
the rewards. The suite's tasks have no terminal states: the time limit (1000 control steps) ends an episode
as truncated. Each setting with its source, the observation layouts and rendering: docs/dmc.md.

**Rendering.** MuJoCo renders headless through EGL (`MUJOCO_GL=egl`, set before dm_control is imported unless
the user set it); a backend that cannot render is refused with one sentence naming what to install.

**State.** The environments live outside the run's pytree, so on resume each seed starts a new episode in a
task loaded afresh from a seed drawn from the seed and the step count (envs/batched.PythonEnvironments).
"""

import difflib
import importlib.util
import os
import time

import numpy as np

from envs.protocol import EnvSpec, check_setting_names, to_bounds
from experiment.config import ConfigError

# env_config key: default (docs/dmc.md gives each one's source).
DMC_SETTINGS = {
    "observation": "states",  # states: the observation dict as one float32 vector; pixels: RGB frames
    "action_repeat": 2,  # control steps per agent step, their rewards summed (DreamerV3 2023)
    "size": 64,  # side of the square frames in pixels: the pixels observation and the --video frames
    "camera": None,  # MuJoCo camera id of the frames (-1: the free camera); None: DEFAULT_CAMERAS, else 0
}
OBSERVATIONS = ("states", "pixels")
DEFAULT_CAMERAS = {"quadruped": 2}  # DreamerV1-V3 film quadruped from camera 2, every other domain from camera 0

# What each MUJOCO_GL backend needs, named when it cannot render.
_BACKEND_NEEDS = {
    "egl": "install EGL (Debian/Ubuntu: apt-get install libegl1; NVIDIA's driver brings its own)",
    "osmesa": "install OSMesa (Debian/Ubuntu: apt-get install libosmesa6)",
    "glfw": "GLFW needs a display (DISPLAY); on a headless machine install EGL (apt-get install libegl1) and set "
            "MUJOCO_GL=egl",
}


def _backend_error(what: str, error: BaseException, also: str = "") -> ConfigError:
    backend = os.environ.get("MUJOCO_GL", "")
    need = _BACKEND_NEEDS.get(backend.strip().lower(),
                              "set MUJOCO_GL to egl (with libegl1 installed) or osmesa (with libosmesa6)")
    detail = (str(error).strip().splitlines() or [""])[0]
    return ConfigError(f"environment dmc_env {what} with MuJoCo's rendering backend MUJOCO_GL={backend!r} "
                       f"({type(error).__name__}: {detail}); {need}{also}")


def _import_suite():
    """dm_control.suite, imported with the headless EGL backend unless the user chose one (MUJOCO_GL is read when
    dm_control is first imported)."""
    if importlib.util.find_spec("dm_control") is None:
        raise ConfigError("environment dmc_env needs the optional dm_control package: install it with "
                          "pip install -r requirements-dmc.txt")
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from dm_control import suite
    except Exception as error:  # noqa: BLE001 - each backend fails to load in its own way (ImportError, ...)
        raise _backend_error("could not import dm_control", error, "; MUJOCO_GL=disable runs states without "
                             "rendering") from None
    return suite


def dmc_tasks() -> list[str]:
    """The suite's tasks (dm_control.suite.ALL_TASKS), by the names env_config.env_name takes."""
    return [f"{domain}-{task}" for domain, task in _import_suite().ALL_TASKS]


def observation_layout(observation_spec) -> list[tuple[str, int, int]]:
    """(name, start, stop) of each entry of a task's observation dict in the `states` vector: the entries in the
    dict's order (dm_control's observation_spec(), the task's own), each array flattened row-major."""
    layout, start = [], 0
    for name, array_spec in observation_spec.items():
        size = int(np.prod(array_spec.shape, dtype=np.int64))
        layout.append((name, start, start + size))
        start += size
    return layout


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_settings(settings: dict) -> dict:
    """DMC_SETTINGS updated with env_config's keys, each checked (one sentence per mistake)."""
    check_setting_names("dmc_env", settings, DMC_SETTINGS)
    values = dict(DMC_SETTINGS)
    for key, value in settings.items():
        if key == "observation":
            valid, kind = isinstance(value, str) and value in OBSERVATIONS, " or ".join(OBSERVATIONS)
        elif key == "camera":
            valid, kind = value is None or (_is_int(value) and value >= -1), "null or a camera id >= -1"
        else:
            valid, kind = _is_int(value) and value >= 1, "an integer >= 1"
        if not valid:
            raise ConfigError(f"env_config.{key} must be {kind}, got {value!r}")
        values[key] = value
    return values


class DmcEnvironment:
    """One suite task with its settings: checked once (task name, settings, camera, a rendered frame for pixels);
    `instance(seed)` gives one seed's environment (envs.batched.PythonEnvironments holds one per seed)."""

    is_python = True  # stepped from Python, one object per seed

    def __init__(self, env_name: str, **settings):
        self._suite = _import_suite()
        tasks = [f"{domain}-{task}" for domain, task in self._suite.ALL_TASKS]
        if env_name not in tasks:
            close = difflib.get_close_matches(env_name, tasks, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"env_name '{env_name}' is not a DeepMind Control Suite task (DOMAIN-TASK){hint}; "
                              f"choose one of {', '.join(tasks)}")
        self.env_name, self.settings = env_name, _checked_settings(settings)
        self.domain, self.task = env_name.split("-", 1)
        camera = self.settings["camera"]
        self.camera = DEFAULT_CAMERAS.get(self.domain, 0) if camera is None else camera
        self.pixels = self.settings["observation"] == "pixels"
        # Seconds spent in every instance's steps (physics, rendering included) and in rendering alone, for
        # bench/bench_loop.py's share of a loop step that goes to the simulator and to MuJoCo's renderer.
        self.seconds = {"step": 0.0, "render": 0.0}
        probe = self.load(0)
        try:
            self.layout = observation_layout(probe.observation_spec())
            action_spec = probe.action_spec()
            self.low = np.asarray(action_spec.minimum, np.float64) * np.ones(action_spec.shape)
            self.high = np.asarray(action_spec.maximum, np.float64) * np.ones(action_spec.shape)
            if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))):
                raise ConfigError(f"env_name '{env_name}' has an unbounded action spec {action_spec}, but the agent "
                                  "needs finite bounds to map its actions in [-1, 1] to")
            cameras = probe.physics.model.ncam
            if self.camera >= cameras:
                raise ConfigError(f"env_config.camera is {self.camera}, but {env_name} has the cameras 0 to "
                                  f"{cameras - 1} (and -1, the free camera)")
            size = self.settings["size"]
            obs_shape, obs_dtype = ((size, size, 3), np.uint8) if self.pixels else ((self.layout[-1][2],), np.float32)
            self.spec = EnvSpec(obs_shape, np.dtype(obs_dtype), int(np.prod(action_spec.shape)), continuous=True)
            if self.pixels:
                probe.reset()
                self.render_physics(probe.physics)
        finally:
            _free(probe)

    def without_rendering(self) -> "DmcEnvironment":
        """The same task from states: for a policy that ignores its observations (bench/learning.py's random
        policy) the same episodes and rewards, without rendering a frame a step."""
        return DmcEnvironment(self.env_name, **{**self.settings, "observation": "states"}) if self.pixels else self

    def load(self, seed: int):
        """A dm_control environment of the task whose random state (initial states, targets) is seeded by `seed`."""
        return self._suite.load(self.domain, self.task, task_kwargs={"random": int(seed) % 2**32})

    def render_physics(self, physics) -> np.ndarray:
        """The frame of `physics` from the camera: uint8 [size, size, 3]. A backend that cannot render is refused."""
        size, start = self.settings["size"], time.perf_counter()
        try:
            return physics.render(height=size, width=size, camera_id=self.camera)
        except Exception as error:  # noqa: BLE001 - MuJoCo's FatalError, EGL's errors, ...
            raise _backend_error("could not render", error) from None
        finally:
            self.seconds["render"] += time.perf_counter() - start

    def flatten(self, observation) -> np.ndarray:
        """The `states` vector of an observation dict: its entries in layout order, float32 [D]."""
        return np.concatenate([np.asarray(observation[name], np.float32).ravel() for name, _, _ in self.layout])

    def instance(self, seed: int, render: bool = False) -> "DmcInstance":
        """One seed's environment; every instance can render (`render` is accepted for the protocol)."""
        return DmcInstance(self, seed)

    def observations(self, count: int) -> np.ndarray:
        """First observations of `count` episodes (for the binary-state check)."""
        env = self.instance(0)
        try:
            return np.stack([env.reset(None) for _ in range(count)])
        finally:
            env.close()


def _free(env) -> None:
    """Frees a dm_control environment's MuJoCo data and rendering contexts now rather than at garbage collection."""
    env.close()
    env.physics.free()


class DmcInstance:
    """One seed's task as a PythonEnvironment with auto-reset. The task is loaded at the first reset with the
    seed as its random state, whose generator goes on across the episodes after it; `reseed` makes the next
    reset load it afresh. The key arguments are not used."""

    def __init__(self, family: DmcEnvironment, seed: int):
        self.family, self.spec = family, family.spec
        self.seed, self.env, self._frame = seed, None, None
        self.repeat = family.settings["action_repeat"]

    def reseed(self, seed: int):
        """The next reset loads the task afresh, seeded with `seed` (a resumed run's fresh episodes)."""
        self.seed = seed

    def _observe(self, timestep) -> np.ndarray:
        if self.family.pixels:
            self._frame = self.family.render_physics(self.env.physics)
            return self._frame
        return self.family.flatten(timestep.observation)

    def reset(self, key) -> np.ndarray:
        if self.seed is not None:
            self.close()
            self.env, self.seed = self.family.load(self.seed), None
        return self._observe(self.env.reset())

    def step(self, key, action):
        start = time.perf_counter()
        try:
            return self._step(action)
        finally:
            self.family.seconds["step"] += time.perf_counter() - start

    def _step(self, action):
        action = to_bounds(np.asarray(action, np.float64).reshape(self.family.low.shape), self.family.low,
                           self.family.high)
        reward = 0.0
        for _ in range(self.repeat):  # the rewards of the repeat summed; a repeat stops where the episode ends
            timestep = self.env.step(action)
            reward += float(timestep.reward or 0.0)
            if timestep.last():
                break
        if not timestep.last():
            return self._observe(timestep), reward, False, False
        # dm_control's time limit ends an episode with discount 1 (truncation); only a task's own end has 0
        terminated = timestep.discount == 0.0
        return self.reset(None), reward, terminated, not terminated

    def render(self) -> np.ndarray:
        """The current frame, uint8 RGB [size, size, 3]: the observation itself for pixels, else rendered."""
        if self.family.pixels and self._frame is not None:
            return self._frame
        return self.family.render_physics(self.env.physics)

    def close(self):
        if self.env is not None:
            _free(self.env)
            self.env, self._frame = None, None
