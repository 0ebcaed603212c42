"""The distribution objects against plain NumPy formulas: the policy (with and without the uniform mix), the
one-hot categorical latents' log-prob and mode, the diagonal Gaussian's log-prob; the latent spaces' sizes and
noise. (KL, entropy, samples and the likelihoods of the world-model loss are checked in test_loss_values.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent.distributions import Categorical, DiagonalNormal, OneHotCategorical, latents
from experiment.config import Config


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - np.max(x, -1, keepdims=True) - np.log(np.sum(np.exp(x - np.max(x, -1, keepdims=True)), -1,
                                                           keepdims=True))


@pytest.mark.parametrize("unimix", [0.0, 0.01, 0.3])
def test_the_policy_mixes_in_the_uniform_distribution(unimix):
    logits = jnp.array([[2.0, -1.0, 0.5, -30.0], [0.0, 0.0, 0.0, 0.0]])
    policy = Categorical.from_logits(logits, unimix)
    probs = (1 - unimix) * np.exp(np_log_softmax(logits)) + unimix / 4
    np.testing.assert_allclose(np.exp(policy.log_probs), probs, rtol=1e-5, atol=1e-7)
    actions = jnp.array([3, 1])
    np.testing.assert_allclose(policy.log_prob(actions), np.log(probs[[0, 1], [3, 1]]), rtol=1e-5)
    np.testing.assert_allclose(policy.entropy(), -np.sum(probs * np.log(probs), -1), rtol=1e-5)
    assert policy.mode().tolist() == [0, 0]
    assert float(jnp.min(jnp.exp(policy.log_probs))) >= unimix / 4 * (1 - 1e-6)
    # a swept unimix (an array) is mixed in even where it is 0, with the same result
    np.testing.assert_allclose(Categorical.from_logits(logits, jnp.float32(unimix)).log_probs, policy.log_probs,
                               rtol=1e-5, atol=1e-6)


def test_policy_samples_follow_the_mixed_probabilities():
    policy = Categorical.from_logits(jnp.broadcast_to(jnp.array([3.0, 0.0, -50.0]), (20000, 3)), 0.3)
    probs = np.exp(np.asarray(policy.log_probs[0], np.float64))
    from_uniform = policy.sample_from_uniform(jax.random.uniform(jax.random.PRNGKey(0), (20000, 1)))
    gumbel = policy.sample(jax.random.PRNGKey(1))
    for actions in (from_uniform, gumbel):
        np.testing.assert_allclose(np.bincount(np.asarray(actions), minlength=3) / 20000, probs, atol=0.015)


def test_one_hot_categorical_log_prob_and_mode():
    logits = jax.random.normal(jax.random.PRNGKey(0), (5, 3 * 4))
    dist = OneHotCategorical.from_logits(logits, 3, 4)
    mode = dist.mode()
    expected = np.eye(4)[np.argmax(np.asarray(logits).reshape(5, 3, 4), -1)].reshape(5, 12)
    np.testing.assert_array_equal(mode, expected)
    log_probs = np_log_softmax(np.asarray(logits).reshape(5, 3, 4))
    np.testing.assert_allclose(dist.log_prob(mode), np.max(log_probs, -1).sum(-1), rtol=1e-5)
    sample = dist.sample(latents(Config(num_features=3, feature_width=4)).noise(jax.random.PRNGKey(1), (5,)))
    np.testing.assert_allclose(dist.log_prob(sample), np.sum(np.asarray(sample).reshape(5, 3, 4) * log_probs,
                                                             (-2, -1)), rtol=1e-5)


def test_diagonal_normal_log_prob_and_mode():
    mean, std = np.array([0.3, -1.0, 2.0]), np.array([0.5, 1.0, 2.0])
    x = np.array([0.0, 1.0, 2.5])
    dist = DiagonalNormal(jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32))
    expected = np.sum(-0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(dist.log_prob(jnp.asarray(x, jnp.float32)), expected, rtol=1e-5)
    np.testing.assert_array_equal(dist.mode(), dist.mean)


@pytest.mark.parametrize("latent_type,param_size,size,noise_shape", [
    ("categorical", 12, 12, (2, 3, 1)), ("gaussian", 6, 3, (2, 3))])
def test_the_latent_spaces(latent_type, param_size, size, noise_shape):
    space = latents(Config(num_features=3, feature_width=4, latent_type=latent_type))
    assert (space.param_size, space.size) == (param_size, size)
    noise = space.noise(jax.random.PRNGKey(0), (2,))
    assert noise.shape == noise_shape
    sample = space.distribution(jnp.zeros((2, param_size))).sample(noise)
    assert sample.shape == (2, size)
    assert space.one_hot_block(5) == ((5, 3, 4) if latent_type == "categorical" else None)
