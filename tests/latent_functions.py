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
