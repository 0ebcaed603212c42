"""Times one training update alone, split into world model and actor-critic, and prints one JSON object with
its FLOPs and the achieved fraction of a float32 matmul roofline measured in the same process (and the time
the update would take at that roofline: a lower bound for this device).

    python3 bench/bench_update.py -c config.json
    python3 bench/bench_update.py -c config.json --seeds 20   # 20 seeds' updates vmapped, as the loop runs them

With --seeds N the three timed functions are vmapped over N seeds (each seed its own key; the same replay,
parameters and optimizer state copied N times), and the times and FLOPs are those of all N seeds together.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiment import cli  # noqa: E402
from runtime import huge_pages  # noqa: E402

if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages()  # before jax is imported; DREAMER_NO_HUGE_PAGES=1 to measure without

import jax  # noqa: E402
import jax.extend  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_loop import machine_info  # noqa: E402  (this folder is on sys.path when run as a script)

from agent.distributions import actor_gradient, make_heads  # noqa: E402
from agent.training_step import run_values  # noqa: E402
from agent_environment_interaction_loop import compiler_options  # noqa: E402
from environments import environment_from_config, seed_environments  # noqa: E402
from experiment.config import load_config  # noqa: E402
from initialization import make_agent  # noqa: E402
from losses_and_evaluation import (  # noqa: E402
    ActorPolicy,
    actor_critic_losses,
    imagine,
    make_actor_critic_losses,
    world_model_loss,
)
from networks import RSSMState, make_actor_critic, make_world_model  # noqa: E402
from replay_buffer import add, sample_sequences, unpack_frames  # noqa: E402


def best_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def xla_flops(compiled) -> float:
    """XLA's cost analysis. It counts the body of a loop (scan) once, whatever its trip count."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis.get("flops", 0.0))


def _sub_jaxprs(value):
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def matmul_flops(jaxpr) -> float:
    """2·M·N·K summed over the matrix products of a jaxpr, a scan's body counted once per iteration and a
    cond counted by its costliest branch. Elementwise work is left out: this is the work a matmul roofline
    bounds."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs_shape[d] for d in lhs_contract])
            continue
        inner = [matmul_flops(j) for value in eqn.params.values() for j in _sub_jaxprs(value)]
        if eqn.primitive.name == "cond":
            total += max(inner, default=0.0)
        elif eqn.primitive.name == "scan":
            total += eqn.params["length"] * sum(inner)
        else:
            total += sum(inner)
    return total


def flops(fn, *args) -> float:
    return matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def matmul_roofline(repeats: int) -> float:
    """GFLOP/s of a large float32 matmul on this device: the ceiling the update is compared with."""
    a = jax.random.normal(jax.random.PRNGKey(0), (2048, 2048))
    matmul = jax.jit(lambda x: x @ x)
    return 2 * 2048**3 / best_time(matmul, a, repeats=repeats) / 1e9


def filled_replay(config, agent, spec, buffer, key):
    """One seed's `buffer` with enough random-looking transitions added to sample full batches."""

    def fill_step(i, buffer):
        obs = jax.random.bernoulli(jax.random.fold_in(key, i), 0.1, spec.obs_shape)
        return add(buffer, agent.replay_obs(obs), i % spec.num_actions, 0.0, i % 37 == 0, False)

    return jax.lax.fori_loop(0, 2 * config.sequence_length, fill_step, buffer)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="config.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1, help="seeds whose updates are vmapped together (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be a positive integer, got {args.seeds}")
    c = load_config(args.config, args.set)
    env = environment_from_config(c)
    agent = make_agent(c, env)
    wm = make_world_model(c, env.spec.obs_shape, env.spec.num_actions, env.spec.obs_dtype)
    actor, critic = make_actor_critic(c, env.spec.num_actions)

    envs = seed_environments(env, [1], c.jax_env)  # one seed's environment, of any family
    env_state, obs = jax.tree.map(lambda x: jnp.asarray(x)[0], envs.reset(jax.random.PRNGKey(1)[None]))
    state = jax.jit(agent.init_state)(jax.random.PRNGKey(0), env_state, obs)
    fill = jax.jit(lambda buffer, key: filled_replay(c, agent, env.spec, buffer, key))
    state = state._replace(replay=fill(state.replay, jax.random.PRNGKey(1)))
    batch = jax.jit(lambda r, k: sample_sequences(r, k, c.batch_size, c.sequence_length, c.maximize_nonterminal))(
        state.replay, jax.random.PRNGKey(2))
    if c.binary_state:  # replay holds bit-packed frames; the world model trains on unpacked ones, as in train_update
        batch = batch._replace(obs=unpack_frames(batch.obs, env.spec.obs_shape))
    params, key = state.params, jax.random.PRNGKey(3)

    options = compiler_options()  # as the training programs are compiled
    heads = make_heads(c, env.spec.continuous)
    ac = make_actor_critic_losses(c, actor.apply, critic.apply, heads, actor_gradient(c, env.spec.continuous))
    values = run_values(c, {})
    wm_grad = jax.value_and_grad(lambda p, b, k: world_model_loss(wm, heads, values, p, b, k), has_aux=True)
    wm_step = jax.jit(wm_grad, compiler_options=options)
    (_, (_, posterior)), _ = wm_step(params.world_model, batch, key)
    start_h = posterior.h.reshape(-1, c.num_hidden_units)
    start_z = posterior.z.reshape(-1, heads.latents.size)

    def actor_critic_step(params, start_h, start_z, key):
        policy = ActorPolicy(actor.apply, params.actor, heads, values["actor_unimix"])
        rollout = imagine(wm, heads, params.world_model, policy, RSSMState(start_h, start_z), key, c.rollout_length)
        loss = lambda a, v: sum(actor_critic_losses(ac, values, a, v, params.target_critic, rollout)[:2])
        return jax.grad(loss, argnums=(0, 1))(params.actor, params.critic)

    train_update = agent.train_update
    if args.seeds > 1:  # every argument gets a leading seed axis; the keys differ per seed
        n = args.seeds
        copies = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), tree)
        keys = lambda k: jax.random.split(k, n)
        wm_grad, actor_critic_step, train_update = (
            jax.vmap(wm_grad), jax.vmap(actor_critic_step), jax.vmap(train_update))
        wm_step = jax.jit(wm_grad, compiler_options=options)
        state = copies(state)._replace(key=keys(state.key))
        params, batch, start_h, start_z = copies((params, batch, start_h, start_z))
        key = keys(key)

    ac_step = jax.jit(actor_critic_step, compiler_options=options)
    update = jax.jit(train_update, compiler_options=options).lower(state).compile()  # compiled once

    update_s = best_time(update, state, repeats=args.repeats)
    wm_s = best_time(wm_step, params.world_model, batch, key, repeats=args.repeats)
    ac_s = best_time(ac_step, params, start_h, start_z, key, repeats=args.repeats)
    update_flops = flops(train_update, state)
    roofline = matmul_roofline(args.repeats)
    gflops_per_s = update_flops / update_s / 1e9
    print(json.dumps({
        "config": args.config, "overrides": args.set, "seeds": args.seeds, "batch_size": c.batch_size,
        "sequence_length": c.sequence_length, "rollout_length": c.rollout_length,
        "update_s": update_s, "world_model_s": wm_s, "actor_critic_s": ac_s, "update_s_per_seed": update_s / args.seeds,
        "flops": update_flops, "world_model_flops": flops(wm_grad, params.world_model, batch, key),
        "actor_critic_flops": flops(actor_critic_step, params, start_h, start_z, key),
        "xla_flops": xla_flops(update),
        "gflops_per_s": gflops_per_s, "roofline_gflops_per_s": roofline, "roofline_fraction": gflops_per_s / roofline,
        # the update's time if every counted FLOP ran at the roofline: no update is faster on this device
        "roofline_bound_s": update_flops / (roofline * 1e9),
        "machine": machine_info(),
    }, indent=2))


if __name__ == "__main__":
    sys.exit(cli.exit_code_of(main))
