"""The Craftax adapter (environment craftax_env): reset/step shapes and dtypes (symbolic and pixels), auto-reset,
time limit as truncation and the end of the game as termination, seeds that differ, seed i of a multi-seed run
equal to the single-seed run, achievements in the output records, and the refusals (package missing, unknown
id). Craftax's step compiles slowly, so the compiled pieces are shared by the module's tests."""

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("craftax")

from environments import make_environment  # noqa: E402
from envs.craftax_envs import CRAFTAX_IDS, CraftaxEnvironment  # noqa: E402
from experiment.config import ConfigError, load_config  # noqa: E402
from experiment.runner import run  # noqa: E402
from runtime import checkpoint  # noqa: E402

SYMBOLIC, PIXELS = "Craftax-Classic-Symbolic-v1", "Craftax-Classic-Pixels-v1"
MAX_TIMESTEPS = 12  # a short time limit, so that episodes end within a few steps


@pytest.fixture(scope="module")
def symbolic():
    """(env, jitted vmapped reset, step and episode_statistics) of Classic-Symbolic with a short time limit."""
    env = CraftaxEnvironment(SYMBOLIC, max_timesteps=MAX_TIMESTEPS)
    return env, jax.jit(jax.vmap(env.reset)), jax.jit(jax.vmap(env.step)), jax.jit(jax.vmap(env.episode_statistics))


def _keys(seed: int, count: int = 2):
    return jax.random.split(jax.random.key(seed), count)


def test_symbolic_shapes_dtypes_and_auto_reset_at_the_time_limit(symbolic):
    env, reset, step, statistics = symbolic
    assert env.spec.obs_shape == (1345,) and env.spec.obs_dtype == np.float32 and env.spec.num_actions == 17
    assert not env.spec.continuous
    state, obs = reset(_keys(0))
    assert obs.shape == (2, 1345) and obs.dtype == jnp.float32
    first_obs = obs
    for t in range(1, MAX_TIMESTEPS + 1):
        state, obs, reward, terminated, truncated = step(_keys(t), state, jnp.array([t % 17, (3 * t) % 17]))
        assert reward.shape == (2,) and reward.dtype == jnp.float32
        assert terminated.dtype == jnp.bool_ and truncated.dtype == jnp.bool_
        assert obs.shape == (2, 1345) and obs.dtype == jnp.float32
        if t < MAX_TIMESTEPS:
            assert not truncated.any() and not terminated.any()
    # The time limit is a truncation, and the step auto-resets: a new episode at timestep 0, a fresh world.
    assert truncated.all() and not terminated.any()
    np.testing.assert_array_equal(state.game.timestep, [0, 0])
    np.testing.assert_array_equal(state.episode_return, [0.0, 0.0])
    assert not np.array_equal(obs, first_obs)  # the step key drew another world than the first reset's
    stats = statistics(state)
    assert stats["achievements"].dtype == jnp.int32 and len(stats) == 2 + 22
    np.testing.assert_array_equal(stats["achievements"],
                                  sum(stats[f"achievement_{name}"].astype(int) for name in env.achievement_names))


def test_the_end_of_the_game_is_a_termination(symbolic):
    env, reset, step, statistics = symbolic
    state, _ = reset(_keys(0))
    # Seed 0 at 0 health dies at its next step; seed 1 plays on.
    dying = state._replace(game=state.game.replace(player_health=state.game.player_health.at[0].set(0)))
    state, _, _, terminated, truncated = step(_keys(1), dying, jnp.array([0, 0]))
    np.testing.assert_array_equal(terminated, [True, False])
    np.testing.assert_array_equal(truncated, [False, False])
    np.testing.assert_array_equal(state.game.timestep, [0, 1])  # seed 0 starts a new episode


def test_two_seeds_differ(symbolic):
    _, reset, step, _ = symbolic
    state, obs = reset(_keys(0))
    assert not np.array_equal(obs[0], obs[1])
    state, obs, *_ = step(_keys(1), state, jnp.array([1, 1]))
    assert not np.array_equal(obs[0], obs[1])


@pytest.mark.parametrize("env_name, obs_shape, num_actions", [
    (PIXELS, (63, 63, 3), 17), ("Craftax-Symbolic-v1", (8268,), 43), ("Craftax-Pixels-v1", (130, 110, 3), 43)])
def test_other_ids_shapes_and_dtypes(env_name, obs_shape, num_actions):
    # Traced abstractly (compiling Craftax's pixel renderer takes long): the shapes and dtypes step returns.
    env = make_environment("craftax_env", env_name)
    assert env.spec.obs_shape == obs_shape and env.spec.obs_dtype == np.float32
    assert env.spec.num_actions == num_actions
    state, obs = env.abstract_reset  # reset traced abstractly when the env was made
    assert (obs.shape, obs.dtype) == (obs_shape, jnp.float32)
    outputs = jax.eval_shape(env.step, jax.random.key(1), state, jnp.int32(0))
    assert [(x.shape, x.dtype) for x in outputs[1:]] == [
        (obs_shape, jnp.float32), ((), jnp.float32), ((), jnp.bool_), ((), jnp.bool_)]
    assert jax.tree.structure(outputs[0]) == jax.tree.structure(state)


def test_classic_pixels_are_images_in_the_unit_interval():
    env = CraftaxEnvironment(PIXELS)
    _, obs = jax.jit(env.reset)(jax.random.key(0))
    assert obs.shape == (63, 63, 3) and 0.0 <= float(obs.min()) < float(obs.max()) <= 1.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-seed and a 1-seed run of the debug agent on Classic-Symbolic with a short time limit, both training."""
    env = CraftaxEnvironment(SYMBOLIC, max_timesteps=MAX_TIMESTEPS)
    config = dataclasses.replace(load_config("configs/debug.json"), environment="craftax_env",
                                 env_config=dataclasses.replace(load_config("configs/debug.json").env_config,
                                                                env_name=SYMBOLIC),
                                 update_seed_batch=1, num_steps=60, eval_frequency=30, training_start_time=30,
                                 buffer_size=100)
    output = str(tmp_path_factory.mktemp("craftax") / "records.jsonl")
    multi = run(dataclasses.replace(config, num_seeds=2), env, seed=5, output=output, progress=False,
                diagnostics=False)
    single = run(dataclasses.replace(config, num_seeds=1), env, seed=6, output=None, progress=False,
                 diagnostics=False)
    with open(output) as f:
        records = [json.loads(line) for line in f]
    return multi, single, records


def test_seed_i_of_multiseed_run_equals_single_seed_run(runs):
    multi, single, _ = runs
    assert int(single["state"].updates[0]) > 0
    assert len(single["returns"][0]) == 60 // MAX_TIMESTEPS
    assert multi["returns"][1] == single["returns"][0]
    # The environment's side is bit for bit the same: env state, observations, replay, counters, RSSM carry.
    exact = lambda state: state._replace(params=None, opt_states=None)
    for multi_leaf, single_leaf in zip(jax.tree.leaves(exact(multi["state"])), jax.tree.leaves(exact(single["state"]))):
        np.testing.assert_array_equal(multi_leaf[1], single_leaf[0])
    # The parameters to float32 rounding: the one-seed program (unvmapped) and the multi-seed one compile the
    # optimizer's arithmetic differently, and one bias was seen to differ in its last bit here.
    learned = lambda state: (state.params, state.opt_states)
    for multi_leaf, single_leaf in zip(jax.tree.leaves(learned(multi["state"])),
                                       jax.tree.leaves(learned(single["state"]))):
        np.testing.assert_allclose(multi_leaf[1], single_leaf[0], rtol=1e-6, atol=1e-10)
    assert not np.array_equal(multi["state"].obs[0], multi["state"].obs[1])


def test_a_craftax_run_state_round_trips_through_a_checkpoint(runs, tmp_path):
    state = runs[0]["state"]  # the 2-seed run's, Craftax's env state (and its PRNG key) among its leaves
    path = str(tmp_path / "run.ckpt")
    checkpoint.save(path, state, {})
    loaded, _ = checkpoint.load(path, jax.eval_shape(lambda: state))
    assert jax.tree.structure(loaded) == jax.tree.structure(state)
    for saved_leaf, loaded_leaf in zip(jax.tree.leaves(state), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(saved_leaf, loaded_leaf)


def test_achievements_in_the_records(runs):
    _, _, records = runs
    assert [r["seed"] for r in records] == [5, 6, 5, 6]
    for record in records:
        assert record["episodes"] > 0
        unlocked = [record[key] for key in record if key.startswith("achievement_")]
        assert len(unlocked) == 22 and all(0.0 <= u <= 1.0 for u in unlocked)
        assert record["achievements"] == pytest.approx(sum(unlocked))  # means over the same episodes
        # the score is the return as a percentage of Classic's maximum return, 22
        assert record["score"] == pytest.approx(100.0 * record["episode_return"] / 22, abs=1e-4)


def test_unknown_id_is_refused_with_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        make_environment("craftax_env", "Craftax-Classic-v1")
    message = str(error.value)
    assert "'Craftax-Classic-v1'" in message and all(name in message for name in CRAFTAX_IDS)


def test_missing_package_names_the_requirements_file(monkeypatch):
    for module in [name for name in sys.modules if name == "craftax" or name.startswith("craftax.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "craftax", None)  # import craftax raises ImportError
    with pytest.raises(ConfigError, match=r"pip install -r requirements-craftax\.txt"):
        make_environment("craftax_env", SYMBOLIC)
