"""The initial run state, the single pytree that holds the whole experiment of one seed, and the agent's pure
per-seed functions (act, carry update, and the training update of agent/training_step.py) built for one
environment and config."""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agent.distributions import action_head_size, actor_gradient, make_heads
from agent.training_step import make_train_update, optimizers, run_values
from envs.protocol import EnvSpec
from experiment.config import Config, ConfigError
from losses_and_evaluation import DIAGNOSTIC_SEQUENCES, make_actor_critic_losses, model_diagnostics
from networks import image_network, make_actor_critic, make_world_model, strided_layout
from replay_buffer import ReplayBuffer, init_buffer, pack_frame, sample_sequences, unpack_frames


class Params(NamedTuple):
    world_model: Any
    actor: Any
    critic: Any
    target_critic: Any


class OptStates(NamedTuple):
    world_model: Any
    actor: Any
    critic: Any


class RunState(NamedTuple):
    """Everything one seed's experiment needs to continue; every leaf is an array.

    With N seeds every leaf gets a leading axis of size N (N = 1 for a single seed)."""

    params: Params
    opt_states: OptStates
    env_state: Any
    obs: jax.Array  # [*obs] the observation the agent acts on next
    rssm_h: jax.Array  # [H] deterministic RSSM state before seeing `obs`
    replay: ReplayBuffer
    key: jax.Array
    env_steps: jax.Array  # int32 [], the same for every seed
    updates: jax.Array  # int32 [], the same for every seed
    episode_return: jax.Array  # float32 [] undiscounted return of the running episode
    episodes: jax.Array  # int32 [] completed episodes
    return_scale: jax.Array  # float32 [] EMA of the imagined λ-returns' 5th-95th percentile spread
    hparams: dict  # {key: float32 []} this run's values of the swept keys (config.sweep); empty without a sweep


class Agent(NamedTuple):
    """Pure per-seed functions; the loop vmaps them over seeds."""

    init_state: Callable  # (key, env_state, obs, hparams={}) -> RunState, given the env's first reset
    act: Callable  # (params, hparams, h [H], obs [*obs], key, greedy=False) -> (action, z [Z]); action int32 []
    # or, for continuous actions, float32 [A] in [-1, 1]; greedy: the policy's mode instead of a sample
    next_h: Callable  # (params, h, z, action, episode_end) -> next h [H], zero after an episode end
    replay_obs: Callable  # obs [*obs] -> the compact frame replay stores
    train_update: Callable  # RunState -> (RunState, metrics dict of scalars, NUMERICAL_FAULT among them);
    # agent/training_step.py
    update_target: Callable  # RunState -> RunState with the target critic refreshed
    diagnose: Callable  # (params, hparams, replay, key) -> dict of scalars: model diagnostics on a few replayed
    # sequences


def run_hparams(variants: list[dict[str, float]]) -> dict[str, np.ndarray]:
    """{key: float32 [runs]}: each run's value of each swept key, from the runs' variants
    (experiment.runner.runs_of)."""
    return {key: np.array([variant[key] for variant in variants], np.float32) for key in variants[0]}


def replay_frame(config: Config, spec: EnvSpec) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of one observation in replay. Binary frames are bit-packed, eight pixels per byte: a
    MinAtar frame takes 75 bytes instead of 2,400 as float32. Other observations keep the env's dtype."""
    if config.binary_state:
        return (math.ceil(math.prod(spec.obs_shape) / 8),), np.dtype(np.uint8)
    return spec.obs_shape, spec.obs_dtype


def check_observations(config: Config, env) -> None:
    """Refuses frames the strided image network cannot take (image_network strided), and binary_state for an
    env whose observations are not 0/1: they would be bit-packed into garbage. Looks at the first observation
    of a few episodes (cheap, before anything is compiled for training)."""
    if image_network(config, env.spec.obs_shape) == "strided":
        try:
            strided_layout(env.spec.obs_shape)
        except ValueError as error:
            raise ConfigError(f"{config.env_config.env_name}: {error}") from None
    if not config.binary_state:
        return
    if getattr(env, "is_python", False):
        obs = env.observations(8)
    else:
        _, obs = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), 8))
    if not bool(np.all((np.asarray(obs) == 0) | (np.asarray(obs) == 1))):
        raise ConfigError(f"binary_state is true but {config.env_config.env_name} observations are not all 0 or 1; "
                          "set binary_state to false for this environment")


def make_agent(config: Config, env) -> Agent:
    c, spec = config, env.spec
    wm = make_world_model(c, spec.obs_shape, spec.num_actions, spec.obs_dtype)
    actor, critic = make_actor_critic(c, action_head_size(c, spec.num_actions, spec.continuous))
    heads = make_heads(c, spec.continuous)
    ac = make_actor_critic_losses(c, actor.apply, critic.apply, heads, actor_gradient(c, spec.continuous))

    hidden, z_size = c.num_hidden_units, heads.latents.size

    def init_state(key, env_state, first_obs, hparams=None) -> RunState:
        hparams = {k: jnp.asarray(v, jnp.float32) for k, v in (hparams or {}).items()}
        wm_key, actor_key, critic_key, run_key = jax.random.split(key, 4)
        obs = jnp.zeros(spec.obs_shape, jnp.float32)
        h, z = wm.rssm.initial(), jnp.zeros(z_size)
        feat = jnp.zeros(hidden + z_size)
        critic_params = critic.init(critic_key, feat)
        action = jnp.zeros(spec.action_shape, spec.action_dtype)
        params = Params(wm.init(wm_key, obs, h, z, action), actor.init(actor_key, feat), critic_params, critic_params)
        opt_states = OptStates(*(opt.init(p) for opt, p in zip(optimizers(c, run_values(c, hparams)), params[:3])))
        return RunState(
            params=params, opt_states=opt_states, env_state=env_state, obs=first_obs, rssm_h=h,
            replay=init_buffer(c.buffer_size, *replay_frame(c, spec), spec.action_shape, spec.action_dtype),
            key=run_key,
            env_steps=jnp.int32(0), updates=jnp.int32(0), episode_return=jnp.float32(0.0), episodes=jnp.int32(0),
            return_scale=jnp.float32(0.0), hparams=hparams)

    def act(params: Params, hparams, h, obs, key, greedy: bool = False):
        post_key, action_key = jax.random.split(key)
        embed = wm.encode(params.world_model, obs.astype(jnp.float32))
        z, _ = wm.rssm.posterior_step(params.world_model, h, embed, heads.latents.noise(post_key, ()))
        unimix = run_values(c, hparams)["actor_unimix"]  # as the losses read it
        policy = heads.policy(actor.apply(params.actor, jnp.concatenate([h, z], -1)), unimix)
        if greedy:
            return policy.mode(), z
        if spec.continuous:  # a vector [A] in [-1, 1]
            return policy.sample(jax.random.normal(action_key, spec.action_shape)), z
        return policy.sample(action_key), z

    def next_h(params: Params, h, z, action, episode_end):
        return jnp.where(episode_end, 0.0, wm.rssm.transition(params.world_model, h, z, action))

    def replay_obs(obs):
        return pack_frame(obs) if c.binary_state else obs

    def update_target(state: RunState) -> RunState:
        if c.slow_critic_rate > 0:  # a slow critic follows the critic at every update instead
            return state
        return state._replace(params=state.params._replace(target_critic=state.params.critic))

    def diagnose(params: Params, hparams, replay: ReplayBuffer, key):
        # Needs a sampleable buffer (true once training has started); NaN marks a statistic with no data.
        sample_key, model_key = jax.random.split(key)
        batch = sample_sequences(replay, sample_key, DIAGNOSTIC_SEQUENCES, c.sequence_length, c.maximize_nonterminal)
        if c.binary_state:
            batch = batch._replace(obs=unpack_frames(batch.obs, spec.obs_shape))
        return model_diagnostics(c, run_values(c, hparams), wm, heads, params.world_model, actor.apply,
                                 params.actor, batch, model_key)

    train_update = make_train_update(c, spec, wm, heads, ac)
    return Agent(init_state, act, next_h, replay_obs, train_update, update_target, diagnose)
