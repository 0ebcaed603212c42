"""The Atari family (envs/atari_envs.py, envpool): its settings reach envpool as docs/atari.md says, episode ends
are reported on the pool's reset step, the compiled pool and the Python-stepped pool give the same numbers, a
2-seed run is saved and resumed, and bad input is refused with one sentence."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("envpool")

from envs.atari_envs import ATARI_SETTINGS, AtariEnvironment, atari_games  # noqa: E402
from experiment.cli import script_main as main  # noqa: E402
from experiment.config import ConfigError  # noqa: E402
from tests.output_records import assert_same_run_records, records_without_timing  # noqa: E402

# A run small enough for the suite: 16x16 frames, a tiny model, episodes cut at 30 agent steps (120 frames).
TINY = ["num_seeds=2", "num_steps=160", "eval_frequency=40", "buffer_size=200", "training_start_time=40",
        "batch_size=2", "sequence_length=8", "train_frequency=20", "num_hidden_units=16", "num_features=4",
        "feature_width=4", "cnn_depth=2", "rollout_length=3", "eval_every=0", "checkpoint_frequency=80",
        "env_config.frame_size=16", "env_config.max_episode_frames=120"]


def _args(*sets: str) -> list[str]:
    return [a for item in sets for a in ("--set", item)]


def _records(path) -> list[dict]:
    with open(path) as file:
        return [json.loads(line) for line in file]


def test_dreamerv3_atari100k_settings_reach_envpool():
    env = AtariEnvironment("Pong")
    pool = env.pool([3, 4], compiled=False)
    config = pool.pool.spec.config
    assert (config.img_height, config.img_width, config.gray_scale) == (64, 64, False)
    assert config.frame_skip == 4 and config.stack_num == 1  # action repeat 4, no frame stacking
    assert config.noop_max == 30 and config.repeat_action_probability == 0.0  # no-op starts, no sticky actions
    assert config.episodic_life is False and config.zero_discount_on_life_loss is False  # lives unused
    assert config.reward_clip is False and config.full_action_space is False and config.use_fire_reset is False
    assert config.max_episode_steps == 27_000  # 108,000 frames
    assert list(config.env_seed) == [3, 4]  # each game seeded with its run's seed
    assert env.spec.obs_shape == (64, 64, 3) and env.spec.obs_dtype == np.uint8
    assert env.spec.num_actions == 6  # Pong's minimal action set
    pool.close()


def test_settings_are_env_config_keys():
    env = AtariEnvironment("Breakout", frame_size=32, gray_scale=True, action_repeat=2, noop_max=0,
                           sticky_actions=0.25, full_action_space=True, episodic_life=True, reward_clip=True,
                           max_episode_frames=4000)
    assert env.spec.obs_shape == (32, 32, 1) and env.spec.num_actions == 18
    o = env.options
    assert (o["frame_skip"], o["noop_max"], o["repeat_action_probability"]) == (2, 0, 0.25)
    assert o["episodic_life"] and o["reward_clip"] and o["max_episode_steps"] == 2000
    assert set(ATARI_SETTINGS) >= {"frame_size", "action_repeat", "noop_max", "sticky_actions", "episodic_life",
                                   "max_episode_frames", "full_action_space", "reward_clip"}


def _play(pool, steps: int, seed: int = 0):
    """(obs, reward, terminated, truncated) of `steps` steps of random actions, stacked over time."""
    actions = np.random.default_rng(seed).integers(0, pool.spec.num_actions, (steps, pool.num), dtype=np.int32)
    state, obs = pool.reset(None)
    if pool.compiled:
        def body(state, action):
            state, obs, reward, terminated, truncated = pool.step(None, state, action)
            return state, (obs, reward, terminated, truncated)
        _, outputs = jax.jit(lambda s, a: jax.lax.scan(body, s, a))(jax.tree.map(jnp.asarray, state), actions)
        return obs, jax.tree.map(np.asarray, outputs)
    outputs = [pool.step(None, state, action)[1:] for action in actions]
    return obs, tuple(np.stack(x) for x in zip(*outputs))


def test_episode_end_is_reported_on_the_reset_step_and_both_drivers_agree():
    env = AtariEnvironment("Pong", frame_size=16, max_episode_frames=40)  # 10 agent steps an episode
    first_python, python = _play(env.pool([5, 6], compiled=False), 25)
    first_compiled, compiled = _play(env.pool([5, 6], compiled=True), 25)
    np.testing.assert_array_equal(first_python, first_compiled)
    for a, b in zip(python, compiled, strict=True):
        np.testing.assert_array_equal(a, b)
    obs, reward, terminated, truncated = python
    assert obs.shape == (25, 2, 16, 16, 3) and obs.dtype == np.uint8
    # the pool truncates at its 10th step; the adapter reports it on the 11th, the pool's reset step (reward 0)
    assert np.flatnonzero(truncated[:, 0]).tolist() == [10, 21] and not terminated.any()
    assert (reward[truncated] == 0).all()


def test_compiled_and_python_drivers_give_the_same_records_and_a_2_seed_run_resumes(tmp_path, capsys):
    common = ["-c", "configs/dreamerv3_atari100k_small.json", "--wandb", "disabled", "--no_progress"]
    outputs = {}
    for jax_env in ("true", "false"):
        out, ckpt = tmp_path / f"{jax_env}.out", tmp_path / f"{jax_env}.ckpt"
        assert main(common + ["-o", str(out), "--save_checkpoint", str(ckpt)]
                    + _args(*TINY, f"jax_env={jax_env}"), "test", single_seed=False) == 0
        outputs[jax_env] = records_without_timing(out)
    compiled, python = outputs["true"], outputs["false"]
    assert_same_run_records(python, compiled)
    assert sum(r["episodes"] for r in compiled if r["seed"] == 0) >= 4  # episodes each block ended
    assert max(r["updates"] for r in compiled) >= 5
    # resumed from the compiled run's checkpoint: a fresh pool, each seed on a new episode, training goes on
    ckpt, out = tmp_path / "true.ckpt", tmp_path / "true.out"
    assert main(common + ["-o", str(out), "--save_checkpoint", str(ckpt), "--load_checkpoint", str(ckpt)]
                + _args(*TINY, "jax_env=true", "num_steps=240"), "test", single_seed=False) == 0
    records = _records(out)
    assert [r["env_steps"] for r in records if r["seed"] == 0] == [40, 80, 120, 160, 200, 240]
    resumed = [r for r in records if r["env_steps"] > 160]
    assert resumed[-1]["updates"] > compiled[-1]["updates"] and sum(r["episodes"] for r in resumed) >= 2
    assert "resuming from env step 160" in capsys.readouterr().out


@pytest.mark.parametrize("sets, fragments", [
    (["env_config.env_name=Pongg"], ["'Pongg' is not an Atari game", "Pong", "Breakout"]),
    (["env_config.frame_sizes=32"], ["takes no env_config.frame_sizes", "frame_size"]),
    (["env_config.noop_max=-1"], ["env_config.noop_max must be an integer >= 0"]),
    (["env_config.sticky_actions=2"], ["env_config.sticky_actions must be a probability"]),
    (["env_config.frame_size=48", "image_network=strided"], ["48"]),
])
def test_refusals_exit_2_with_one_sentence(sets, fragments, capsys, tmp_path):
    argv = ["-c", "configs/dreamerv3_atari100k_small.json", "-o", str(tmp_path / "out"), "--save_checkpoint", "",
            "--wandb", "disabled"] + _args(*sets)
    assert main(argv, "test", single_seed=False) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "out").exists()


def test_unknown_game_names_the_valid_ones():
    with pytest.raises(ConfigError, match="choose one of .*MsPacman"):
        AtariEnvironment("pong")
    assert {"Pong", "Breakout", "MsPacman", "Freeway", "Krull"} <= set(atari_games())
