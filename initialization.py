"""Builds the agent for one environment and config: its pure per-seed functions (act, carry update,
training update) and the initial run state, the single pytree that holds the whole experiment of one seed."""

import copy
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from config import Config, ConfigError
from environments import EnvSpec
from losses_and_evaluation import actor_critic_losses, imagine, observe_step, world_model_loss
from losses_and_evaluation import DIAGNOSTIC_SEQUENCES, model_diagnostics
from distributions import action_distribution, action_head_size, actor_gradient, latents
from networks import make_actor_critic, make_world_model
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


# The training metric that flags a non-finite update (int32, 0 for a finite one): bit i set where the loss
# NUMERICAL_FAULT_LOSSES[i], its gradient or the optimizer's update from it was non-finite. Such an update
# leaves params and optimizer states as they were; the run stops after the block (experiment.run).
NUMERICAL_FAULT = "numerical_fault"
NUMERICAL_FAULT_LOSSES = ("world-model", "actor", "critic")


class Agent(NamedTuple):
    """Pure per-seed functions; the loop vmaps them over seeds."""

    init_state: Callable  # (key, env_state, obs, hparams={}) -> RunState, given the env's first reset
    act: Callable  # (params, hparams, h [H], obs [*obs], key, greedy=False) -> (action, z [Z]); action int32 []
    # or, for continuous actions, float32 [A] in [-1, 1]; greedy: the policy's mode instead of a sample
    next_h: Callable  # (params, h, z, action, episode_end) -> next h [H], zero after an episode end
    replay_obs: Callable  # obs [*obs] -> the compact frame replay stores
    train_update: Callable  # RunState -> (RunState, metrics dict of scalars, NUMERICAL_FAULT among them)
    update_target: Callable  # RunState -> RunState with the target critic refreshed
    diagnose: Callable  # (params, hparams, replay, key) -> dict of scalars: model diagnostics on a few replayed
    # sequences


def make_optimizer(config: Config, learning_rate: float, eps: float | None = None,
                   clip: float | None = None) -> optax.GradientTransformation:
    """The one optimizer recipe: global-norm clipping (at `clip`, default grad_clip), then AdamW (epsilon `eps`,
    default eps_adam) with decoupled weight decay.

    Clipping and Adam run on each network's gradients concatenated into one vector (`optax.flatten`; the
    moments are stored flat too): the same maths as leaf by leaf, but a handful of kernels instead of several
    per leaf (the world model has 52 leaves), which made up a large share of the compile time. The weight
    decay and the learning rate are applied leaf by leaf, so that the parameters are never concatenated: each
    new parameter then reads only its old self, elementwise, and XLA writes it in place. (With the decay
    inside `optax.flatten`, XLA:GPU fused the parameters' concatenation into every parameter's update, so
    no update was in place and the skip-training branch of the loop's `cond` copied all parameters at every
    acting step.) The state has the layout of `optax.flatten(chain(clip, adamw))`."""
    flat = optax.flatten(optax.chain(optax.clip_by_global_norm(config.grad_clip if clip is None else clip),
                                     optax.scale_by_adam(eps=config.eps_adam if eps is None else eps)))
    decay = optax.add_decayed_weights(config.wd_adam)
    scale = optax.scale_by_learning_rate(learning_rate)

    def init(params):
        clip_state, adam_state = flat.init(params)
        return clip_state, (adam_state, decay.init(params), scale.init(params))

    def update(grads, state, params):
        clip_state, (adam_state, decay_state, scale_state) = state
        updates, (clip_state, adam_state) = flat.update(grads, (clip_state, adam_state))  # no params: no concat
        updates, decay_state = decay.update(updates, decay_state, params)
        updates, scale_state = scale.update(updates, scale_state)
        return updates, (clip_state, (adam_state, decay_state, scale_state))

    return optax.GradientTransformation(init, update)


def with_run_values(config: Config, hparams: dict) -> Config:
    """The config as one run of a sweep sees it: its swept keys hold that run's values (arrays, traced inside
    the program) instead of the config's numbers. Without a sweep, the config itself. Built without the
    config's checks, which need Python numbers: the sweep's values were checked when the config was made."""
    if not hparams:
        return config
    run_config = copy.copy(config)
    for key, value in hparams.items():
        object.__setattr__(run_config, key, value)
    return run_config


def run_hparams(variants: list[dict[str, float]]) -> dict[str, np.ndarray]:
    """{key: float32 [runs]}: each run's value of each swept key, from the runs' variants (experiment.runs_of)."""
    return {key: np.array([variant[key] for variant in variants], np.float32) for key in variants[0]}


def all_finite(tree) -> jax.Array:
    """Whether every entry of every leaf of `tree` is finite: one reduction per leaf, no concatenated copy."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def flat_norm(tree) -> jax.Array:
    """The global L2 norm of `tree`, computed on its raveled leaves (tree order, as `optax.flatten` concatenates
    them), so XLA reuses the optimizer's concatenation instead of adding a kernel or two per leaf."""
    return optax.tree.norm(ravel_pytree(tree)[0])


def replay_frame(config: Config, spec: EnvSpec) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of one observation in replay. Binary frames are bit-packed, eight pixels per byte: a
    MinAtar frame takes 75 bytes instead of 2,400 as float32. Other observations keep the env's dtype."""
    if config.binary_state:
        return (math.ceil(math.prod(spec.obs_shape) / 8),), np.dtype(np.uint8)
    return spec.obs_shape, spec.obs_dtype


def check_observations(config: Config, env) -> None:
    """Refuses binary_state for an env whose observations are not 0/1: they would be bit-packed into garbage.
    Looks at the first observation of a few episodes (cheap, before anything is compiled for training)."""
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
    wm = make_world_model(c, spec.obs_shape, spec.num_actions)
    actor, critic = make_actor_critic(c, action_head_size(c, spec.num_actions, spec.continuous))
    action_dims = spec.num_actions if spec.continuous else None  # continuous actions' components

    def optimizers(run_config: Config) -> OptStates:  # the learning rates may be a run's swept values
        rc = run_config
        model = make_optimizer(rc, rc.model_alpha, eps=rc.model_eps_adam or None, clip=rc.model_grad_clip or None)
        return OptStates(model, make_optimizer(rc, rc.pi_alpha), make_optimizer(rc, rc.V_alpha))

    hidden, z_size = c.num_hidden_units, latents(c).size

    def init_state(key, env_state, first_obs, hparams=None) -> RunState:
        wm_key, actor_key, critic_key, run_key = jax.random.split(key, 4)
        obs = jnp.zeros(spec.obs_shape, jnp.float32)
        h, z = jnp.zeros(hidden), jnp.zeros(z_size)
        feat = jnp.zeros(hidden + z_size)
        critic_params = critic.init(critic_key, feat)
        action = jnp.zeros(spec.action_shape, spec.action_dtype)
        params = Params(wm.init(wm_key, obs, h, z, action), actor.init(actor_key, feat), critic_params, critic_params)
        opt_states = OptStates(*(opt.init(p) for opt, p in zip(optimizers(c), params[:3])))
        return RunState(
            params=params, opt_states=opt_states, env_state=env_state, obs=first_obs, rssm_h=h,
            replay=init_buffer(c.buffer_size, *replay_frame(c, spec), spec.action_shape, spec.action_dtype),
            key=run_key,
            env_steps=jnp.int32(0), updates=jnp.int32(0), episode_return=jnp.float32(0.0), episodes=jnp.int32(0),
            return_scale=jnp.float32(0.0), hparams={k: jnp.asarray(v, jnp.float32) for k, v in (hparams or {}).items()})

    def act(params: Params, hparams, h, obs, key, greedy: bool = False):
        post_key, action_key = jax.random.split(key)
        embed = wm.embed(params.world_model, obs.astype(jnp.float32))
        z, _ = observe_step(c, wm, params.world_model, h, embed, latents(c).noise(post_key, ()))
        unimix = hparams.get("actor_unimix", c.actor_unimix)  # a swept value, else the config's
        policy = action_distribution(c, actor.apply(params.actor, jnp.concatenate([h, z], -1)), spec.continuous, unimix)
        if greedy:
            return policy.mode(), z
        if spec.continuous:  # a vector [A] in [-1, 1]
            return policy.sample(jax.random.normal(action_key, spec.action_shape)), z
        return policy.sample(action_key), z

    def next_h(params: Params, h, z, action, episode_end):
        return jnp.where(episode_end, 0.0, wm.transition(params.world_model, h, z, action))

    def replay_obs(obs):
        return pack_frame(obs) if c.binary_state else obs

    def train_update(state: RunState):
        c = with_run_values(config, state.hparams)
        key, sample_key, wm_key, imagine_key = jax.random.split(state.key, 4)
        params, opt = state.params, state.opt_states
        batch = sample_sequences(state.replay, sample_key, c.batch_size, c.sequence_length, c.maximize_nonterminal)
        if c.binary_state:
            batch = batch._replace(obs=unpack_frames(batch.obs, spec.obs_shape))  # [B, T, *obs] uint8

        wm_grad_fn = jax.value_and_grad(lambda p: world_model_loss(c, wm, p, batch, wm_key), has_aux=True)
        (wm_loss, (metrics, posterior)), wm_grads = wm_grad_fn(params.world_model)
        start_h = jax.lax.stop_gradient(posterior.h.reshape(-1, hidden))  # [B*T, H]
        start_z = jax.lax.stop_gradient(posterior.z.reshape(-1, z_size))  # [B*T, Z]
        # With the dynamics gradient the rollout is a function of the actor's parameters, differentiated with the
        # actor's loss (the world model's parameters are not differentiated: the loss does not update them).
        dynamics = actor_gradient(c, spec.continuous) != "reinforce"
        rollout_of = lambda actor_params: imagine(c, wm, params.world_model, actor.apply, actor_params, start_h,
                                                  start_z, imagine_key, None, action_dims, straight_through=dynamics)
        fixed_rollout = None if dynamics else rollout_of(params.actor)

        def actor_critic_loss(actor_params, critic_params):
            rollout = rollout_of(actor_params) if dynamics else fixed_rollout
            actor_loss, critic_loss, ac_metrics = actor_critic_losses(
                c, actor.apply, critic.apply, actor_params, critic_params, params.target_critic, rollout,
                state.return_scale, spec.continuous)
            # disjoint params: each gets its own loss's gradient
            return actor_loss + critic_loss, (actor_loss, critic_loss, ac_metrics)

        (_, (actor_loss, critic_loss, ac_metrics)), (actor_grads, critic_grads) = jax.value_and_grad(
            actor_critic_loss, argnums=(0, 1), has_aux=True)(params.actor, params.critic)

        grads = (wm_grads, actor_grads, critic_grads)
        grad_norms = tuple(flat_norm(g) for g in grads)
        updates, new_opt = zip(*(optimizer.update(g, o, p)  # per network; the target critic has no optimizer
                                 for optimizer, g, o, p in zip(optimizers(c), grads, opt, params)))
        # Bit i set: network i's loss (NUMERICAL_FAULT_LOSSES), gradient or update is non-finite (a non-finite
        # gradient leaf makes the global norm non-finite). Any bit set skips the whole update, so that params and
        # optimizer states keep their values; a `where`, not a `cond`: the update is vmapped over seeds. Checking
        # the updates also makes the `where` of the new moments wait for the updates computed from the old ones,
        # so XLA writes the moments in place: with the losses and gradients alone checked, it copied all of them
        # at every step that skipped training (tests/test_loop.py).
        finite = [jnp.isfinite(loss) & jnp.isfinite(norm) & all_finite(u)
                  for loss, norm, u in zip((wm_loss, actor_loss, critic_loss), grad_norms, updates)]
        fault = sum(jnp.where(ok, 0, 1 << i) for i, ok in enumerate(finite)).astype(jnp.int32)
        keep_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(fault == 0, n, o), new, old)

        wm_params, actor_params, critic_params = (optax.apply_updates(p, u) for p, u in zip(params, updates))
        new_params = params._replace(world_model=wm_params, actor=actor_params, critic=critic_params)
        if c.slow_critic_rate > 0:  # the slow critic moves a fraction of the way toward the updated critic
            new_params = new_params._replace(target_critic=optax.incremental_update(
                critic_params, params.target_critic, c.slow_critic_rate))
        metrics = {**metrics, **ac_metrics, "model_grad_norm": grad_norms[0], "actor_grad_norm": grad_norms[1],
                   "critic_grad_norm": grad_norms[2], NUMERICAL_FAULT: fault}
        state = state._replace(params=keep_finite(new_params, params), opt_states=keep_finite(OptStates(*new_opt), opt),
                               key=key, updates=state.updates + 1,
                               return_scale=keep_finite(ac_metrics["return_scale"], state.return_scale))
        return state, metrics

    def update_target(state: RunState) -> RunState:
        if c.slow_critic_rate > 0:  # a slow critic follows the critic at every update instead
            return state
        return state._replace(params=state.params._replace(target_critic=state.params.critic))

    def diagnose(params: Params, hparams, replay: ReplayBuffer, key):
        c = with_run_values(config, hparams)
        # Needs a sampleable buffer (true once training has started); NaN marks a statistic with no data.
        sample_key, model_key = jax.random.split(key)
        batch = sample_sequences(replay, sample_key, DIAGNOSTIC_SEQUENCES, c.sequence_length, c.maximize_nonterminal)
        if c.binary_state:
            batch = batch._replace(obs=unpack_frames(batch.obs, spec.obs_shape))
        return model_diagnostics(c, wm, params.world_model, actor.apply, params.actor, batch, model_key)

    return Agent(init_state, act, next_h, replay_obs, train_update, update_target, diagnose)
