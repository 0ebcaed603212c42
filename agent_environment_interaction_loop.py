"""The block function: `eval_frequency` env steps of act, env step, store, with a training update every
`train_frequency` steps once `training_start_time` is reached. It maps a multi-seed RunState (leading seed
axis on every leaf) to (RunState, per-step metrics); `scan` and `cond` are parameters so the same block
runs under `lax` or under Python drivers."""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from config import Config
from initialization import Agent, RunState
from replay_buffer import add


class BlockMetrics(NamedTuple):
    """Per-step outputs of one block, [steps, seeds] unless noted; converted on the host once per block."""

    episode_return: jax.Array  # return of the episode that ended at this step (valid where episode_end)
    episode_end: jax.Array  # bool: an episode ended (terminated or truncated) at this step
    trained: jax.Array  # bool [steps]: a training update ran at this step (shared by all seeds)
    train: dict  # name -> [steps, seeds] training metrics (zero where not trained)


def make_env_step(agent: Agent, env) -> Callable:
    """Per-seed: act on the current observation, step the env, store the transition."""

    def env_step(state: RunState):
        key, act_key, env_key = jax.random.split(state.key, 3)
        action, z = agent.act(state.params, state.rssm_h, state.obs, act_key)
        env_state, next_obs, reward, terminated, truncated = env.step(env_key, state.env_state, action)
        episode_end = terminated | truncated
        episode_return = state.episode_return + reward
        state = state._replace(
            env_state=env_state,
            obs=next_obs,
            rssm_h=agent.next_h(state.params, state.rssm_h, z, action, episode_end),
            replay=add(state.replay, agent.replay_obs(state.obs), action, reward, terminated, truncated),
            key=key,
            env_steps=state.env_steps + 1,
            episode_return=jnp.where(episode_end, 0.0, episode_return),
            episodes=state.episodes + episode_end.astype(jnp.int32),
        )
        return state, (episode_return, episode_end)

    return env_step


def make_block_function(config: Config, agent: Agent, env, num_steps: int, scan=jax.lax.scan,
                        cond=jax.lax.cond) -> Callable:
    """Returns block(state) -> (state, BlockMetrics) running `num_steps` env steps for all seeds.

    The per-seed pieces are vmapped inside; the decisions to train and to refresh the target critic are
    taken on the shared step counter (seed 0's, identical for all seeds), an unbatched scalar, so `cond`
    stays a real branch and no training work runs before `training_start_time`."""
    c = config
    env_step = jax.vmap(make_env_step(agent, env))
    train_update = jax.vmap(agent.train_update)
    update_target = jax.vmap(agent.update_target)

    def skip_training(state):
        metric_shapes = jax.eval_shape(train_update, state)[1]
        return state, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)

    def step(state: RunState, _):
        state, (episode_return, episode_end) = env_step(state)
        env_steps = state.env_steps[0]  # unbatched: the counter every seed shares
        trained = (env_steps > c.training_start_time) & (env_steps % c.train_frequency == 0)
        state, train_metrics = cond(trained, train_update, skip_training, state)
        refresh = env_steps % c.target_update_frequency == 0
        state = cond(refresh, update_target, lambda s: s, state)
        return state, BlockMetrics(episode_return, episode_end, trained, train_metrics)

    def block(state: RunState):
        return scan(step, state, None, length=num_steps)

    return block
