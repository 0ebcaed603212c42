"""The DeepMind Control Suite family (envs/dmc_envs.py, dm_control): against raw dm_control its states keep the
observation dict's order, its actions reach the spec's bounds, its rewards are summed over the repeat and the time
limit truncates; a states run and a pixels run of 2 seeds are saved and resumed; bad input is refused with one
sentence."""

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dm_control")

from envs.dmc_envs import DMC_SETTINGS, DmcEnvironment, dmc_tasks  # noqa: E402
from envs.protocol import to_bounds  # noqa: E402
from experiment.cli import script_main as main  # noqa: E402
from experiment.config import DREAMERV3, ConfigError, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Runs small enough for the suite: a tiny model, and a long action repeat so that episodes (1000 control steps)
# end within the run: 100 agent steps an episode for states, 50 for pixels (16x16 frames).
TINY = ["num_seeds=2", "batch_size=2", "sequence_length=8", "num_hidden_units=16", "num_hidden_layers=1",
        "num_features=4", "feature_width=4", "rollout_length=3", "eval_every=0", "video_max_frames=10"]
STATES = TINY + ["num_steps=200", "eval_frequency=50", "checkpoint_frequency=100", "buffer_size=400",
                 "training_start_time=50", "train_frequency=25", "env_config.env_name=cartpole-swingup",
                 "env_config.action_repeat=10"]
PIXELS = TINY + ["num_steps=100", "eval_frequency=25", "checkpoint_frequency=50", "buffer_size=200",
                 "training_start_time=25", "train_frequency=25", "cnn_depth=2", "env_config.env_name=cartpole-swingup",
                 "env_config.action_repeat=20", "env_config.size=16"]


def _args(*sets: str) -> list[str]:
    return [a for item in sets for a in ("--set", item)]


def _records(path) -> list[dict]:
    with open(path) as file:
        return [json.loads(line) for line in file]


def _raw(env_name: str, seed: int):
    from dm_control import suite
    domain, task = env_name.split("-", 1)
    return suite.load(domain, task, task_kwargs={"random": seed})


def _flat(observation) -> np.ndarray:
    return np.concatenate([np.asarray(value, np.float32).ravel() for value in observation.values()])


# The adapter against raw dm_control.

@pytest.mark.parametrize("env_name", ["cartpole-swingup", "walker-walk", "finger-turn_easy"])
def test_states_are_the_observation_dict_flattened_in_its_order(env_name):
    env = DmcEnvironment(env_name)
    raw = _raw(env_name, 4)
    assert [name for name, _, _ in env.layout] == list(raw.observation_spec())  # the task's own order
    instance = env.instance(4)
    first = instance.reset(None)
    np.testing.assert_array_equal(first, _flat(raw.reset().observation))
    action = np.full(env.spec.num_actions, 0.3, np.float32)
    obs, _, _, _ = instance.step(None, action)
    for _ in range(DMC_SETTINGS["action_repeat"]):
        timestep = raw.step(to_bounds(action.astype(np.float64), env.low, env.high))
    np.testing.assert_array_equal(obs, _flat(timestep.observation))
    assert obs.dtype == np.float32 and obs.shape == env.spec.obs_shape
    instance.close()


def test_the_documented_layouts_hold():
    # docs/dmc.md lists these
    assert DmcEnvironment("walker-walk").layout == [("orientations", 0, 14), ("height", 14, 15), ("velocity", 15, 24)]
    assert DmcEnvironment("cartpole-swingup").layout == [("position", 0, 3), ("velocity", 3, 5)]
    assert DmcEnvironment("cheetah-run").layout == [("position", 0, 8), ("velocity", 8, 17)]


def test_actions_in_minus_one_to_one_reach_the_spec_bounds():
    env = DmcEnvironment("quadruped-walk")  # bounds differ per component: [-1, 1] and [-0.8, 0.8]
    spec = _raw("quadruped-walk", 0).action_spec()
    np.testing.assert_array_equal(env.low, spec.minimum)
    np.testing.assert_array_equal(env.high, spec.maximum)
    assert env.spec.continuous and env.spec.num_actions == 12 and not np.all(spec.minimum == -1)
    instance = env.instance(0)
    instance.reset(None)
    sent = []
    step = instance.env.step
    instance.env.step = lambda action: sent.append(np.array(action)) or step(action)
    for value in (-1.0, 1.0, 0.0, 3.0):
        instance.step(None, np.full(12, value, np.float32))
    np.testing.assert_allclose(sent[0], spec.minimum)
    np.testing.assert_allclose(sent[2], spec.maximum)  # action_repeat 2: each action is sent twice
    np.testing.assert_allclose(sent[4], (spec.minimum + spec.maximum) / 2)
    np.testing.assert_allclose(sent[6], spec.maximum)  # clipped to [-1, 1] first
    instance.close()


@pytest.mark.parametrize("repeat", [2, 3])
def test_rewards_are_summed_over_the_repeat_and_the_time_limit_truncates(repeat):
    env = DmcEnvironment("cartpole-swingup", action_repeat=repeat)
    instance, raw = env.instance(11), _raw("cartpole-swingup", 11)
    instance.reset(None)
    raw.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (1000, 1)).astype(np.float32)
    raw_rewards, rewards, ends = [], [], []
    for action in actions:
        obs, reward, terminated, truncated = instance.step(None, action)
        rewards.append(reward)
        ends.append((terminated, truncated))
        repeated = []
        for _ in range(repeat):  # the raw steps of this agent step
            timestep = raw.step(to_bounds(action.astype(np.float64), env.low, env.high))
            repeated.append(timestep.reward)
            if timestep.last():
                break
        raw_rewards += repeated
        assert reward == pytest.approx(sum(repeated), abs=1e-12)
        if timestep.last():
            break
    steps = -(-1000 // repeat)  # 1000 control steps: the last agent step repeats only what is left
    assert len(rewards) == steps and len(raw_rewards) == 1000
    assert ends[-1] == (False, True) and not any(any(end) for end in ends[:-1])  # truncated, never terminated
    assert sum(rewards) == pytest.approx(sum(raw_rewards), rel=1e-9)
    assert timestep.discount == 1.0  # dm_control's time limit: the episode could go on
    np.testing.assert_array_equal(obs, _flat(raw.reset().observation))  # auto-reset: the next episode's first
    instance.close()


def test_pixels_are_the_camera_frames_and_quadruped_uses_camera_2():
    for env_name, camera in (("cartpole-swingup", 0), ("quadruped-walk", 2)):
        env = DmcEnvironment(env_name, observation="pixels")
        assert env.camera == camera and env.spec.obs_shape == (64, 64, 3) and env.spec.obs_dtype == np.uint8
        raw = _raw(env_name, 2)
        raw.reset()
        instance = env.instance(2)
        frame = instance.reset(None)
        np.testing.assert_array_equal(frame, raw.physics.render(64, 64, camera_id=camera))
        np.testing.assert_array_equal(instance.render(), frame)
        rendered = env.seconds["render"]
        instance.step(None, np.zeros(env.spec.num_actions))  # a step renders its frame, timed for bench_loop.py
        assert env.seconds["step"] >= env.seconds["render"] - rendered > 0
        instance.close()
    env = DmcEnvironment("cartpole-swingup", observation="pixels", camera=1, size=32)
    assert env.camera == 1 and env.spec.obs_shape == (32, 32, 3)


def test_without_rendering_is_the_same_task_from_states():
    pixels = DmcEnvironment("cartpole-swingup", observation="pixels")
    states = pixels.without_rendering()
    assert not states.pixels and states.spec.obs_shape == (5,) and states.without_rendering() is states
    actions = np.random.default_rng(0).uniform(-1, 1, (20, 1))
    rewards = []
    for env in (pixels, states):
        instance = env.instance(3)
        instance.reset(None)
        rewards.append([instance.step(None, action)[1] for action in actions])
        instance.close()
    assert rewards[0] == rewards[1]  # the random policy's returns, measured without rendering


def test_states_render_frames_for_videos():
    instance = DmcEnvironment("walker-walk", size=48).instance(0)
    instance.reset(None)
    frame = instance.render()
    assert frame.shape == (48, 48, 3) and frame.dtype == np.uint8 and frame.std() > 0
    instance.close()


def test_seeds_reach_the_tasks_random_state_and_reseed_loads_afresh():
    env = DmcEnvironment("cartpole-swingup")
    first = lambda seed: env.instance(seed).reset(None)
    np.testing.assert_array_equal(first(5), first(5))
    assert not np.array_equal(first(5), first(6))
    instance = env.instance(5)
    instance.reset(None)
    instance.reseed(6)
    np.testing.assert_array_equal(instance.reset(None), first(6))
    np.testing.assert_array_equal(_flat(_raw("cartpole-swingup", 6).reset().observation), first(6))


# Runs through the scripts' entry.

@pytest.mark.parametrize("preset, sets, videos", [
    # with states, the video's episode is drawn by the physics' render; pixels videos are the frames themselves
    # (the images' path, tested with the other families), left out here to keep the test short
    ("dreamerv3_dmc_proprio_small.json", STATES, ["episode.gif", "prediction.png"]),
    ("dreamerv3_dmc_vision_small.json", PIXELS, None),
], ids=["states", "pixels"])
def test_a_2_seed_run_is_saved_and_resumed(tmp_path, capsys, preset, sets, videos):
    out, ckpt = tmp_path / "run.out", tmp_path / "run.ckpt"
    argv = ["-c", f"configs/{preset}", "--wandb", "disabled", "--no_progress", "-o", str(out),
            "--save_checkpoint", str(ckpt)]
    assert main(argv + (["--video"] if videos else []) + _args(*sets), "test", single_seed=False) == 0
    steps = int(next(s for s in sets if s.startswith("num_steps=")).split("=")[1])
    episode = 1000 // int(next(s for s in sets if s.startswith("env_config.action_repeat=")).split("=")[1])
    records = _records(out)
    for seed in (0, 1):
        mine = [r for r in records if r["seed"] == seed]
        assert sum(r["episodes"] for r in mine) == steps // episode  # every episode truncated at its time limit
        assert mine[-1]["updates"] > 0
        if videos:
            folder = tmp_path / "run_videos" / f"seed{seed}"
            assert sorted(os.listdir(folder)) == [f"{steps:09d}_{name}" for name in videos]
    # resumed: each seed starts a new episode in a task loaded afresh, and training goes on
    more = steps + episode
    assert main(argv + ["--load_checkpoint", str(ckpt)] + _args(*sets, f"num_steps={more}"), "test",
                single_seed=False) == 0
    assert "resuming from env step" in capsys.readouterr().out
    records = _records(out)
    resumed = [r for r in records if r["env_steps"] > steps]
    assert sorted({r["seed"] for r in resumed}) == [0, 1] and max(r["env_steps"] for r in resumed) == more
    for seed in (0, 1):
        mine = [r for r in resumed if r["seed"] == seed]
        assert sum(r["episodes"] for r in mine) == 1 and mine[-1]["updates"] > mine[0]["updates"] > 0


# Refusals: one sentence, exit 2, nothing written.

@pytest.mark.parametrize("sets, fragments", [
    (["env_config.env_name=walker_walk"], ["'walker_walk' is not a DeepMind Control Suite task",
                                           "did you mean 'walker-walk'", "cartpole-swingup", "quadruped-run"]),
    (["env_config.observation=image"], ["env_config.observation must be states or pixels, got 'image'"]),
    (["env_config.action_repeat=0"], ["env_config.action_repeat must be an integer >= 1"]),
    (["env_config.frame_size=64"], ["dmc_env takes no env_config.frame_size", "observation, action_repeat, size"]),
    (["env_config.camera=9"], ["env_config.camera is 9", "cameras 0 to 1"]),
    (["jax_env=true"], ["environment dmc_env is not written in JAX, so jax_env must be false"]),
])
def test_refusals_exit_2_with_one_sentence(sets, fragments, capsys, tmp_path):
    argv = ["-c", "configs/dreamerv3_dmc_proprio_small.json", "-o", str(tmp_path / "out"), "--save_checkpoint",
            str(tmp_path / "ckpt"), "--wandb", "disabled"] + _args(*sets)
    assert main(argv, "test", single_seed=False) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert not list(tmp_path.iterdir())


def test_unknown_task_names_the_suites_tasks():
    with pytest.raises(ConfigError, match="choose one of .*walker-walk") as error:
        DmcEnvironment("walker")
    assert "\n" not in str(error.value)
    assert {"walker-walk", "cheetah-run", "ball_in_cup-catch", "quadruped-walk"} <= set(dmc_tasks())


@pytest.mark.parametrize("backend, fragments", [
    # GLFW with no display loads but cannot make a context: the first frame fails
    ("glfw", ["could not render", "MUJOCO_GL='glfw'", "apt-get install libegl1"]),
    # OSMesa's library missing: dm_control fails to import
    ("osmesa", ["could not import dm_control", "MUJOCO_GL='osmesa'", "apt-get install libosmesa6",
                "MUJOCO_GL=disable runs states"]),
])
def test_a_backend_that_cannot_render_is_refused_naming_what_to_install(backend, fragments):
    if backend == "osmesa" and ctypes.util.find_library("OSMesa"):
        pytest.skip("OSMesa is installed here")
    # in a fresh process: dm_control reads MUJOCO_GL once, when it is first imported
    code = ("from environments import make_environment\n"
            "try:\n    make_environment('dmc_env', 'cartpole-swingup', {'observation': 'pixels'})\n"
            "except Exception as error:\n    print(type(error).__name__, error)\n")
    environ = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**environ, "MUJOCO_GL": backend},
                          capture_output=True, text=True, timeout=120)
    message = done.stdout.strip()
    assert message.startswith("ConfigError ") and "\n" not in message, done.stdout + done.stderr
    for fragment in fragments:
        assert fragment in message, message


# Presets.

def test_presets_hold_dreamerv3_2023_dmc_values():
    for name, observation, steps in (("proprio", "states", 500_000), ("vision", "pixels", 1_000_000)):
        config = load_config(str(ROOT / "configs" / f"dreamerv3_dmc_{name}.json"))
        for key, value in DREAMERV3.items():
            assert getattr(config, key) == value, (name, key)
        assert config.environment == "dmc_env" and not config.jax_env and not config.binary_state
        assert config.env_config.make_kwargs == {"observation": observation, "action_repeat": 2}
        assert config.num_steps == steps and config.buffer_size == 1_000_000
        # size S: GRU and MLPs 512 wide, 2 layers, CNN depth 32, 32 latents of 32 classes
        assert (config.num_hidden_units, config.num_hidden_layers, config.cnn_depth) == (512, 2, 32)
        assert (config.num_features, config.feature_width) == (32, 32)
        # train ratio 512: 16 x 64 replayed steps per update, one update every 2 agent steps
        assert config.batch_size * config.sequence_length / config.train_frequency == 512
        assert config.continuous_actor == "bounded_normal" and config.actor_gradient == "dynamics"
    assert load_config(str(ROOT / "configs" / "dreamerv3_dmc_vision.json")).image_network == "strided"
    for name in ("proprio", "vision"):
        small = load_config(str(ROOT / "configs" / f"dreamerv3_dmc_{name}_small.json"))
        assert small.environment == "dmc_env" and small.num_seeds == 2 and small.env_config.make_kwargs[
            "observation"] == ("states" if name == "proprio" else "pixels")
    assert DMC_SETTINGS["action_repeat"] == 2 and DMC_SETTINGS["size"] == 64
