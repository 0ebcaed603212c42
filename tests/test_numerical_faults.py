"""Numerical faults: a training update whose loss or gradient is non-finite leaves the seed's parameters and
optimizer states as they were; the run stops after that block with its records written, the last checkpoint
untouched and one sentence naming the seed, the loss and the env step, and the scripts exit 3. NaNs are forced
by poisoning one seed's replay or target critic (update level) or by an environment that returns NaN rewards
to one seed (command level, both drivers)."""

import dataclasses
import hashlib
import json
import math
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent import training_step
from agent.training_step import NUMERICAL_FAULT
from agent_environment_interaction_loop import BlockMetrics
from environments import environment_from_config, seed_environments
from experiment import cli, runner
from experiment.config import load_config
from initialization import make_agent
from runtime import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_update  # noqa: E402  (its replay fill)

DEBUG = os.path.join(ROOT, "configs", "debug.json")
REAL_SAVE = checkpoint.save  # the command-level tests wrap it to hash every checkpoint it writes
NAN_FROM_STEP = 60  # env step from which the poisoned seed's rewards are NaN (training starts after step 100)


@pytest.fixture(scope="module")
def debug_config():
    return load_config(DEBUG)


def _trainable_state(config, agent, num_seeds: int):
    """The debug config's initial state of `num_seeds` seeds with a replay that full batches can be sampled from."""
    envs = seed_environments(environment_from_config(config), range(num_seeds), jax_env=True)
    state = runner.initial_state(dataclasses.replace(config, num_seeds=num_seeds), agent, envs, seed=0)
    fill = jax.vmap(lambda buffer, key: bench_update.filled_replay(config, agent, envs.spec, buffer, key))
    return state._replace(replay=jax.jit(fill)(state.replay, jax.random.split(jax.random.PRNGKey(1), num_seeds)))


def _seed(tree, i: int):
    return jax.tree.map(lambda x: np.asarray(x)[i], tree)


def _assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _assert_finite(tree):
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(leaf).dtype, np.floating))


def test_a_faulty_update_keeps_its_seeds_parameters_and_leaves_the_other_seed_alone(debug_config):
    agent = make_agent(debug_config, environment_from_config(debug_config))
    update = jax.jit(jax.vmap(agent.train_update))
    state = _trainable_state(debug_config, agent, 2)
    clean, clean_metrics = jax.device_get(update(state))
    np.testing.assert_array_equal(clean_metrics[NUMERICAL_FAULT], [0, 0])

    # Seed 1's rewards NaN: its world-model loss is NaN (the actor and critic train on the posterior, which
    # does not read rewards, so only bit 0 is set).
    poisoned = state._replace(replay=state.replay._replace(reward=state.replay.reward.at[1].set(jnp.nan)))
    new, metrics = jax.device_get(update(poisoned))
    np.testing.assert_array_equal(metrics[NUMERICAL_FAULT], [0, 1])
    assert math.isnan(metrics["model_loss"][1])
    _assert_equal(_seed((new.params, new.opt_states), 1), _seed((state.params, state.opt_states), 1))
    _assert_finite((new.params, new.opt_states))
    _assert_equal(_seed((new.params, new.opt_states), 0), _seed((clean.params, clean.opt_states), 0))
    np.testing.assert_array_equal(new.updates, clean.updates)  # the shared counter and the keys move on
    np.testing.assert_array_equal(new.key, clean.key)

    # Seed 0's target critic NaN: the lambda-returns are NaN, so the actor and critic losses are (bits 1, 2),
    # and the whole update of seed 0 is skipped, its world model's included.
    nan_target = jax.tree.map(lambda x: x.at[0].set(jnp.nan), state.params.target_critic)
    poisoned = state._replace(params=state.params._replace(target_critic=nan_target))
    new, metrics = jax.device_get(update(poisoned))
    np.testing.assert_array_equal(metrics[NUMERICAL_FAULT], [6, 0])
    assert np.isfinite(metrics["model_loss"][0])
    _assert_equal(_seed((new.params, new.opt_states), 0), _seed((poisoned.params, poisoned.opt_states), 0))
    _assert_equal(_seed((new.params, new.opt_states), 1), _seed((clean.params, clean.opt_states), 1))


def test_a_non_finite_gradient_of_a_finite_loss_is_a_fault(debug_config, monkeypatch):
    real_loss = training_step.world_model_loss

    def loss_with_nan_gradient(wm, heads, values, params, batch, key):
        loss, aux = real_loss(wm, heads, values, params, batch, key)
        leaf = jax.tree.leaves(params)[0]
        # adds 0, whose gradient is NaN (sqrt of a negative number behind a `where`)
        return loss + jnp.sum(jnp.where(True, 0.0, jnp.sqrt(-1.0 - leaf**2))), aux

    monkeypatch.setattr(training_step, "world_model_loss", loss_with_nan_gradient)
    agent = make_agent(debug_config, environment_from_config(debug_config))
    state = _seed(_trainable_state(debug_config, agent, 1), 0)
    new, metrics = jax.device_get(jax.jit(agent.train_update)(state))
    assert np.isfinite(metrics["model_loss"]) and not np.isfinite(metrics["model_grad_norm"])
    assert int(metrics[NUMERICAL_FAULT]) == 1
    _assert_equal((new.params, new.opt_states), (state.params, state.opt_states))


def test_the_first_fault_of_a_block_and_its_sentence(tmp_path):
    steps, seeds = 50, 3
    codes = np.zeros((steps, seeds), np.int32)
    codes[29, 2], codes[39, 2], codes[39, 1] = 1, 7, 4  # rows 29 and 39: env steps 130 and 140
    metrics = BlockMetrics(None, None, None, {NUMERICAL_FAULT: codes})
    state = runner.RunState(**{**dict.fromkeys(runner.RunState._fields), "env_steps": np.full(seeds, 150)})
    faults = runner.numerical_faults(metrics, state, seed=4, num_steps=steps)
    assert faults == [(6, 130, 1), (5, 140, 4)]
    assert runner.numerical_fault_message(faults, None) == (
        "seed 6: the world-model loss or its gradient became non-finite at env step 130 (seed 5 too, in the same "
        "block); stopped without saving a checkpoint")
    missing = str(tmp_path / "run.ckpt")
    assert runner.numerical_fault_message([(5, 140, 7), (6, 140, 1), (4, 150, 2)], missing) == (
        "seed 5: the world-model, actor and critic losses or their gradients became non-finite at env step 140 "
        f"(seeds 4, 6 too, in the same block); stopped before any checkpoint was saved to {missing}")
    assert runner.numerical_faults(metrics._replace(train={NUMERICAL_FAULT: codes * 0}), state, 4, steps) == []


class NanRewardEnvironment:
    """A JAX environment whose seed with reset key `poisoned_key` gets NaN rewards from env step `from_step` on
    (the loop resets each seed once, with its own key; the episodes after it start inside `step`)."""

    def __init__(self, env, poisoned_key, from_step: int):
        self.env, self.spec, self.poisoned_key, self.from_step = env, env.spec, np.asarray(poisoned_key), from_step

    def reset(self, key):
        env_state, obs = self.env.reset(key)
        return (env_state, jnp.all(key == self.poisoned_key), jnp.int32(0)), obs

    def step(self, key, state, action):
        env_state, poisoned, steps = state
        env_state, obs, reward, terminated, truncated = self.env.step(key, env_state, action)
        reward = jnp.where(poisoned & (steps + 1 >= self.from_step), jnp.nan, reward)
        return (env_state, poisoned, steps + 1), obs, reward, terminated, truncated


def file_hash(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _poisoned_command(monkeypatch, tmp_path, name: str, seed: int, poisoned_seed: int, *args, single_seed=False):
    """Runs the debug config (200 env steps, checkpoints every 50) through cli.script_main (the scripts' entry)
    with NaN rewards for `poisoned_seed` from NAN_FROM_STEP on. Returns (exit code, output records,
    [(env step, SHA-256) of each
    checkpoint saved], checkpoint path)."""
    num_seeds = 1 if single_seed else 2
    env_keys = runner._seed_keys(dataclasses.replace(load_config(DEBUG), num_seeds=num_seeds), seed)[1]
    monkeypatch.setattr(runner, "environment_from_config", lambda config: NanRewardEnvironment(
        environment_from_config(config), env_keys[poisoned_seed - seed], NAN_FROM_STEP))
    saved = []

    def save(path, state, header):
        REAL_SAVE(path, state, header)
        saved.append((header["env_steps"], file_hash(path)))

    monkeypatch.setattr(checkpoint, "save", save)
    ckpt, out = tmp_path / f"{name}.ckpt", tmp_path / f"{name}.out"
    code = cli.script_main(["-c", DEBUG, "-s", str(seed), "-o", str(out), "--save_checkpoint", str(ckpt),
                            "--wandb", "disabled", "--no_progress", "--set", "checkpoint_frequency=50",
                            "--set", f"num_seeds={num_seeds}", *args], "test", single_seed=single_seed)
    return code, [json.loads(line) for line in open(out)], saved, ckpt


SENTENCE = re.compile(r"error: seed (\d+): the world-model loss or its gradient became non-finite at env step "
                      r"(\d+); stopped without saving: the checkpoint (\S+) holds env step 100")


def test_a_nan_in_one_seed_stops_both_drivers_at_the_same_update_keeping_the_checkpoint(
        monkeypatch, tmp_path, capsys):
    faults = {}  # (seed, env step) of the fault each driver reports
    for jax_env in (True, False):
        code, records, saved, ckpt = _poisoned_command(monkeypatch, tmp_path, f"jax_env_{jax_env}", 5, 6,
                                                       "--set", f"jax_env={str(jax_env).lower()}")
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == runner.NUMERICAL_FAULT_EXIT_CODE == 3, captured.err
        assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
        match = SENTENCE.fullmatch(lines[0])
        assert match and match[1] == "6" and match[3] == str(ckpt), lines
        faults[jax_env] = match.group(1, 2)
        fault_step = int(match[2])
        assert 100 < fault_step <= 150 and fault_step % 10 == 0  # an update of the block that ends at 150
        assert "mean return" not in captured.out  # no summary of a run that failed

        # The records of every block up to and including the faulty one; the healthy seed trained on.
        assert [(r["env_steps"], r["seed"]) for r in records] == [(s, i) for s in (50, 100, 150) for i in (5, 6)]
        healthy, faulty = records[-2], records[-1]
        assert math.isnan(faulty["model_loss"]) and math.isfinite(healthy["model_loss"])
        assert all(NUMERICAL_FAULT not in r for r in records)
        # The checkpoints of steps 50 and 100 were saved, the one of step 100 is byte-identical, no later one.
        assert [step for step, _ in saved] == [50, 100]
        assert file_hash(ckpt) == saved[-1][1] and not os.path.exists(f"{ckpt}.tmp")
    assert faults[True] == faults[False]


def test_a_single_seed_run_without_checkpoints_stops_with_one_sentence(monkeypatch, tmp_path, capsys):
    # A single seed runs the unvmapped update inside the block (agent_environment_interaction_loop).
    code, records, saved, ckpt = _poisoned_command(monkeypatch, tmp_path, "single", 3, 3, "--save_checkpoint", "",
                                                   single_seed=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1, err
    assert re.fullmatch(r"error: seed 3: the world-model loss or its gradient became non-finite at env step "
                        r"1[1-5]0; stopped without saving a checkpoint", err[0]), err
    assert [r["env_steps"] for r in records] == [50, 100, 150] and saved == [] and not ckpt.exists()


def test_run_raises_the_fault_with_finite_parameters(debug_config):
    # The Python drivers (their jitted pieces are those of the command-level test's jax_env=false run)
    config = dataclasses.replace(debug_config, num_seeds=2, jax_env=False)
    keys = runner._seed_keys(config, 0)[1]
    env = NanRewardEnvironment(environment_from_config(config), keys[0], NAN_FROM_STEP)
    with pytest.raises(runner.NumericalFault, match="^seed 0: the world-model loss") as fault:
        runner.run(config, env, seed=0, output=None, progress=False)
    state = fault.value.state
    assert int(state.env_steps[0]) == 150
    _assert_finite((state.params, state.opt_states))
