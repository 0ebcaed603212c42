"""The block function: `eval_frequency` env steps of act, env step, store, with a training update every
`train_frequency` steps once `training_start_time` is reached. It maps a multi-seed RunState (leading seed
axis on every leaf) to (RunState, per-step metrics).

`scan` and `cond` are parameters, so the very same block runs two ways:
- JAX drivers (`lax.scan`, `lax.cond`) for JAX environments: the whole block is one compiled program;
- Python drivers (`python_scan`, `python_cond`, below) for environments stepped in Python (gymnasium, gym):
  the block runs as a Python loop, and only the agent's pieces (act, store, training update, target
  refresh) are jitted, each compiled once, with the state donated so the replay buffer is updated in place.
"""

import os
import re
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agent.distributions import latents
from experiment.config import Config
from initialization import Agent, RunState
from replay_buffer import add


class BlockMetrics(NamedTuple):
    """Per-step outputs of one block, [steps, seeds] unless noted; converted on the host once per block."""

    episode_return: jax.Array  # return of the episode that ended at this step (valid where episode_end)
    episode_end: jax.Array  # bool: an episode ended (terminated or truncated) at this step
    trained: jax.Array  # bool [steps]: a training update ran at this step (shared by all seeds)
    train: dict  # name -> [steps, seeds] training metrics (zero where not trained)
    # name -> [steps, seeds] statistics of the episode that ended at this step (valid where episode_end), from
    # environments that report some (`episode_statistics`); empty for the others
    episode_stats: dict = {}


def python_scan(f, init, xs=None, length=None, to_host=None):
    """lax.scan's signature and meaning, run as a Python loop; per-step outputs are stacked on the host (after
    `to_host`, where given)."""
    length = length if xs is None else len(jax.tree.leaves(xs)[0])
    carry, outputs = init, []
    for i in range(length):
        carry, y = f(carry, None if xs is None else jax.tree.map(lambda x: x[i], xs))
        outputs.append(y if to_host is None else to_host(y))
    return carry, jax.tree.map(lambda *ys: np.stack(ys), *outputs)


def python_cond(pred, true_fun, false_fun, *operands):
    """lax.cond's signature and meaning, deciding on the host: only the taken branch runs."""
    return true_fun(*operands) if bool(pred) else false_fun(*operands)


class Drivers(NamedTuple):
    scan: Callable
    cond: Callable
    compile: Callable  # (piece, donate_first) for each of the agent's pieces: identity under lax, jax.jit under
    # Python, donating the first argument (the state: the replay is updated in place) where donate_first


def compiler_options() -> dict | None:
    """XLA options for the training programs. On CPU, LLVM optimises the generated kernels at level 1
    instead of the default: the block compiles about a quarter faster and runs as fast, since the time goes
    to matmuls and convolutions in precompiled libraries, not to the generated elementwise loops (measured:
    `git show f1b95ab:bench/README.md`, "Where the compile time goes"). The float results differ from the
    default level's in the last bits, deterministically. A level set in XLA_FLAGS (read at each call) is taken
    instead: at 0 a block compiles about a quarter faster again and trains up to 1.5x slower, which suits
    short runs such as the test suite's (docs/performance.md). Other backends keep XLA's defaults."""
    if jax.default_backend() != "cpu":
        return None
    levels = re.findall(r"--xla_backend_optimization_level=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return {"xla_backend_optimization_level": int(levels[-1]) if levels else 1}


def _jit_piece(piece: Callable, donate_first: bool = True) -> Callable:
    return jax.jit(piece, donate_argnums=0 if donate_first else (), compiler_options=compiler_options())


def jit_block(block: Callable) -> Callable:
    """A block function of the JAX drivers jitted as the scripts run it: the state donated (the replay is
    updated in place), compiled with `compiler_options()`, as the Python drivers' pieces are."""
    return _jit_piece(block)


JAX_DRIVERS = Drivers(jax.lax.scan, jax.lax.cond, lambda piece, donate_first=True: piece)
PYTHON_DRIVERS = Drivers(python_scan, python_cond, _jit_piece)


def make_act(agent: Agent) -> Callable:
    """Per-seed: choose an action on the current observation; split off the key the env step uses."""

    def act(params, hparams, rssm_h, obs, key):
        key, act_key, env_key = jax.random.split(key, 3)
        action, z = agent.act(params, hparams, rssm_h, obs, act_key)
        return key, action, z, env_key

    return act


def make_store(agent: Agent) -> Callable:
    """Per-seed: store the transition (obs, action, env_output), move the RSSM carry and the episode counters
    to the next observation. `state` comes without the parts this does not update in place: training params
    and optimizer states (passed in `params` where needed), env state and observation (replaced), and a
    sweep's values."""

    def store(state: RunState, params, obs, action, z, env_output):
        env_state, next_obs, reward, terminated, truncated = env_output
        episode_end = terminated | truncated
        episode_return = state.episode_return + reward
        state = state._replace(
            env_state=env_state,
            obs=next_obs,
            rssm_h=agent.next_h(params, state.rssm_h, z, action, episode_end),
            replay=add(state.replay, agent.replay_obs(obs), action, reward, terminated, truncated),
            env_steps=state.env_steps + 1,
            episode_return=jnp.where(episode_end, 0.0, episode_return),
            episodes=state.episodes + episode_end.astype(jnp.int32),
        )
        return state, (episode_return, episode_end)

    return store


# On CPU, seeds whose updates are small run them vmapped together, up to this many bytes of imagined features
# (`update_seed_bytes`) a batch: for a small model an update is mostly per-kernel overhead, which a batch
# pays once. One seed of config.json (128 MiB) is past it, and runs alone: its update already keeps the cores
# busy, and vmapping would multiply its temporaries (figures in bench/results.md).
CPU_BATCH_BYTES = 64 * 2**20


def update_seed_bytes(config: Config) -> int:
    """Bytes of one seed's imagined features, [rollout_length + 1, batch_size * sequence_length, h + z] float32:
    the update's large arrays grow with it, so it stands for the update's size in the CPU default below."""
    states = config.batch_size * config.sequence_length
    return 4 * (config.rollout_length + 1) * states * (config.num_hidden_units + latents(config).size)


# On an accelerator the seeds' updates run as one vmapped batch as long as it fits: its device memory is about
# ACCELERATOR_BYTES_PER_SEED_BYTE x `update_seed_bytes` a seed (measured on GPUs for config.json,
# bench/results.md), and a batch may take this fraction of what the device's allocator holds, the rest left to
# all seeds' parameters, optimizer states and replays. Smaller batches trade update speed for memory; acting
# runs as fast.
ACCELERATOR_BYTES_PER_SEED_BYTE = 14
ACCELERATOR_MEMORY_FRACTION = 0.7


def device_memory_stats() -> dict:
    """The first device's allocator statistics (`bytes_limit`, `peak_bytes_in_use`, ...); empty where the
    backend reports none (CPU)."""
    try:
        return jax.devices()[0].memory_stats() or {}
    except Exception:  # backends without memory statistics
        return {}


def device_memory_bytes() -> int | None:
    """Bytes the first device's allocator may hold (JAX's `bytes_limit`), or None where it is not reported."""
    return device_memory_stats().get("bytes_limit") or None


def update_seed_batch(requested: int, num_seeds: int, backend: str | None = None, seed_bytes: int = 0,
                      device_bytes: int | None = None) -> int:
    """Seeds per batch of training updates: `requested`, or for 0 by the update's size, `seed_bytes` a seed
    (`update_seed_bytes`; unknown where 0):
    - on CPU, the largest divisor of `num_seeds` whose seeds fit in `CPU_BATCH_BYTES` (one where the size is
      unknown): XLA:CPU gains from batching small updates only, while the temporaries grow with the batch. A
      divisor, so that one compiled copy of the update serves all batches;
    - on an accelerator, all seeds if their vmapped update fits in `ACCELERATOR_MEMORY_FRACTION` of
      `device_bytes` (`device_memory_bytes()` where not given; all seeds where that or the size is unknown),
      else the fewest batches that fit, of equal size where the seed count allows (a remainder batch compiles
      a second copy of the update, cheaper there than many small batches)."""
    if requested:
        return min(requested, num_seeds)
    if (backend or jax.default_backend()) == "cpu":
        fitting = max(1, CPU_BATCH_BYTES // seed_bytes) if seed_bytes > 0 else 1
        return max(size for size in range(1, min(fitting, num_seeds) + 1) if num_seeds % size == 0)
    device_bytes = device_memory_bytes() if device_bytes is None else device_bytes
    if not device_bytes or seed_bytes <= 0:
        return num_seeds
    seed_device_bytes = ACCELERATOR_BYTES_PER_SEED_BYTE * seed_bytes
    fitting = max(1, int(ACCELERATOR_MEMORY_FRACTION * device_bytes) // seed_device_bytes)
    batches = -(-num_seeds // fitting)
    return -(-num_seeds // batches)


def over_seeds(per_seed: Callable) -> Callable:
    """`jax.vmap(per_seed)` over the leading seed axis of every argument and result, except that a single
    seed runs `per_seed` itself on its arguments with the seed axis taken off (see make_block_function)."""
    vmapped = jax.vmap(per_seed)

    def run(*args):
        if jax.tree.leaves(args)[0].shape[0] != 1:
            return vmapped(*args)
        return jax.tree.map(lambda x: x[None], per_seed(*jax.tree.map(lambda x: x[0], args)))

    return run


def seed_batched_update(agent: Agent, requested_batch: int, seed_bytes: int = 0,
                        in_place: bool | None = None) -> Callable:
    """The training update for a leading seed axis: vmapped over all seeds at once, or over batches of
    `update_seed_batch(requested_batch, seeds, seed_bytes=seed_bytes)` seeds one after another, either
    - in place (`in_place`; the default on accelerators, where batches exist to save device memory): a loop
      slices each batch out of the state and writes it back into the same buffers;
    - or as a `scan` (the default on CPU, where they exist because vmapping a large update gains no speed)
      over [batches, batch] views of the state, which reads each batch from the old state and writes it to a
      new one, holding a second copy of the seeds' parameters and optimizer states (the in-place loop was
      measured to copy the whole seed-stacked optimizer moments on XLA:CPU:
      `git show f1b95ab:bench/README.md`).
    The replay is only read, never carried or copied."""
    # jitted, so that the trace made for the metric shapes below is reused by the calls (the update is
    # the largest function of a block: tracing it twice took seconds)
    vmapped = jax.jit(over_seeds(agent.train_update))
    in_place = jax.default_backend() != "cpu" if in_place is None else in_place

    def update(state: RunState):
        num_seeds = state.env_steps.shape[0]
        batch = update_seed_batch(requested_batch, num_seeds, seed_bytes=seed_bytes)
        if batch == num_seeds:
            return vmapped(state)
        full = num_seeds - num_seeds % batch  # seeds in full batches; the rest make one smaller batch
        return (_update_in_place if in_place else _update_scanned)(vmapped, state, batch, full)

    return update


def _update_scanned(vmapped: Callable, state: RunState, batch: int, full: int):
    """`seed_batched_update`'s scan: batches of `batch` seeds up to seed `full`, read from the old state and
    written to a new one, then the rest. The replay stays out of the scan's inputs and outputs, and each batch
    slices its rows from it: as a scan input, XLA:CPU copied its actions, rewards and flags at every call."""
    replay, seeds = state.replay, state._replace(replay=None)

    def update_batch(_, start_and_part):
        start, part = start_and_part
        new, metrics = vmapped(part._replace(replay=_take(replay, start, batch)))
        return None, (new._replace(replay=None), metrics)

    batches = jax.tree.map(lambda x: x[:full].reshape(full // batch, batch, *x.shape[1:]), seeds)
    _, (new, metrics) = jax.lax.scan(update_batch, None, (jnp.arange(0, full, batch), batches))
    new, metrics = jax.tree.map(lambda x: x.reshape(full, *x.shape[2:]), (new, metrics))
    if full < state.env_steps.shape[0]:
        rest, rest_metrics = vmapped(jax.tree.map(lambda x: x[full:], state))
        new, metrics = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), (new, metrics),
                                    (rest._replace(replay=None), rest_metrics))
    return new._replace(replay=replay), metrics


def _update_in_place(vmapped: Callable, state: RunState, batch: int, full: int):
    """`seed_batched_update`'s in-place loop: batches of `batch` seeds up to seed `full`, then the rest."""
    replay, seeds = state.replay, state._replace(replay=None)

    def update_slice(start, size, seeds, metrics):
        new, new_metrics = vmapped(_take(seeds, start, size)._replace(replay=_take(replay, start, size)))
        return _put(seeds, new._replace(replay=None), start), _put(metrics, new_metrics, start)

    num_seeds = state.env_steps.shape[0]
    metric_shapes = jax.eval_shape(vmapped, _take(state, 0, batch))[1]
    metrics = jax.tree.map(lambda s: jnp.zeros((num_seeds, *s.shape[1:]), s.dtype), metric_shapes)
    seeds, metrics = jax.lax.fori_loop(
        0, full // batch, lambda i, carry: update_slice(i * batch, batch, *carry), (seeds, metrics))
    if full < num_seeds:
        seeds, metrics = update_slice(full, num_seeds - full, seeds, metrics)
    return seeds._replace(replay=replay), metrics


def _take(tree, start, size: int):
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, size), tree)


def _put(tree, part, start):
    return jax.tree.map(lambda x, p: jax.lax.dynamic_update_slice_in_dim(x, p, start, 0), tree, part)


def make_block_function(config: Config, agent: Agent, envs, num_steps: int,
                        drivers: Drivers = JAX_DRIVERS) -> Callable:
    """Returns block(state) -> (state, BlockMetrics) running `num_steps` env steps for all seeds.

    `envs` is the seeds' environments with a leading seed axis (envs.batched.VmappedEnvironments under the
    JAX drivers, envs.batched.PythonEnvironments under the Python drivers). The per-seed pieces are vmapped;
    the decisions to train and to refresh the target critic are taken on the shared step counter (seed 0's,
    identical for all seeds), an unbatched scalar, so `cond` stays a real branch and no training work runs
    before `training_start_time`.

    Under the JAX drivers a block of one seed runs the per-seed pieces themselves, unvmapped, on the state
    with its seed axis taken off for the whole scan (and put back at the end): vmapped over an axis of size
    1, XLA:CPU compiled the block longer and ran the update slower (`git show f1b95ab:bench/README.md`, "One
    seed is not vmapped"). The same arithmetic either way; off inside the training `cond` only, the optimizer's
    moments were no longer written in place and the skip branch copied them at every step."""
    c = config
    scan, cond, compiled = drivers
    per_seed_act, per_seed_store = make_act(agent), make_store(agent)
    act = compiled(jax.vmap(per_seed_act), donate_first=False)
    # jitted for its trace cache: `skip_training` below takes the metric shapes from the same trace
    seeds_update = seed_batched_update(agent, config.update_seed_batch, update_seed_bytes(config))
    train_update = compiled(jax.jit(seeds_update))
    update_target = compiled(jax.vmap(agent.update_target))

    def decisions(state: RunState):
        """(train now, refresh the target critic now) from the step counter every seed shares."""
        env_steps = state.env_steps.reshape(-1)[0]  # unbatched: seed 0's (or the one seed's) counter
        trained = (env_steps > c.training_start_time) & (env_steps % c.train_frequency == 0)
        return trained, env_steps % c.target_update_frequency == 0

    def with_decisions(store_transition: Callable) -> Callable:
        """A store (make_store's arguments) that also returns the decisions on the stored state's counter."""

        def store(state: RunState, params, obs, action, z, env_output):
            state, outputs = store_transition(state, params, obs, action, z, env_output)
            return state, outputs, *decisions(state)

        return store

    store = compiled(with_decisions(jax.vmap(per_seed_store)))

    def step_function(act, env_step, episode_statistics, store, train_update, update_target):
        no_metrics = {}  # zeros shaped like the training metrics, built once

        def skip_training(state):
            if not no_metrics:
                shapes = jax.eval_shape(train_update, state)[1]
                no_metrics.update(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
            return state, dict(no_metrics)

        def step(state: RunState, _):
            # Acting and storing see only what they use: under the Python drivers every leaf passed costs time.
            acting_params = state.params._replace(critic=None, target_critic=None)
            key, action, z, env_keys = act(acting_params, state.hparams, state.rssm_h, state.obs, state.key)
            env_output = env_step(env_keys, state.env_state, action)
            episode_stats = episode_statistics(env_output[0])
            interaction = state._replace(params=None, opt_states=None, env_state=None, obs=None, key=key, hparams=None)
            interaction, (episode_return, episode_end), trained, refresh = store(
                interaction, acting_params, state.obs, action, z, env_output)
            state = interaction._replace(params=state.params, opt_states=state.opt_states, hparams=state.hparams)
            state, train_metrics = cond(trained, train_update, skip_training, state)
            state = cond(refresh, update_target, lambda s: s, state)
            return state, BlockMetrics(episode_return, episode_end, trained, train_metrics, episode_stats)

        return step

    seeds_step = step_function(act, envs.step, envs.episode_statistics, store, train_update, update_target)
    if drivers is JAX_DRIVERS:
        one_seed_step = step_function(per_seed_act, envs.step_one_seed, envs.episode_statistics_one_seed,
                                      with_decisions(per_seed_store), jax.jit(agent.train_update),
                                      agent.update_target)

    def block(state: RunState, length: int = num_steps):
        if drivers is not JAX_DRIVERS or state.env_steps.shape[0] != 1:
            return scan(seeds_step, state, None, length=length)
        state, metrics = scan(one_seed_step, jax.tree.map(lambda x: x[0], state), None, length=length)
        with_seed_axis = lambda x: x[:, None]  # [steps, ...] -> [steps, 1, ...]
        metrics = metrics._replace(episode_return=with_seed_axis(metrics.episode_return),
                                   episode_end=with_seed_axis(metrics.episode_end),
                                   train=jax.tree.map(with_seed_axis, metrics.train),
                                   episode_stats=jax.tree.map(with_seed_axis, metrics.episode_stats))
        return jax.tree.map(lambda x: x[None], state), metrics

    block.pieces = {"act": act, "store": store, "train_update": train_update, "update_target": update_target}
    return block
