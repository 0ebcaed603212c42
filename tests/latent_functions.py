"""The latent distributions' pieces as functions of the config and raw network parameters, as the loss tests
use them (distributions.latents(config) gives the objects they wrap)."""

from agent.distributions import latents


def latent_param_size(config):
    return latents(config).param_size


def latent_size(config):
    return latents(config).size


def latent_noise(config, key, batch_shape):
    return latents(config).noise(key, batch_shape)


def sample_latent_from_noise(config, noise, params):
    return latents(config).distribution(params).sample(noise)


def latent_kl(config, p, q):
    return latents(config).distribution(p).kl(latents(config).distribution(q))


def latent_entropy(config, params):
    return latents(config).distribution(params).entropy()


def latent_kl_to_standard_normal(config, params):
    return latents(config).distribution(params).kl_to_standard_normal()


# The losses as functions of the config, as the tests call them: the agent builds the same objects once
# (initialization.make_agent) and hands them to the losses.


def kl_balance_loss(config, posterior, prior):
    """(KL_prior_weight * dynamics term + KL_posterior_weight * representation term, KL(posterior || prior)) of
    latent parameters [..., P], as the world-model loss weighs RSSM.kl_loss's terms."""
    from losses_and_evaluation import loss_scales
    from networks import make_world_model
    terms, kl = make_world_model(config, (1,), 1).rssm.kl_loss(posterior, prior, config.free_nats)
    scales = loss_scales(run_values(config, {}))
    return scales["kl_dynamics"] * terms["kl_dynamics"] + scales["kl_representation"] * terms["kl_representation"], kl


def run_values(config, hparams):
    from agent.training_step import run_values as values
    return values(config, hparams)


def config_world_model_loss(config, wm, params, batch, key, continuous=False):
    from agent.distributions import make_heads
    from losses_and_evaluation import world_model_loss
    return world_model_loss(wm, make_heads(config, continuous), run_values(config, {}), params, batch, key)


def config_imagine(config, wm, wm_params, actor_apply, actor_params, start_h, start_z, key, horizon=None,
                   action_dims=None, straight_through=False):
    from agent.distributions import make_heads
    from losses_and_evaluation import ActorPolicy, imagine
    from networks import RSSMState
    heads = make_heads(config, action_dims is not None)
    policy = ActorPolicy(actor_apply, actor_params, heads, config.actor_unimix, action_dims, straight_through)
    return imagine(wm, heads, wm_params, policy, RSSMState(start_h, start_z), key, horizon or config.rollout_length)


def config_actor_critic_losses(config, actor_apply, critic_apply, actor_params, critic_params, target_params,
                               rollout, return_scale=0.0, continuous=False):
    from agent.distributions import actor_gradient, make_heads
    from losses_and_evaluation import actor_critic_losses, make_actor_critic_losses
    ac = make_actor_critic_losses(config, actor_apply, critic_apply, make_heads(config, continuous),
                                  actor_gradient(config, continuous))
    return actor_critic_losses(ac, run_values(config, {}), actor_params, critic_params, target_params, rollout,
                               return_scale)
