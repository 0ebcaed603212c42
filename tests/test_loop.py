"""Component tests of the jitted, vmapped loop on the debug config: training starts when it should and not
before, the training `cond` is a real branch, and seed i of a multi-seed run is the single-seed run SEED+i."""

import dataclasses
import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent_environment_interaction_loop import (
    CPU_BATCH_BYTES,
    jit_block,
    make_block_function,
    seed_batched_update,
    update_seed_batch,
    update_seed_bytes,
)
from environments import environment_from_config, seed_environments
from experiment.config import load_config
from experiment.runner import initial_state, run
from initialization import make_agent
from runtime import checkpoint

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import bench_update  # noqa: E402  (its replay fill)


@pytest.fixture(scope="module")
def debug_config():
    return load_config("configs/debug.json")


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _seeded(debug_config, num_seeds: int):
    """(config, agent, envs, initial run state) of the debug config with `num_seeds` seeds."""
    config = dataclasses.replace(debug_config, num_seeds=num_seeds)
    env = environment_from_config(config)
    agent = make_agent(config, env)
    envs = seed_environments(env, range(num_seeds), jax_env=True)
    return config, agent, envs, initial_state(config, agent, envs, seed=0)


def test_debug_run_trains_only_after_training_start(debug_config):
    config, agent, envs, state = _seeded(debug_config, 2)
    initial_params = jax.device_get(state.params)
    block = jax.jit(make_block_function(config, agent, envs, config.training_start_time))
    state, metrics = block(state)
    # Acting only: nothing trained, params bit-identical, the replay filled.
    assert int(state.updates[0]) == 0 and not np.asarray(metrics.trained).any()
    assert _leaves_equal(state.params, initial_params)
    assert np.all(np.asarray(state.replay.count) == config.training_start_time)

    state, metrics = block(state)
    expected_updates = config.training_start_time // config.train_frequency
    np.testing.assert_array_equal(state.updates, expected_updates)
    assert np.asarray(metrics.trained).sum() == expected_updates
    trained = np.asarray(metrics.trained)
    for name, values in metrics.train.items():
        assert np.all(np.isfinite(np.asarray(values)[trained])), name
    for part in ("world_model", "actor", "critic"):
        before, after = getattr(initial_params, part), getattr(state.params, part)
        assert not _leaves_equal(before, after), f"{part} params did not change after training started"


def test_training_cond_is_not_batched(debug_config):
    # Under vmap a batched predicate would turn `cond` into a `select` that computes the update every step.
    config, agent, envs, state = _seeded(debug_config, 3)
    jaxpr = jax.make_jaxpr(make_block_function(config, agent, envs, 4))(state)
    scan = next(e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan")
    conds = [e for e in scan.params["jaxpr"].jaxpr.eqns if e.primitive.name == "cond"]
    assert len(conds) == 2  # training and target refresh
    for eqn in conds:
        assert eqn.invars[0].aval.shape == ()  # an unbatched predicate: a real branch
    train_branch_sizes = sorted(len(b.jaxpr.eqns) for b in conds[0].params["branches"])
    assert train_branch_sizes[-1] > 10 * train_branch_sizes[0]  # one branch skips all the training work


@pytest.fixture
def scripts_fusion_emitters(monkeypatch):
    """The training programs compiled with XLA:CPU's fusion emitters, as the scripts compile them: the suite
    compiles with the older elemental emitter (tests/conftest.py), which rounds a seed's update in the
    multi-seed program and in the single-seed one differently in the last bit."""
    import agent_environment_interaction_loop as loop
    import experiment.runner

    scripts = loop.compiler_options
    options = lambda: {**scripts(), "xla_cpu_use_fusion_emitters": True}  # noqa: E731
    monkeypatch.setattr(loop, "compiler_options", options)
    monkeypatch.setattr(experiment.runner, "compiler_options", options)


def test_seed_i_of_multiseed_run_equals_single_seed_run(debug_config, scripts_fusion_emitters):
    # With the seeds' updates one after another (update_seed_batch 1, the CPU default) seed i trains exactly
    # as the single-seed run SEED+i does, bit for bit.
    config = dataclasses.replace(debug_config, update_seed_batch=1,
                                 num_steps=debug_config.training_start_time + debug_config.eval_frequency)
    multi = run(dataclasses.replace(config, num_seeds=2), _env(config), seed=5, output=None, progress=False)
    single = run(dataclasses.replace(config, num_seeds=1), _env(config), seed=6, output=None, progress=False)
    assert len(single["returns"][0]) > 5
    assert int(single["state"].updates[0]) > 0
    assert multi["returns"][1] == single["returns"][0]
    assert multi["returns"][0] != multi["returns"][1]
    for multi_leaf, single_leaf in zip(jax.tree.leaves(multi["state"]), jax.tree.leaves(single["state"])):
        np.testing.assert_array_equal(multi_leaf[1], single_leaf[0])


def _computations(hlo: str) -> dict[str, list[str]]:
    """Compiled HLO text split into its computations: name -> instruction lines."""
    computations, name = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?(%[\w.\-]+) ", line)
        if header:
            name = header.group(1)
            computations[name] = []
        elif name:
            computations[name].append(line)
    return computations


def _copied_shapes(lines: list[str]) -> list[tuple[int, ...]]:
    copies = [re.search(r"= \w+\[([\d,]*)\]\S* copy\(", line) for line in lines]
    return [tuple(int(d) for d in m.group(1).split(",") if d) for m in copies if m]


def _skip_branch_copies(hlo: str) -> list[tuple[int, ...]]:
    """Shapes of the buffers that branch 0 (the false branch) of every conditional in compiled HLO text copies."""
    computations = _computations(hlo)
    skip_branches = re.findall(r" conditional\(.*branch_computations=\{(%[\w.\-]+),", hlo)
    return [shape for branch in skip_branches for shape in _copied_shapes(computations[branch])]


def _loop_body_copies(hlo: str) -> list[tuple[int, ...]]:
    """Shapes of the buffers that the body of every while loop in compiled HLO text copies at each iteration,
    itself or in the fused kernels it calls."""
    computations = _computations(hlo)
    shapes = []
    for body in re.findall(r" while\(.*body=(%[\w.\-]+)", hlo):
        called = re.findall(r"calls=(%[\w.\-]+)", "\n".join(computations[body]))
        for name in [body, *called]:
            shapes += _copied_shapes(computations[name])
    return shapes


@pytest.mark.parametrize("num_seeds", [1, 2])
def test_skipping_training_copies_no_optimizer_moments(debug_config, num_seeds):
    # The branch of the training `cond` that skips training passes the state through. It copies nothing big
    # only if the training branch leaves the optimizer's flat moments in the loop state's buffers; once one
    # seed's moments were not, and every acting step copied them (reference config: 84 MB, acting 2.8 -> 26.7 ms
    # per step). Two seeds one at a time: the training branch's scan over seeds writes new buffers, and the
    # copy back into the loop state must be the training branch's, not the skip branch's.
    config, agent, envs, state = _seeded(dataclasses.replace(debug_config, update_seed_batch=1), num_seeds)
    hlo = jit_block(make_block_function(config, agent, envs, 5)).lower(state).compile().as_text()
    # the flat moments: [seeds, size] vectors of the size of a network's parameter count
    moments = {leaf.shape for leaf in jax.tree.leaves(state.opt_states) if leaf.ndim == 2 and leaf.shape[1] > 1}
    assert moments  # the world model's, actor's and critic's
    assert " conditional(" in hlo  # the training `cond` is a branch of the compiled block
    copied = _skip_branch_copies(hlo)
    assert not [shape for shape in copied if shape[-1:] in {m[1:] for m in moments}]


def test_seed_batched_update_forms_match_the_vmapped_update(debug_config):
    # 5 seeds scanned one at a time (CPU's default form) or in place in batches of 2 (accelerators'; two full
    # batches, then the remainder of 1): the same update as vmapping all 5 at once, up to float rounding, and
    # the replay is handed back untouched. Neither loop copies the seed-stacked optimizer moments in its body:
    # the scan goes from the old state to a new one; the in-place loop slices a batch out of the state and
    # writes it back, which XLA:CPU used to do by copying the whole moments in every iteration (config.json,
    # 8 seeds: four copies of 336 MB for each seed's update) until the update chose its new moments with a
    # `where` over a check of the update itself (the numerical-fault guard). (A remainder compiles a second
    # update program, so only the form whose default makes one has one: an accelerator's 37 seeds run as
    # 19 + 18.)
    config, agent, envs, state = _seeded(debug_config, 5)
    fill = jax.vmap(lambda buffer, key: bench_update.filled_replay(config, agent, envs.spec, buffer, key))
    state = state._replace(replay=jax.jit(fill)(state.replay, jax.random.split(jax.random.PRNGKey(1), 5)))
    moments = {leaf.shape for leaf in jax.tree.leaves(state.opt_states) if leaf.ndim == 2 and leaf.shape[1] > 1}
    assert moments  # the world model's, actor's and critic's flat moments: [seeds, size]
    vmapped, vmapped_metrics = jax.jit(seed_batched_update(agent, 5))(state)
    copied = {}
    for in_place, batch in ((False, 1), (True, 2)):
        # donated, as the block donates the state; the copy keeps `state` for the next form
        update = jax.jit(seed_batched_update(agent, batch, in_place=in_place), donate_argnums=0)
        compiled = update.lower(state).compile()
        hlo = compiled.as_text()
        assert " while(" in hlo
        copied[in_place] = set(_loop_body_copies(hlo)) & moments
        mapped, mapped_metrics = compiled(jax.tree.map(jnp.copy, state))
        assert _leaves_equal(mapped.replay, state.replay)
        np.testing.assert_array_equal(mapped.updates, vmapped.updates)
        for a, b in zip(jax.tree.leaves((mapped.params, mapped_metrics)),
                        jax.tree.leaves((vmapped.params, vmapped_metrics))):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
        assert not _leaves_equal(mapped.params, state.params)
    assert not copied[False]
    assert not copied[True]


def test_update_seed_batch_default_depends_on_the_backend():
    assert update_seed_batch(0, 8, backend="cpu") == 1
    assert update_seed_batch(0, 8, backend="gpu") == 8
    # on CPU, by the update's size: small updates together (as many as fit, a divisor of the seeds), large alone
    small, large = update_seed_bytes(load_config("configs/quickstart.json", [])), update_seed_bytes(
        load_config("config.json", []))
    assert update_seed_batch(0, 8, backend="cpu", seed_bytes=small) == 8
    assert update_seed_batch(0, 8, backend="cpu", seed_bytes=large) == 1
    assert update_seed_batch(0, 12, backend="cpu", seed_bytes=CPU_BATCH_BYTES // 5) == 4
    assert update_seed_batch(0, 7, backend="cpu", seed_bytes=CPU_BATCH_BYTES // 5) == 1
    assert update_seed_batch(0, 8, backend="gpu", seed_bytes=large) == 8
    assert update_seed_batch(2, 8, backend="cpu", seed_bytes=small) == 2
    assert update_seed_batch(3, 8, backend="cpu") == 3
    assert update_seed_batch(16, 8, backend="gpu") == 8
    # on an accelerator, all seeds while their vmapped update fits in its memory, else the fewest batches that do
    h100 = 64 * 10**9  # JAX's bytes_limit on an 80 GB H100 (63.8 GB): 23 seeds of config.json fit
    assert update_seed_batch(0, 20, backend="gpu", seed_bytes=large, device_bytes=h100) == 20
    assert update_seed_batch(0, 40, backend="gpu", seed_bytes=large, device_bytes=h100) == 20
    assert update_seed_batch(0, 37, backend="gpu", seed_bytes=large, device_bytes=h100) == 19  # and 18
    assert update_seed_batch(0, 80, backend="gpu", seed_bytes=small, device_bytes=h100) == 80
    assert update_seed_batch(0, 8, backend="gpu", seed_bytes=large, device_bytes=1) == 1
    assert update_seed_batch(4, 40, backend="gpu", seed_bytes=large, device_bytes=h100) == 4


def test_initial_params_of_seed_i_match_single_seed(debug_config):
    env = _env(debug_config)
    agent = make_agent(debug_config, env)
    envs = seed_environments(env, range(3), jax_env=True)
    multi = initial_state(dataclasses.replace(debug_config, num_seeds=3), agent, envs, seed=0)
    single = initial_state(dataclasses.replace(debug_config, num_seeds=1), agent, envs, seed=2)
    for multi_leaf, single_leaf in zip(jax.tree.leaves(multi.params), jax.tree.leaves(single.params)):
        np.testing.assert_array_equal(multi_leaf[2], single_leaf[0])
    weights = next(leaf for leaf in jax.tree.leaves(multi.params) if leaf.ndim == 3)  # [seeds, in, out]
    assert not np.array_equal(weights[0], weights[1])  # different seeds, different initial params


def test_same_seed_gives_same_numbers(debug_config, debug_run, tmp_path):
    # The suite's shared debug run (seed 0, through the scripts' entry) run again here: the same records and
    # the same final state, leaf for leaf.
    again = run(debug_config, _env(debug_config), seed=0, output=str(tmp_path / "again.out"), progress=False)
    without_timing = lambda path: [{k: v for k, v in json.loads(line).items() if k != "steps_per_second"}
                                   for line in open(path)]
    assert without_timing(tmp_path / "again.out") == without_timing(debug_run / "full.out")
    with np.load(debug_run / "full.ckpt", allow_pickle=False) as archive:
        saved = {key: archive[key] for key in archive.files if key != checkpoint.HEADER_KEY}
    final = checkpoint.tree_arrays(again["state"])
    assert saved.keys() == final.keys() and int(again["state"].updates[0]) > 0
    for key in saved:
        np.testing.assert_array_equal(saved[key], final[key], err_msg=key)


def _env(config):
    return environment_from_config(config)
