"""The training update: one step of the world model, the actor and the critic on a batch of replayed sequences,
with the optimizer recipe they share. A non-finite loss, gradient or update skips the step and is flagged."""

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from agent.distributions import Heads
from envs.protocol import EnvSpec
from experiment.config import SWEEPABLE_KEYS, Config
from losses_and_evaluation import ActorCritic, ActorPolicy, actor_critic_losses, imagine, world_model_loss
from networks import RSSMState, WorldModel
from replay_buffer import sample_sequences, unpack_frames

# The training metric that flags a non-finite update (int32, 0 for a finite one): bit i set where the loss
# NUMERICAL_FAULT_LOSSES[i], its gradient or the optimizer's update from it was non-finite. Such an update
# leaves params and optimizer states as they were; the run stops after the block (experiment.runner.run).
NUMERICAL_FAULT = "numerical_fault"
NUMERICAL_FAULT_LOSSES = ("world-model", "actor", "critic")


def make_train_update(config: Config, spec: EnvSpec, wm: WorldModel, heads: Heads, ac: ActorCritic) -> Callable:
    """The per-seed training update, RunState -> (RunState, metrics): a dict of scalars, NUMERICAL_FAULT among
    them. `wm` is the world model (networks.py), `ac` what the actor-critic losses are made of."""
    c = config
    hidden, z_size = c.num_hidden_units, heads.latents.size
    action_dims = spec.num_actions if spec.continuous else None  # continuous actions' components
    # With the dynamics gradient the rollout is a function of the actor's parameters, differentiated with the
    # actor's loss (the world model's parameters are not differentiated: the loss does not update them).
    dynamics = ac.gradient.kind != "reinforce"

    def train_update(state):
        values = run_values(c, state.hparams)
        key, sample_key, wm_key, imagine_key = jax.random.split(state.key, 4)
        params, opt = state.params, state.opt_states
        batch = sample_sequences(state.replay, sample_key, c.batch_size, c.sequence_length, c.maximize_nonterminal)
        if c.binary_state:
            batch = batch._replace(obs=unpack_frames(batch.obs, spec.obs_shape))  # [B, T, *obs] uint8

        wm_grad_fn = jax.value_and_grad(lambda p: world_model_loss(wm, heads, values, p, batch, wm_key), has_aux=True)
        (wm_loss, (metrics, posterior)), wm_grads = wm_grad_fn(params.world_model)
        start = jax.lax.stop_gradient(RSSMState(posterior.h.reshape(-1, hidden), posterior.z.reshape(-1, z_size)))
        rollout_of = lambda actor_params: imagine(
            wm, heads, params.world_model, ActorPolicy(ac.actor_apply, actor_params, heads, values["actor_unimix"],
                                                       action_dims, dynamics), start, imagine_key, c.rollout_length)
        fixed_rollout = None if dynamics else rollout_of(params.actor)

        def actor_critic_loss(actor_params, critic_params):
            rollout = rollout_of(actor_params) if dynamics else fixed_rollout
            actor_loss, critic_loss, ac_metrics = actor_critic_losses(
                ac, values, actor_params, critic_params, params.target_critic, rollout, state.return_scale)
            # disjoint params: each gets its own loss's gradient
            return actor_loss + critic_loss, (actor_loss, critic_loss, ac_metrics)

        (_, (actor_loss, critic_loss, ac_metrics)), (actor_grads, critic_grads) = jax.value_and_grad(
            actor_critic_loss, argnums=(0, 1), has_aux=True)(params.actor, params.critic)

        grads = (wm_grads, actor_grads, critic_grads)
        grad_norms = tuple(flat_norm(g) for g in grads)
        updates, new_opt = zip(*(optimizer.update(g, o, p)  # per network; the target critic has no optimizer
                                 for optimizer, g, o, p in zip(optimizers(c, values), grads, opt, params)))
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
        state = state._replace(params=keep_finite(new_params, params), opt_states=keep_finite(opt._make(new_opt), opt),
                               key=key, updates=state.updates + 1,
                               return_scale=keep_finite(ac_metrics["return_scale"], state.return_scale))
        return state, metrics

    return train_update


def run_values(config: Config, hparams: dict) -> dict:
    """{sweepable key: value} as one run sees them (experiment.config.SWEEPABLE_KEYS): the run's swept value (an
    array, traced inside the program) where the key is swept, else the config's number. The losses, the
    optimizers and acting read the sweepable keys from here, never from the config."""
    return {key: hparams[key] if key in hparams else getattr(config, key) for key in SWEEPABLE_KEYS}


def optimizers(config: Config, values: dict) -> tuple[optax.GradientTransformation, ...]:
    """(world model, actor, critic) optimizers; learning rates and constants from the run's `values`."""
    model = make_optimizer(values, values["model_alpha"], eps=config.model_eps_adam or None,
                           clip=config.model_grad_clip or None)
    return model, make_optimizer(values, values["pi_alpha"]), make_optimizer(values, values["V_alpha"])


def make_optimizer(values: dict, learning_rate: float, eps: float | None = None,
                   clip: float | None = None) -> optax.GradientTransformation:
    """The one optimizer recipe: global-norm clipping (at `clip`, default the run's grad_clip), then AdamW
    (epsilon `eps`, default eps_adam) with decoupled weight decay (wd_adam); `values` as run_values returns them.

    Clipping and Adam run on each network's gradients concatenated into one vector (`optax.flatten`; the
    moments are stored flat too): the same maths as leaf by leaf, but a handful of kernels instead of several
    per leaf (the world model has 52 leaves), which made up a large share of the compile time. The weight
    decay and the learning rate are applied leaf by leaf, so that the parameters are never concatenated: each
    new parameter then reads only its old self, elementwise, and XLA writes it in place. (With the decay
    inside `optax.flatten`, XLA:GPU fused the parameters' concatenation into every parameter's update, so
    no update was in place and the skip-training branch of the loop's `cond` copied all parameters at every
    acting step.) The state has the layout of `optax.flatten(chain(clip, adamw))`."""
    flat = optax.flatten(optax.chain(optax.clip_by_global_norm(values["grad_clip"] if clip is None else clip),
                                     optax.scale_by_adam(eps=values["eps_adam"] if eps is None else eps)))
    decay = optax.add_decayed_weights(values["wd_adam"])
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


def all_finite(tree) -> jax.Array:
    """Whether every entry of every leaf of `tree` is finite: one reduction per leaf, no concatenated copy."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def flat_norm(tree) -> jax.Array:
    """The global L2 norm of `tree`, computed on its raveled leaves (tree order, as `optax.flatten` concatenates
    them), so XLA reuses the optimizer's concatenation instead of adding a kernel or two per leaf."""
    return optax.tree.norm(ravel_pytree(tree)[0])
