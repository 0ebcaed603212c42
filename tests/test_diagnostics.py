"""Model diagnostics: hand-built sequences with an episode end inside them, a known world model written by
hand (zero errors, hand-computed returns, masked statistics), and a short run writing the diag_ fields."""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent.distributions import latents, make_heads, observation_distribution
from agent.training_step import run_values
from experiment import cli
from experiment.config import Config
from losses_and_evaluation import model_diagnostics, through_first_episode_end
from networks import RSSM, WorldModel
from replay_buffer import SequenceBatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_ACTIONS, NUM_CLASSES = 3, 5  # action 1 earns reward 1, action 2 terminates the episode
CONFIG = Config(num_features=1, feature_width=NUM_CLASSES, num_hidden_units=1 + NUM_ACTIONS, binary_state=False,
                sequence_length=8, batch_size=2, rollout_length=6, discount=0.9)


def known_world_model(reward_head=None, termination_head=None) -> WorldModel:
    """A world model written by hand (parameters unused) that is exact for the data of `two_sequences`.

    h = [steps since the carry was last reset, one-hot of the last action]; the latent is the observation's
    class; the decoder reads the step counter from h, so it is right only if the carry restarts at zero
    after every episode end."""
    def transition(params, h, z, action):
        return jnp.concatenate([h[..., :1] + 1.0, jax.nn.one_hot(action, NUM_ACTIONS)], -1)

    def decode(params, feat):
        h, z = feat[..., :1 + NUM_ACTIONS], feat[..., 1 + NUM_ACTIONS:]
        return jnp.stack([h[..., 0], jnp.sum(z * jnp.arange(NUM_CLASSES), -1)], -1)

    exact_reward = lambda params, h: jnp.stack([h[..., 2], jnp.zeros_like(h[..., 2])], -1)
    exact_termination = lambda params, h: 50.0 * (2.0 * h[..., 3] - 1.0)
    prior = lambda params, h: jnp.zeros((*h.shape[:-1], NUM_CLASSES))  # uniform
    posterior = lambda params, h, embed: 100.0 * jax.nn.one_hot(embed[..., 1].astype(jnp.int32), NUM_CLASSES)
    rssm = RSSM(latents(CONFIG), CONFIG.num_hidden_units, NUM_ACTIONS, 2,
                (transition, prior, lambda params, embed: embed, posterior))
    return WorldModel(
        init=None, encode=lambda params, obs: obs, rssm=rssm, decode=decode,
        reward=reward_head or exact_reward, termination=termination_head or exact_termination,
        observation=functools.partial(observation_distribution, CONFIG))


def always_action_1(params, feat):
    return jnp.broadcast_to(jnp.array([0.0, 100.0, 0.0]), (*feat.shape[:-1], NUM_ACTIONS))


def two_sequences() -> SequenceBatch:
    """Sequence 0 terminates at step 3 (action 2) and a new episode starts at step 4; sequence 1 is truncated
    by a time limit at step 5. obs = [steps since the episode (or the sequence) started, a class]."""
    action = np.array([[0, 1, 1, 2, 1, 0, 1, 1],
                       [1, 1, 0, 1, 1, 1, 0, 1]])
    terminated = np.zeros((2, 8), bool)
    terminated[0, 3] = True
    truncated = np.zeros((2, 8), bool)
    truncated[1, 5] = True
    counter = np.array([[0, 1, 2, 3, 0, 1, 2, 3],
                        [0, 1, 2, 3, 4, 5, 0, 1]])
    classes = np.arange(16).reshape(2, 8) % NUM_CLASSES
    return SequenceBatch(obs=jnp.asarray(np.stack([counter, classes], -1), jnp.float32),
                         action=jnp.asarray(action, jnp.int32), reward=jnp.asarray(action == 1, jnp.float32),
                         terminated=jnp.asarray(terminated), truncated=jnp.asarray(truncated))


def diagnostics(wm, batch=None, config=CONFIG):
    stats = model_diagnostics(config, run_values(config, {}), wm, make_heads(config, False), None, always_action_1,
                              None, batch or two_sequences(), jax.random.PRNGKey(0))
    return {name: float(value) for name, value in stats.items()}


def test_through_first_episode_end():
    ends = jnp.array([[0, 0], [1, 0], [0, 0], [1, 0]], bool)  # [K=4, N=2] time-major
    np.testing.assert_array_equal(through_first_episode_end(ends), [[1, 1], [1, 1], [0, 1], [0, 1]])


def test_known_model_has_zero_error_and_hand_computed_returns():
    stats = diagnostics(known_world_model())
    for name in ("observation_mse", "reward_mse", "reward_mse_nonzero", "open_loop_return_abs_error"):
        assert stats[name] == pytest.approx(0.0, abs=1e-5), name
    for name in ("reward_accuracy", "termination_accuracy", "termination_accuracy_terminal"):
        assert stats[name] == 1.0, name
    assert stats["kl"] == pytest.approx(math.log(NUM_CLASSES), rel=1e-5)  # one-hot posterior, uniform prior
    assert stats["posterior_entropy"] == pytest.approx(0.0, abs=1e-5)
    # Horizon 6 on steps 2..7. Sequence 0: rewards 1, 0 then the episode terminates (the new episode's
    # rewards must not count). Sequence 1: rewards 0, 1, 1, 1 up to the time limit at step 5.
    real = [1.0, 0.9 + 0.81 + 0.729]
    # The actor always earns 1 and never terminates; the rollout is cut at the truncation of sequence 1 only.
    imagined = [sum(0.9**k for k in range(6)), sum(0.9**k for k in range(4))]
    assert stats["real_return"] == pytest.approx(np.mean(real), rel=1e-5)
    assert stats["open_loop_return"] == pytest.approx(np.mean(real), rel=1e-5)
    assert stats["imagined_return"] == pytest.approx(np.mean(imagined), rel=1e-5)
    assert stats["imagined_return_error"] == pytest.approx(np.mean(imagined) - np.mean(real), rel=1e-5)


def test_carry_not_reset_would_show_as_reconstruction_error():
    batch = two_sequences()
    # Hide the episode end of sequence 0: the model's step counter runs on and misreads steps 4..7.
    stats = diagnostics(known_world_model(), batch._replace(terminated=jnp.zeros_like(batch.terminated)))
    # Counter error 4 on 4 steps of 16, on one of the two observation entries.
    assert stats["observation_mse"] == pytest.approx(4 * 16 / (16 * 2), rel=1e-5)


def test_masked_statistics_of_a_wrong_model_match_hand_computation():
    wm = known_world_model(reward_head=lambda p, h: jnp.stack([jnp.full(h.shape[:-1], 0.25)] * 2, -1),
                           termination_head=lambda p, h: jnp.full(h.shape[:-1], -1.0))  # never terminates
    batch = two_sequences()
    stats = diagnostics(wm, batch)
    rewards = np.asarray(batch.reward)
    assert stats["reward_mse"] == pytest.approx(np.mean((0.25 - rewards) ** 2), rel=1e-5)
    assert stats["reward_mse_nonzero"] == pytest.approx(0.75**2, rel=1e-5)
    assert stats["reward_accuracy"] == pytest.approx(np.mean(rewards == 0))  # 0.25 is within 0.5 of 0, not of 1
    # One terminal step among 16; the truncated step counts as a correct "does not terminate".
    assert stats["termination_accuracy"] == pytest.approx(15 / 16)
    assert stats["termination_accuracy_terminal"] == 0.0
    # Open loop with the replayed actions: reward 0.25 per step with continuation sigmoid(1), cut at the
    # first episode end (step 3 of sequence 0, window steps 0..1; step 5 of sequence 1, window steps 0..3).
    cont = 1.0 / (1.0 + math.exp(-1.0))
    open_loop = [sum(0.25 * (0.9 * cont) ** k for k in range(n)) for n in (2, 4)]
    real = [1.0, 0.9 + 0.81 + 0.729]
    assert stats["open_loop_return"] == pytest.approx(np.mean(open_loop), rel=1e-5)
    assert stats["open_loop_return_abs_error"] == pytest.approx(np.mean(np.abs(np.subtract(open_loop, real))), rel=1e-5)


def test_no_terminal_step_gives_nan_and_a_horizon_longer_than_the_sequence_is_cut():
    batch = two_sequences()
    batch = batch._replace(terminated=jnp.zeros_like(batch.terminated), action=jnp.ones_like(batch.action),
                           reward=jnp.ones_like(batch.reward))
    config = Config(**{**CONFIG.__dict__, "rollout_length": 20})
    stats = diagnostics(known_world_model(), batch, config)
    assert math.isnan(stats["termination_accuracy_terminal"])
    # Whole sequence (8 steps) from step 0; sequence 1 still stops at its time limit (step 5).
    real = [sum(0.9**k for k in range(8)), sum(0.9**k for k in range(6))]
    assert stats["real_return"] == pytest.approx(np.mean(real), rel=1e-5)
    assert stats["imagined_return"] == pytest.approx(np.mean(real), rel=1e-5)


def test_short_run_writes_diag_fields(tmp_path):
    out = tmp_path / "run.out"
    argv = ["-c", os.path.join(ROOT, "configs", "debug.json"), "--wandb", "disabled", "--no_progress",
            "--save_checkpoint", "", "-o", str(out), "--set", "num_steps=150"]
    assert cli.script_main(argv, description="test", single_seed=False) == 0
    records = [json.loads(line) for line in open(out)]
    assert [r["env_steps"] for r in records] == [50, 100, 150]
    assert not any(k.startswith("diag_") for r in records[:2] for k in r)  # training starts after step 100
    diag = {k: v for k, v in records[2].items() if k.startswith("diag_")}
    expected = {"observation_bit_error", "reward_mse", "reward_accuracy", "termination_accuracy", "kl",
                "posterior_entropy", "real_return", "imagined_return", "open_loop_return"}
    assert {f"diag_{name}" for name in expected} <= diag.keys()
    assert all(v is None or math.isfinite(v) for v in diag.values())
    assert 0.0 <= diag["diag_observation_bit_error"] <= 1.0
