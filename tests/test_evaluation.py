"""Evaluation episodes, videos and TensorBoard files: hand-set policies on the grid world give their known
returns, the model's dream is aligned with the real steps, video files decode to the expected frames, event files
read back with their tags, and a run with all of it on trains exactly as a run without."""

import glob
import importlib.util
import json
import os

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from test_diagnostics import CONFIG as KNOWN_MODEL_CONFIG
from test_diagnostics import known_world_model

from agent.evaluation import (
    DREAM_CONTEXT,
    Dream,
    Policy,
    Recording,
    agent_policy,
    crosses,
    dream,
    observation_keys,
    record_episode,
    run_episodes,
)
from envs.grid_world import OpenGridEnvironment
from envs.protocol import EnvSpec
from experiment import cli
from experiment.config import ConfigError, config_to_dict, load_config
from initialization import make_agent
from outputs import tensorboard_events
from outputs.sinks import Block
from outputs.videos import MIN_FRAME_PIXELS, PROGRESS_ROWS, VideoFiles, write_run_media
from runtime import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG = os.path.join(ROOT, "configs", "debug.json")
UP, RIGHT, DOWN = 0, 1, 2


def fixed_policy(choose) -> Policy:
    """A policy of the observation alone (no carry): `choose(obs) -> action`."""
    return Policy(init=lambda: jnp.zeros(()), act=lambda carry, obs, key: (choose(obs), None),
                  advance=lambda carry, aux, action, end: carry)


def agent_row_column(obs):
    cell = jnp.argmax(obs[..., 0].reshape(-1))
    return cell // OpenGridEnvironment.size, cell % OpenGridEnvironment.size


def right_then_down(obs):
    row, column = agent_row_column(obs)
    return jnp.where(column < OpenGridEnvironment.size - 1, RIGHT, DOWN).astype(jnp.int32)


def test_hand_set_policy_reaches_the_goal_every_episode_in_its_shortest_path():
    env = OpenGridEnvironment()
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    episodes = jax.jit(jax.vmap(lambda key: run_episodes(env, fixed_policy(right_then_down), key, 6, 1000)))(keys)
    np.testing.assert_array_equal(episodes.returns, np.ones((4, 6)))
    # the recorded episode from the same key starts where the evaluation does: its length is the first episode's
    recording = jax.vmap(lambda key: record_episode(env, fixed_policy(right_then_down), key, 20))(keys)
    np.testing.assert_array_equal(recording.length, episodes.lengths[:, 0])
    for i in range(4):  # the shortest path: the Manhattan distance from the first cell to the goal
        row, column = map(int, agent_row_column(recording.obs[i, 0]))
        assert episodes.lengths[i, 0] == 2 * (env.size - 1) - row - column
        assert recording.reward[i, :int(recording.length[i])].sum() == 1.0


def test_a_policy_that_never_arrives_is_truncated_and_the_step_cap_leaves_episodes_out():
    env = OpenGridEnvironment()
    always_up = fixed_policy(lambda obs: jnp.int32(UP))
    episodes = jax.jit(lambda key: run_episodes(env, always_up, key, 3, 2 * env.max_steps + 10))(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(episodes.returns[:2], [0.0, 0.0])
    np.testing.assert_array_equal(episodes.lengths, [env.max_steps, env.max_steps, 0])
    assert np.isnan(episodes.returns[2])  # unfinished within the cap


@pytest.mark.parametrize("greedy", [True, False])
def test_the_agent_with_a_hand_set_actor_plays_as_the_same_fixed_policy(greedy):
    """The actor's output layer set to always prefer `right` by far: the greedy agent (and, at these odds, the
    sampling one) plays exactly as the hand-written always-right policy, episode for episode."""
    config = load_config(DEBUG, ["environment=open_grid_env", "env_config.env_name=OpenGrid"])
    env = OpenGridEnvironment()
    agent = make_agent(config, env)
    state = agent.init_state(jax.random.PRNGKey(0), *env.reset(jax.random.PRNGKey(1)))
    actor = jax.tree.map(jnp.zeros_like, state.params.actor)
    last = sorted(actor)[-1]
    actor[last]["b"] = actor[last]["b"].at[RIGHT].set(100.0)
    params = state.params._replace(actor=actor)
    key = jax.random.PRNGKey(7)
    agent_episodes = jax.jit(lambda key: run_episodes(env, agent_policy(config, agent, params, {}, greedy), key, 4,
                                                      500))(key)
    fixed_episodes = jax.jit(lambda key: run_episodes(env, fixed_policy(lambda obs: jnp.int32(RIGHT)), key, 4,
                                                      500))(key)
    np.testing.assert_array_equal(agent_episodes.returns, fixed_episodes.returns)
    np.testing.assert_array_equal(agent_episodes.lengths, fixed_episodes.lengths)


def test_dream_predicts_frame_t_and_the_reward_of_transition_t_in_step():
    """With the hand-written model of test_diagnostics (h counts steps and holds the last action; the decoder
    reads the count; the reward head pays for action 1), the reconstruction and the open-loop prediction of
    frame t both show t, and the predicted reward of transition t is that of action t."""
    steps = DREAM_CONTEXT + 6
    action = jnp.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0], jnp.int32)[:steps]
    obs = jnp.stack([jnp.arange(steps, dtype=jnp.float32), jnp.full(steps, 2.0)], -1)  # [step count, class]
    dreamed = jax.jit(lambda key: dream(KNOWN_MODEL_CONFIG, known_world_model(), None, obs, action, key))(
        jax.random.PRNGKey(0))
    np.testing.assert_allclose(dreamed.reconstruction, obs, atol=1e-5)
    np.testing.assert_allclose(dreamed.prediction[:, 0], np.arange(steps), atol=1e-5)
    np.testing.assert_allclose(dreamed.reward, (np.asarray(action) == 1).astype(np.float32), atol=1e-5)


def test_observation_keys_differ_by_seed_step_and_tag():
    a, b = observation_keys([0, 1], 1, 100), observation_keys([0, 1], 1, 150)
    c = observation_keys([0, 1], 2, 100)
    keys = {tuple(np.asarray(k)) for k in (*a, *b, *c)}
    assert len(keys) == 6
    assert crosses(100, 50, 100) and not crosses(150, 50, 100) and not crosses(100, 50, 0)


def _media(spec: EnvSpec, length: int, frames: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    obs = (rng.random((frames, *spec.obs_shape)) > 0.7).astype(np.float32)
    obs[1] = obs[0]  # two identical frames in a row must stay two frames
    recording = Recording(obs, np.zeros(frames, np.int32), np.ones(frames, np.float32), np.int32(length))
    dream_steps = min(frames, 20)
    dreamed = Dream(obs[:dream_steps] * 0.5, obs[:dream_steps] * 0.25, np.zeros(dream_steps, np.float32))
    return recording, dreamed


def _gif_frames(path):
    with Image.open(path) as image:
        assert image.format == "GIF"
        sizes = set()
        for index in range(image.n_frames):
            image.seek(index)
            sizes.add(image.size)
        return image.n_frames, sizes


@pytest.mark.parametrize("length", [7, 30])
def test_video_files_decode_to_the_expected_frames_and_size(tmp_path, length):
    spec = EnvSpec((10, 10, 4), np.dtype(np.float32), 3)  # MinAtar-like channels
    recording, dreamed = _media(spec, length)
    files = write_run_media(str(tmp_path / "seed0"), 1200, spec, True, recording, dreamed, DREAM_CONTEXT)
    assert sorted(files) == ["video/dream", "video/dream_strip", "video/episode"]
    assert files["video/episode"] == str(tmp_path / "seed0" / "000001200_episode.gif")
    scale = -(-MIN_FRAME_PIXELS // 10)
    frame = (10 * scale, 10 * scale + PROGRESS_ROWS)  # (width, height): one cell a block of scale x scale pixels
    assert _gif_frames(files["video/episode"]) == (length, {frame})
    dream_frame = (3 * 10 * scale + 2 * 2, frame[1])  # real | reconstruction | prediction, 2-pixel separators
    assert _gif_frames(files["video/dream"]) == (min(length, 20), {dream_frame})
    with Image.open(files["video/dream_strip"]) as strip:
        assert strip.format == "PNG" and strip.size[0] > strip.size[1] > 0
    assert not glob.glob(str(tmp_path / "seed0" / "*.tmp"))
    # channel 0 is drawn red: a frame holding only channel 0 at a cell shows red there
    with Image.open(files["video/episode"]) as image:
        first = np.asarray(image.convert("RGB"))
    rows, columns = np.nonzero(recording.obs[0][..., 0] * (recording.obs[0][..., 1:].sum(-1) == 0))
    assert first[rows[0] * scale, columns[0] * scale].tolist() == [230, 26, 26]


def test_vector_observations_get_a_prediction_plot(tmp_path):
    spec = EnvSpec((4,), np.dtype(np.float32), 2)
    recording, dreamed = _media(spec, 12)
    files = write_run_media(str(tmp_path), 50, spec, False, recording, dreamed, DREAM_CONTEXT)
    assert list(files) == ["video/prediction"]
    with Image.open(files["video/prediction"]) as image:
        assert image.format == "PNG"


def read_events(path: str) -> dict:
    """{"scalars": {tag: [(step, value)]}, "images": {tag: [(step, width, height, encoded bytes)]}} of an event
    file, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(path, size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    return {"scalars": {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in tags["scalars"]},
            "images": {tag: [(e.step, e.width, e.height, e.encoded_image_string) for e in events.Images(tag)]
                       for tag in tags["images"]}}


def test_event_files_read_back_with_their_tags(tmp_path):
    spec = EnvSpec((10, 5), np.dtype(np.float32), 3)
    recording, dreamed = _media(spec, 9)
    media = write_run_media(str(tmp_path / "media"), 100, spec, True, recording, dreamed, DREAM_CONTEXT)
    sink = tensorboard_events.TensorBoardSink(str(tmp_path / "tb"), [3, 4])
    records = [{"seed": s, "env_steps": 100, "episode_return": 0.5 * s, "model_loss": None, "eval_returns": [1.0]}
               for s in (3, 4)]
    sink.write(Block(100, records, [[], []], None, [media, {}]))
    sink.write(Block(150, [{**r, "env_steps": 150} for r in records], [[], []], None, [{}, {}]))
    sink.close()
    (path,) = glob.glob(str(tmp_path / "tb" / "seed3" / "events.out.tfevents.*"))
    events = read_events(path)
    # None and lists are not scalars, nor env_steps
    assert events["scalars"] == {"episode_return": [(100, 1.5), (150, 1.5)]}
    assert sorted(events["images"]) == ["video/dream", "video/dream_strip", "video/episode"]
    ((step, width, height, encoded),) = events["images"]["video/episode"]
    with open(media["video/episode"], "rb") as file:
        assert step == 100 and encoded == file.read()
    with Image.open(media["video/episode"]) as gif:
        assert (width, height) == gif.size
    (path,) = glob.glob(str(tmp_path / "tb" / "seed4" / "events.out.tfevents.*"))
    assert read_events(path) == {"scalars": {"episode_return": [(100, 2.0), (150, 2.0)]}, "images": {}}


def _run(tmp_path, name, *args):
    folder = tmp_path / name
    folder.mkdir()
    output, ckpt = str(folder / "out.jsonl"), str(folder / "run.ckpt")
    argv = ["-c", DEBUG, "--wandb", "disabled", "--no_progress", "-o", output, "--save_checkpoint", ckpt, *args]
    assert cli.script_main(argv, description="test", single_seed=False) == 0
    with open(output) as file:
        records = [json.loads(line) for line in file]
    with np.load(ckpt, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "__header__"}
    return records, arrays, folder


def _training_fields(record):
    return {k: v for k, v in record.items() if not k.startswith("eval_") and k != "steps_per_second"}


@pytest.mark.parametrize("overrides, eval_every", [
    (["num_seeds=2"], 100),
    (["environment=gymnasium_env", "jax_env=false", "env_config.env_name=CartPole-v1", "binary_state=false",
      "num_steps=100", "training_start_time=60", "eval_max_steps=200"], 50),
], ids=["gymnax", "gymnasium"])
def test_evaluation_and_videos_leave_the_training_run_bit_identical(tmp_path, overrides, eval_every):
    sets = [arg for key in overrides for arg in ("--set", key)]
    plain, plain_state, _ = _run(tmp_path, "plain", *sets)
    observed, observed_state, folder = _run(tmp_path, "observed", *sets, "--set", f"eval_every={eval_every}", "--set",
                                            "eval_episodes=3", "--video", "--tensorboard", str(tmp_path / "tb"))
    assert [_training_fields(r) for r in observed] == [_training_fields(r) for r in plain]
    assert observed_state.keys() == plain_state.keys()
    for name in plain_state:
        np.testing.assert_array_equal(observed_state[name], plain_state[name], err_msg=name)
    evaluated = [r for r in observed if "eval_return" in r]
    assert [r["env_steps"] for r in evaluated] == [r["env_steps"] for r in observed if r["env_steps"] % eval_every == 0]
    assert any(r["updates"] > 0 for r in evaluated)  # evaluated after training started too
    assert evaluated
    for r in evaluated:
        assert 1 <= len(r["eval_returns"]) <= 3 and r["eval_return"] == pytest.approx(np.mean(r["eval_returns"]))
    last = max(r["env_steps"] for r in observed)
    seeds = sorted({r["seed"] for r in observed})
    for seed in seeds:
        (events_path,) = glob.glob(str(tmp_path / "tb" / f"seed{seed}" / "events.out.tfevents.*"))
        events = read_events(events_path)
        tags = {*events["scalars"], *events["images"]}
        assert {"episode_return", "eval_return", "eval_length", "updates"} <= tags
        eval_steps = [step for step, _ in events["scalars"]["eval_return"]]
        assert eval_steps == [r["env_steps"] for r in evaluated if r["seed"] == seed]
        videos = sorted(os.listdir(folder / "out_videos" / f"seed{seed}"))
        if "CartPole-v1" in str(overrides):
            # gymnasium draws CartPole with pygame: where it is installed (requirements-craftax.txt brings it),
            # the recorded episode is also a GIF of the rendered frames
            rendered = [f"{last:09d}_episode.gif"] if importlib.util.find_spec("pygame") else []
            assert videos == [*rendered, f"{last:09d}_prediction.png"] and "video/prediction" in tags
        else:
            assert videos == [f"{last:09d}_{name}" for name in ("dream.gif", "dream.png", "episode.gif")]
            assert {"video/episode", "video/dream", "video/dream_strip"} <= tags
            frames, _ = _gif_frames(folder / "out_videos" / f"seed{seed}" / videos[2])
            assert frames == 9  # a Catch episode: the ball falls 9 rows


def test_a_file_where_a_folder_is_needed_is_refused(tmp_path, capsys):
    path = tmp_path / "taken"
    path.write_text("x")
    argv = ["-c", DEBUG, "--wandb", "disabled", "--no_progress", "-o", str(tmp_path / "o"), "--save_checkpoint", "",
            "--tensorboard", str(path)]
    assert cli.script_main(argv, description="test", single_seed=False) == 2
    assert "--tensorboard" in capsys.readouterr().err
    assert path.read_text() == "x"


def test_observation_keys_are_checked_and_a_resume_may_change_them(capsys):
    argv = ["-c", DEBUG, "--wandb", "disabled", "--set", "eval_policy=greedy"]
    assert cli.script_main(argv, description="test", single_seed=False) == 2
    assert capsys.readouterr().err == "error: eval_policy must be one of mode, sample, got 'greedy'\n"
    with pytest.raises(ConfigError, match="eval_every must be >= 0"):
        load_config(DEBUG, ["eval_every=-5"])
    stored = config_to_dict(load_config(DEBUG))
    changed = config_to_dict(load_config(DEBUG, ["eval_every=100", "eval_policy=sample", "video_every=50"]))
    assert checkpoint.config_differences(stored, changed) == []
    assert checkpoint.config_differences(stored, config_to_dict(load_config(DEBUG, ["beta=0.5"])))


class RenderedWalk(gymnasium.Env):
    """A gymnasium environment with vector observations and an rgb_array render: a lit column walks one step
    to the right per env step, whatever the action; the episode ends after 7 steps."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    observation_space = gymnasium.spaces.Box(0.0, 10.0, (2,), np.float32)
    action_space = gymnasium.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode, self.t = render_mode, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0, 1.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t, 1.0], np.float32), 1.0, self.t >= 7, False, {}

    def render(self):
        frame = np.zeros((6, 8, 3), np.uint8)
        frame[:, self.t] = 255
        return frame


def test_python_environments_videos_use_their_rgb_array_render(tmp_path):
    from agent.evaluation import RunObserver
    from environments import environment_from_config, seed_environments
    from experiment.runner import initial_state, runs_of

    if "RenderedWalk-v0" not in gymnasium.envs.registry:
        gymnasium.register(id="RenderedWalk-v0", entry_point=RenderedWalk)
    config = load_config(DEBUG, ["environment=gymnasium_env", "jax_env=false", "env_config.env_name=RenderedWalk-v0",
                                 "binary_state=false", "num_seeds=2"])
    env = environment_from_config(config)
    agent = make_agent(config, env)
    state = initial_state(config, agent, seed_environments(env, [0, 1], False), 0)
    observer = RunObserver(config, env, agent, runs_of(config, 0), str(tmp_path))
    records = [{}, {}]
    recordings = observer.after_block(state._replace(env_steps=state.env_steps + 200), records, 200)
    observer.close()
    assert records == [{}, {}]  # eval_every is 0: no evaluation
    block = Block(200, records, [[], []], recordings, [{}, {}])
    VideoFiles(str(tmp_path), [0, 1], [{}, {}], env.spec, False, DREAM_CONTEXT).write(block)
    for files in block.media:
        assert sorted(files) == ["video/episode", "video/prediction"]
        assert _gif_frames(files["video/episode"]) == (7, {(8, 6 + PROGRESS_ROWS)})
        with Image.open(files["video/episode"]) as gif:
            gif.seek(3)
            frame = np.asarray(gif.convert("RGB"))
        assert frame[0, 3].tolist() == [255, 255, 255] and frame[0, 4].tolist() == [0, 0, 0]  # step 3's column
