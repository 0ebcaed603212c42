"""Value tests of the DreamerV2 update: every loss piece against an independent NumPy computation (float64
formulas and Python loops written here; the code under test is never asked for an expected value), and the
gradients of each loss checked to reach exactly the parameters the algorithm says.

Network apply functions (`WorldModel` members) are called step by step where a reference needs a network's
output; random numbers are drawn with the same keys and shapes as the code under test so that samples agree."""

import dataclasses
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from latent_functions import config_actor_critic_losses as actor_critic_losses
from latent_functions import config_imagine as imagine
from latent_functions import config_world_model_loss as world_model_loss
from latent_functions import (
    kl_balance_loss,
    latent_entropy,
    latent_kl,
    latent_kl_to_standard_normal,
    latent_noise,
    latent_param_size,
    latent_size,
)

from agent.distributions import Bernoulli, Normal
from experiment.config import load_config
from losses_and_evaluation import (
    ImaginedRollout,
    lambda_returns,
)
from networks import make_actor_critic, make_world_model
from replay_buffer import SequenceBatch

DEBUG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "debug.json")
OBS_SHAPE = (5,)  # a flat observation: MLP encoder and decoder, the cheapest world model to build
NUM_ACTIONS = 3


def tiny_config(**overrides):
    """The debug preset shrunk further; loss weights all distinct so a weight applied to the wrong term shows."""
    base = dict(num_hidden_units=6, num_features=2, feature_width=3, rollout_length=3, batch_size=2,
                sequence_length=5, no_conv=True, discount=0.9, lmbda=0.7, beta=0.05,
                state_prediction_weight=0.7, reward_weight=1.3, termination_weight=0.6,
                KL_prior_weight=0.3, KL_posterior_weight=0.1, posterior_entropy_weight=0.05)
    return dataclasses.replace(load_config(DEBUG), **{**base, **overrides})


def random_params(init, seed, *inputs):
    """Parameters of init's structure drawn with NumPy, N(0, 0.5²) biases included: the initializers would
    compile a program of their own (seconds on CPU), and any values serve a value test."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0), *inputs)
    return jax.tree.map(lambda leaf: jnp.asarray(0.5 * rng.normal(size=leaf.shape), leaf.dtype), shapes)


def tiny_world_model(config, seed=0):
    wm = make_world_model(config, OBS_SHAPE, NUM_ACTIONS)
    params = random_params(wm.init, seed, jnp.zeros(OBS_SHAPE), jnp.zeros(config.num_hidden_units),
                           jnp.zeros(latent_size(config)), jnp.int32(0))
    return wm, params


def jitted(wm):
    """The world model with each network compiled once for the reference loops: op-by-op dispatch would compile
    every primitive separately, which is most of the time these tests take on CPU."""
    rssm = types.SimpleNamespace(posterior=jax.jit(wm.rssm.posterior), prior=jax.jit(wm.rssm.prior),
                                 transition=jax.jit(wm.rssm.transition))
    return types.SimpleNamespace(rssm=rssm, encode=jax.jit(wm.encode), decode=jax.jit(wm.decode),
                                 reward=jax.jit(wm.reward), termination=jax.jit(wm.termination),
                                 observation=wm.observation)


# ---------------------------------------------------------------------------------------------
# NumPy (float64) references of the distributions, written from their textbook definitions.

def np_softplus(x):
    return np.logaddexp(0.0, x)


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_categorical_probs(config, params):
    """Raw latent parameters [..., F*W] -> probabilities [..., F, W] (a softmax per latent variable)."""
    logits = np.asarray(params, np.float64).reshape(*np.shape(params)[:-1], config.num_features, config.feature_width)
    return np.exp(np_log_softmax(logits))


def np_gaussian(params):
    """Raw latent parameters [..., 2F] -> (mean, std), std = softplus(raw) + 0.1."""
    params = np.asarray(params, np.float64)
    half = params.shape[-1] // 2
    return params[..., :half], np_softplus(params[..., half:]) + 0.1


def np_inverse_cdf(u, probs):
    """Class index per row by inverse-CDF sampling: the first class whose cumulative probability reaches u."""
    probs = np.asarray(probs, np.float64)
    flat_u, flat_p = np.asarray(u, np.float64).reshape(-1), probs.reshape(-1, probs.shape[-1])
    out = []
    for ui, pi in zip(flat_u, flat_p):
        cdf = np.cumsum(pi)
        out.append(min(int(np.sum(cdf < ui * cdf[-1])), len(pi) - 1))
    return np.array(out).reshape(probs.shape[:-1])


def np_latent_sample(config, noise, params):
    """A latent sample from the same noise: one-hot per categorical variable, or mean + std * noise."""
    if config.latent_type == "categorical":
        probs = np_categorical_probs(config, params)  # [..., F, W]
        one_hot = np.eye(config.feature_width)[np_inverse_cdf(noise[..., 0], probs)]
        return one_hot.reshape(*one_hot.shape[:-2], -1)
    mean, std = np_gaussian(params)
    return mean + std * np.asarray(noise, np.float64)


def np_gaussian_entropy(std):
    return 0.5 * np.log(2 * np.pi * np.e * std**2)


def np_gaussian_cross_entropy(mean_p, std_p, mean_q, std_q):
    """E_p[-log q] for one-dimensional Gaussians."""
    return 0.5 * np.log(2 * np.pi * std_q**2) + (std_p**2 + (mean_p - mean_q) ** 2) / (2 * std_q**2)


def np_latent_kl(config, params_p, params_q):
    """KL(p || q) summed over the latent variables, [...]: sum p log(p/q) for categoricals, cross-entropy minus
    entropy for Gaussians (a different route from the closed form in agent/distributions.py)."""
    if config.latent_type == "categorical":
        p, q = np_categorical_probs(config, params_p), np_categorical_probs(config, params_q)
        return np.sum(p * (np.log(p) - np.log(q)), axis=(-2, -1))
    (mean_p, std_p), (mean_q, std_q) = np_gaussian(params_p), np_gaussian(params_q)
    return np.sum(np_gaussian_cross_entropy(mean_p, std_p, mean_q, std_q) - np_gaussian_entropy(std_p), -1)


def np_latent_entropy(config, params):
    if config.latent_type == "categorical":
        p = np_categorical_probs(config, params)
        return -np.sum(p * np.log(p), axis=(-2, -1))
    return np.sum(np_gaussian_entropy(np_gaussian(params)[1]), -1)


def np_kl_to_standard_normal(params):
    mean, std = np_gaussian(params)
    return np.sum(np_gaussian_cross_entropy(mean, std, 0.0, 1.0) - np_gaussian_entropy(std), -1)


def np_bernoulli_log_prob(logits, target):
    return target * np_log_sigmoid(logits) + (1 - target) * np_log_sigmoid(-logits)


def np_gaussian_log_prob(mean, std, target):
    return -0.5 * np.log(2 * np.pi * std**2) - (target - mean) ** 2 / (2 * std**2)


def np_lambda_returns(rewards, continues, values, discount, lmbda):
    """Backward loop: R_K = v_K, R_k = r_k + discount c_k ((1 - λ) v_{k+1} + λ R_{k+1})."""
    horizon = rewards.shape[0]
    returns = np.zeros(rewards.shape)
    next_return = values[horizon]
    for k in reversed(range(horizon)):
        returns[k] = rewards[k] + discount * continues[k] * ((1 - lmbda) * values[k + 1] + lmbda * next_return)
        next_return = returns[k]
    return returns


def f64(x):
    return np.asarray(x, np.float64)


def assert_all_zero(tree):
    for leaf in jax.tree.leaves(tree):
        np.testing.assert_array_equal(leaf, 0.0)


def assert_some_nonzero(tree, what=""):
    assert any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(tree)), what


# ---------------------------------------------------------------------------------------------
# Likelihoods.

def test_bernoulli_and_gaussian_log_probs_match_their_definitions():
    logits = np.array([-30.0, -3.0, -0.5, 0.0, 0.7, 4.0, 30.0])
    # value and d/dl log p = t - σ(l), the gradient the observation and termination heads follow
    bernoulli = jax.jit(jax.value_and_grad(lambda logits, t: jnp.sum(Bernoulli(logits).log_prob(t))))
    elementwise = jax.jit(lambda logits, t: Bernoulli(logits).log_prob(t))
    for target in (0.0, 1.0):
        targets = np.full(logits.shape, target, np.float32)
        np.testing.assert_allclose(elementwise(jnp.asarray(logits, jnp.float32), targets),
                                   np_bernoulli_log_prob(logits, targets), rtol=1e-5, atol=1e-6)
        _, grad = bernoulli(jnp.asarray(logits, jnp.float32), targets)
        np.testing.assert_allclose(grad, target - 1 / (1 + np.exp(-logits)), atol=1e-6)

    mean = np.array([0.3, -1.0, 2.0, 0.0])
    log_std = np.array([0.0, -0.5, 0.4, 1.2])
    target = np.array([0.1, 0.5, -1.0, 3.0])
    gaussian = jax.jit(lambda mean, log_std, x: Normal(mean, log_std).log_prob(x))
    np.testing.assert_allclose(gaussian(*(jnp.asarray(a, jnp.float32) for a in (mean, log_std, target))),
                               np_gaussian_log_prob(mean, np.exp(log_std), target), rtol=1e-5)
    # a fixed log std of 0 (the default reward head and the non-binary decoder) is the unit-variance Gaussian
    np.testing.assert_allclose(gaussian(jnp.asarray(mean, jnp.float32), jnp.float32(0.0),
                                        jnp.asarray(target, jnp.float32)),
                               np_gaussian_log_prob(mean, 1.0, target), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Latent distributions and KL balancing.

@pytest.mark.parametrize("latent_type", ["categorical", "gaussian"])
def test_latent_kl_entropy_and_kl_to_standard_normal_match_numpy(latent_type):
    config = tiny_config(latent_type=latent_type)
    rng = np.random.default_rng(0)
    shape = (2, 3, latent_param_size(config))
    p, q = (jnp.asarray(1.5 * rng.normal(size=shape), jnp.float32) for _ in range(2))
    kl, entropy, kl_standard_normal = jax.jit(lambda p, q: (
        latent_kl(config, p, q), latent_entropy(config, p),
        latent_kl_to_standard_normal(config, p) if latent_type == "gaussian" else None))(p, q)
    np.testing.assert_allclose(kl, np_latent_kl(config, p, q), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(entropy, np_latent_entropy(config, p), rtol=1e-4, atol=1e-6)
    if latent_type == "gaussian":
        np.testing.assert_allclose(kl_standard_normal, np_kl_to_standard_normal(p), rtol=1e-4, atol=1e-6)


def np_categorical_kl_grads(config, post, prior):
    """Analytic gradients of sum KL(softmax(post) || softmax(prior)) with respect to the raw logits of each side:
    d/d prior = q - p;  d/d post = p (log p - log q - KL of the variable)."""
    p, q = np_categorical_probs(config, post), np_categorical_probs(config, prior)
    kl_var = np.sum(p * (np.log(p) - np.log(q)), -1, keepdims=True)  # [..., F, 1]
    flat = lambda g: g.reshape(*g.shape[:-2], -1)
    return flat(p * (np.log(p) - np.log(q) - kl_var)), flat(q - p)


def np_numeric_grad(f, x, eps=1e-6):
    """Central finite differences of the scalar f at x (float64)."""
    x = f64(x)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        grad[i] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad


@pytest.mark.parametrize("latent_type", ["categorical", "gaussian"])
def test_kl_balance_value_and_stop_gradients(latent_type):
    # Value: (KL_prior_weight + KL_posterior_weight) * KL(post || prior). Gradient: the prior's logits see only
    # KL_prior_weight * dKL/dprior, the posterior's only KL_posterior_weight * dKL/dpost.
    config = tiny_config(latent_type=latent_type)
    rng = np.random.default_rng(1)
    shape = (3, latent_param_size(config))
    post, prior = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(2))
    kl = np_latent_kl(config, post, prior)

    # the loss, the reported KL, and the gradients of the summed loss and of the summed reported KL
    summed = lambda q, p: tuple(jnp.sum(x) for x in kl_balance_loss(config, q, p))
    (loss, kl_value), ((grad_post, grad_prior), (grad_post_kl, _)) = jax.jit(lambda q, p: (
        kl_balance_loss(config, q, p), jax.jacrev(summed, argnums=(0, 1))(q, p)))(post, prior)
    np.testing.assert_allclose(kl_value, kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(loss, (config.KL_prior_weight + config.KL_posterior_weight) * kl, rtol=1e-4, atol=1e-6)

    if latent_type == "categorical":
        dkl_post, dkl_prior = np_categorical_kl_grads(config, post, prior)
    else:
        dkl_post = np_numeric_grad(lambda x: np.sum(np_latent_kl(config, x, f64(prior))), post)
        dkl_prior = np_numeric_grad(lambda x: np.sum(np_latent_kl(config, f64(post), x)), prior)
    np.testing.assert_allclose(grad_prior, config.KL_prior_weight * dkl_prior, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(grad_post, config.KL_posterior_weight * dkl_post, rtol=1e-3, atol=1e-5)
    # the reported KL (second output) is a metric: it carries no gradient to the posterior side
    assert_all_zero(grad_post_kl)


# ---------------------------------------------------------------------------------------------
# World-model loss: a Python loop over time calling the networks one step at a time.

def np_world_model_terms(config, wm, params, batch, noise):
    """Per-step terms [B, T] of the world-model loss, a time loop with the carry reset after every episode end
    (terminated or truncated); the termination target is `terminated` alone. Returns (terms, h seen, z)."""
    c = config
    batch_size, seq_len = batch.action.shape
    obs = np.asarray(batch.obs, np.float32)
    ends = np.asarray(batch.terminated) | np.asarray(batch.truncated)
    h = jnp.zeros((batch_size, c.num_hidden_units), jnp.float32)
    names = ("obs", "reward", "termination", "kl", "entropy", "prior_entropy", "kl_standard_normal")
    terms = {name: np.zeros((batch_size, seq_len)) for name in names}
    hs, zs = [], []
    for t in range(seq_len):
        post = f64(wm.rssm.posterior(params, h, wm.encode(params, jnp.asarray(obs[:, t]))))
        prior = f64(wm.rssm.prior(params, h))  # the prior of z_t reads the same h_t as the posterior
        z = jnp.asarray(np_latent_sample(c, np.asarray(noise[t]), post), jnp.float32)
        decoded = f64(wm.decode(params, jnp.concatenate([h, z], -1)))  # [B, *obs]
        if c.binary_state:
            terms["obs"][:, t] = np_bernoulli_log_prob(decoded, obs[:, t]).sum(-1)
        else:
            terms["obs"][:, t] = np_gaussian_log_prob(decoded, 1.0, obs[:, t]).sum(-1)
        next_h = wm.rssm.transition(params, h, z, jnp.asarray(batch.action[:, t]))
        # r_t and d_t follow a_t: their heads read h_{t+1}, computed before any reset
        reward_out = f64(wm.reward(params, next_h))
        reward_std = np.exp(reward_out[:, 1]) if c.learn_reward_variance else 1.0
        terms["reward"][:, t] = np_gaussian_log_prob(reward_out[:, 0], reward_std, f64(batch.reward[:, t]))
        terms["termination"][:, t] = np_bernoulli_log_prob(f64(wm.termination(params, next_h)),
                                                           f64(batch.terminated[:, t]))
        terms["kl"][:, t] = np_latent_kl(c, post, prior)
        terms["entropy"][:, t] = np_latent_entropy(c, post)
        terms["prior_entropy"][:, t] = np_latent_entropy(c, prior)
        if c.latent_type == "gaussian":
            terms["kl_standard_normal"][:, t] = np_kl_to_standard_normal(post)
        hs.append(np.asarray(h))
        zs.append(np.asarray(z))
        h = jnp.where(jnp.asarray(ends[:, t])[:, None], 0.0, next_h)
    return terms, np.stack(hs, 1), np.stack(zs, 1)


def compiled_world_model_loss(config, wm):
    return jax.jit(lambda params, batch, key: world_model_loss(config, wm, params, batch, key))


GRADIENT_TERMS = ("model_loss", "observation_loss", "reward_loss", "termination_loss", "kl")


def world_model_loss_with_grads(config, wm):
    """world_model_loss's outputs, and the gradients of its total and of some of its terms (GRADIENT_TERMS, by
    name) with respect to the world-model parameters, compiled as one program: (grads, (loss, metrics, posterior))."""
    def terms(params, batch, key):
        loss, (metrics, posterior) = world_model_loss(config, wm, params, batch, key)
        return tuple(metrics[name] for name in GRADIENT_TERMS), (loss, metrics, posterior)

    jacobian = jax.jit(jax.jacrev(terms, has_aux=True))

    def run(params, batch, key):
        grads, outputs = jacobian(params, batch, key)
        return dict(zip(GRADIENT_TERMS, grads)), outputs

    return run


def tiny_batch(config, seed):
    """B = 2 sequences of T = 5 steps: a termination at t = 1 in row 0, a time-limit truncation (not terminal)
    at t = 2 in row 1, another termination at t = 3 in row 1."""
    batch_size, seq_len = config.batch_size, config.sequence_length
    rng = np.random.default_rng(seed)
    if config.binary_state:
        obs = (rng.random((batch_size, seq_len, *OBS_SHAPE)) < 0.4).astype(np.uint8)
    else:
        obs = rng.normal(size=(batch_size, seq_len, *OBS_SHAPE)).astype(np.float32)
    terminated = np.zeros((batch_size, seq_len), bool)
    terminated[0, 1] = terminated[1, 3] = True
    truncated = np.zeros((batch_size, seq_len), bool)
    truncated[1, 2] = True
    return SequenceBatch(obs=jnp.asarray(obs), action=jnp.asarray(rng.integers(0, NUM_ACTIONS, (batch_size, seq_len)),
                                                                 jnp.int32),
                         reward=jnp.asarray(rng.normal(size=(batch_size, seq_len)), jnp.float32),
                         terminated=jnp.asarray(terminated), truncated=jnp.asarray(truncated))


@pytest.mark.parametrize("latent_type,binary_state,learn_reward_variance",
                         [("categorical", True, False), ("gaussian", False, True)])
def test_world_model_loss_terms_match_a_step_by_step_numpy_computation(latent_type, binary_state,
                                                                       learn_reward_variance):
    c = tiny_config(latent_type=latent_type, binary_state=binary_state, learn_reward_variance=learn_reward_variance)
    wm, params = tiny_world_model(c)
    batch = tiny_batch(c, seed=2)
    key = jax.random.PRNGKey(3)
    loss, (metrics, posterior) = compiled_world_model_loss(c, wm)(params, batch, key)

    # the posterior samples' noise: observe_sequence draws it from `key` at once, time-major [T, B, ...]
    noise = latent_noise(c, key, (c.sequence_length, c.batch_size))
    terms, h, z = np_world_model_terms(c, jitted(wm), params, batch, noise)
    if latent_type == "categorical":
        entropy_term = -c.posterior_entropy_weight * terms["entropy"].mean()  # an entropy bonus
    else:  # Gaussian latents: the posterior is pulled toward N(0, I) instead
        entropy_term = c.posterior_entropy_weight * terms["kl_standard_normal"].mean()
    expected = {
        "observation_loss": -c.state_prediction_weight * terms["obs"].mean(),
        "reward_loss": -c.reward_weight * terms["reward"].mean(),
        "termination_loss": -c.termination_weight * terms["termination"].mean(),
        "kl_loss": (c.KL_prior_weight + c.KL_posterior_weight) * terms["kl"].mean(),
        "posterior_entropy_loss": entropy_term,
        "kl": terms["kl"].mean(),
        "posterior_entropy": terms["entropy"].mean(),
        "prior_entropy": terms["prior_entropy"].mean(),
    }
    expected["model_loss"] = sum(expected[name] for name in ("observation_loss", "reward_loss", "termination_loss",
                                                            "kl_loss", "posterior_entropy_loss"))
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(loss, expected["model_loss"], rtol=1e-4, atol=1e-5)
    # the posterior states handed to imagination: the h each posterior saw (zero right after an episode end,
    # terminated or truncated) and the sample
    np.testing.assert_allclose(posterior.h, h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(posterior.z, z, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(posterior.h[0, 2], 0.0)  # after row 0's termination at t = 1
    np.testing.assert_array_equal(posterior.h[1, 3], 0.0)  # after row 1's truncation at t = 2


def test_world_model_loss_trains_each_module_with_its_own_term():
    # Every module of the world model learns from its loss; each head only from its own term; the prior only
    # from the KL balance's prior side, with exactly KL_prior_weight (the posterior is held fixed there: the
    # reported `kl` is KL(stop_gradient(posterior) || prior)).
    c = tiny_config()
    wm, params = tiny_world_model(c)
    grads, _ = world_model_loss_with_grads(c, wm)(params, tiny_batch(c, seed=2), jax.random.PRNGKey(3))
    same = lambda a, b: jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a, b)
    for module, grad in grads["model_loss"].items():
        assert_some_nonzero(grad, module)
        if module.startswith("decoder/"):
            same(grad, grads["observation_loss"][module])
        elif module.startswith("reward/"):
            same(grad, grads["reward_loss"][module])
        elif module.startswith("termination/"):
            same(grad, grads["termination_loss"][module])
        elif module.startswith("prior/"):
            same(grad, jax.tree.map(lambda g: c.KL_prior_weight * g, grads["kl"][module]))
    assert {module.split("/")[0] for module in grads["model_loss"]} >= {"decoder", "reward", "termination", "prior"}


# ---------------------------------------------------------------------------------------------
# Imagination.

def linear_actor(params, feat):
    return feat @ params["w"] + params["b"]  # [..., D] -> logits [..., A]


def linear_critic(params, feat):
    return (feat @ params["w"] + params["b"])[..., None]  # [..., D] -> critic output [..., 1] (the value)


def start_states(config, seed, count):
    """Start states [N, H], [N, Z]: a random h and a valid latent sample (one-hot per categorical variable)."""
    rng = np.random.default_rng(seed)
    start_h = rng.normal(size=(count, config.num_hidden_units))
    z_params = rng.normal(size=(count, latent_param_size(config)))
    if config.latent_type == "categorical":
        noise = rng.random((count, config.num_features, 1))
    else:
        noise = rng.normal(size=(count, config.num_features))
    start_z = np_latent_sample(config, noise, z_params)
    return jnp.asarray(start_h, jnp.float32), jnp.asarray(start_z, jnp.float32)


@pytest.mark.parametrize("latent_type", ["categorical", "gaussian"])
def test_imagine_matches_a_python_loop_over_the_networks(latent_type):
    c = tiny_config(latent_type=latent_type)
    wm, params = tiny_world_model(c, seed=4)
    count, horizon = 4, c.rollout_length
    start_h, start_z = start_states(c, 5, count)
    feat_size = c.num_hidden_units + latent_size(c)
    rng = np.random.default_rng(6)
    actor_params = {"w": jnp.asarray(2.0 * rng.normal(size=(feat_size, NUM_ACTIONS)), jnp.float32),
                    "b": jnp.asarray(rng.normal(size=NUM_ACTIONS), jnp.float32)}
    key = jax.random.PRNGKey(7)
    rollout = jax.jit(lambda *args: imagine(c, wm, args[0], linear_actor, *args[1:]))(
        params, actor_params, start_h, start_z, key)

    # imagine's noise: two keys split from `key`, the actions' uniforms [K, N, 1] and the latents' noise [K, N]
    action_key, latent_key = jax.random.split(key)
    action_u = np.asarray(jax.random.uniform(action_key, (horizon, count, 1)))
    noise = np.asarray(latent_noise(c, latent_key, (horizon, count)))
    h, z = start_h, start_z
    networks, actor = jitted(wm), jax.jit(linear_actor)
    feats, actions, rewards, conts = [np.concatenate([h, z], -1)], [], [], []
    for k in range(horizon):
        # the action of step k is drawn from the actor's distribution at the current feature [h_k, z_k]
        probs = np.exp(np_log_softmax(f64(actor(actor_params, jnp.concatenate([h, z], -1)))))
        action = np_inverse_cdf(action_u[k, :, 0], probs)
        next_h = networks.rssm.transition(params, h, z, jnp.asarray(action))
        z = jnp.asarray(np_latent_sample(c, noise[k], f64(networks.rssm.prior(params, next_h))), jnp.float32)
        # the transition's reward and continuation are read from h_{k+1}, as the world model was trained
        rewards.append(f64(networks.reward(params, next_h))[:, 0])
        conts.append(1 / (1 + np.exp(f64(networks.termination(params, next_h)))))
        h = next_h
        feats.append(np.concatenate([h, z], -1))
        actions.append(action)

    assert rollout.feat.shape == (horizon + 1, count, feat_size)
    np.testing.assert_array_equal(rollout.feat[0], np.concatenate([start_h, start_z], -1))  # index 0: the start
    np.testing.assert_allclose(rollout.feat, np.stack(feats), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rollout.action, np.stack(actions))
    np.testing.assert_allclose(rollout.reward, np.stack(rewards), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rollout.cont, np.stack(conts), rtol=1e-5, atol=1e-6)
    assert len(np.unique(np.stack(actions))) > 1  # the actor's choice matters in this rollout


# ---------------------------------------------------------------------------------------------
# λ-returns and the actor-critic losses.

def test_lambda_returns_with_termination_and_horizon_cut_match_a_numpy_loop():
    # Columns: a termination at k = 2 (c = 0: nothing after it counts), soft continuation probabilities, none
    # terminating (the horizon truncates the rollout: R_K = v_K bootstraps), a termination at the last step
    # (the bootstrap value is dropped).
    rng = np.random.default_rng(0)
    horizon = 5
    rewards = rng.normal(size=(horizon, 4))
    values = rng.normal(size=(horizon + 1, 4))
    continues = np.ones((horizon, 4))
    continues[2, 0] = 0.0
    continues[:, 1] = [0.9, 0.3, 0.7, 1.0, 0.5]
    continues[horizon - 1, 3] = 0.0
    discount, lmbda = 0.9, 0.7
    got = lambda_returns(*(jnp.asarray(a, jnp.float32) for a in (rewards, continues, values)), discount, lmbda)
    expected = np_lambda_returns(rewards, continues, values, discount, lmbda)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[2, 0], rewards[2, 0], rtol=1e-6)  # the terminal step's return is its reward
    np.testing.assert_allclose(got[horizon - 1, 3], rewards[horizon - 1, 3], rtol=1e-6)
    # a column that never ends: the λ-weighted sum of n-step returns bootstrapped with values (closed form)
    n_step = lambda k, n: sum(discount**j * rewards[k + j, 2] for j in range(n)) + discount**n * values[k + n, 2]
    closed = [sum((1 - lmbda) * lmbda ** (n - 1) * n_step(k, n) for n in range(1, horizon - k))
              + lmbda ** (horizon - k - 1) * n_step(k, horizon - k) for k in range(horizon)]
    np.testing.assert_allclose(got[:, 2], closed, rtol=1e-5, atol=1e-5)


def hand_built_rollout():
    """K = 3, N = 2, features of D = 4: an episode terminating at k = 1 in column 0, soft continuations in 1."""
    rng = np.random.default_rng(1)
    horizon, count, dim = 3, 2, 4
    cont = np.array([[1.0, 0.8], [0.0, 0.6], [1.0, 0.9]])
    rollout = ImaginedRollout(feat=jnp.asarray(rng.normal(size=(horizon + 1, count, dim)), jnp.float32),
                              action=jnp.asarray([[0, 2], [1, 1], [2, 0]], jnp.int32),
                              reward=jnp.asarray(rng.normal(size=(horizon, count)), jnp.float32),
                              cont=jnp.asarray(cont, jnp.float32))
    params = lambda shape: {"w": jnp.asarray(rng.normal(size=shape), jnp.float32),
                            "b": jnp.asarray(rng.normal(size=shape[1:]), jnp.float32)}
    return rollout, params((dim, NUM_ACTIONS)), params((dim,)), params((dim,))


def test_actor_critic_losses_and_gradients_match_numpy():
    c = tiny_config()
    rollout, actor_params, critic_params, target_params = hand_built_rollout()
    losses = lambda a, v, t: actor_critic_losses(c, linear_actor, linear_critic, a, v, t, rollout)
    # the losses, and the gradients of their sum with respect to the actor, critic and target critic parameters
    (actor_loss, critic_loss, metrics), (actor_grads, critic_grads, target_grads) = jax.jit(lambda *p: (
        losses(*p), jax.grad(lambda *q: sum(losses(*q)[:2]), argnums=(0, 1, 2))(*p)))(
        actor_params, critic_params, target_params)

    feat, action, cont = f64(rollout.feat), np.asarray(rollout.action), f64(rollout.cont)
    critic_w, critic_b = f64(critic_params["w"]), f64(critic_params["b"])
    actor_w, actor_b = f64(actor_params["w"]), f64(actor_params["b"])
    # λ-returns bootstrap with the target critic, not the critic being trained
    target_values = feat @ f64(target_params["w"]) + f64(target_params["b"])  # [K+1, N]
    returns = np_lambda_returns(f64(rollout.reward), cont, target_values, c.discount, c.lmbda)  # [K, N]
    horizon, count = returns.shape
    weights = np.ones((horizon, count))  # probability the episode still runs when step k starts
    for k in range(1, horizon):
        weights[k] = weights[k - 1] * cont[k - 1]
    values = feat[:-1] @ critic_w + critic_b
    log_probs = np_log_softmax(feat[:-1] @ actor_w + actor_b)  # the actor at the features the actions came from
    probs = np.exp(log_probs)
    chosen = np.take_along_axis(log_probs, action[..., None], -1)[..., 0]
    entropy = -np.sum(probs * log_probs, -1)
    advantage = returns - values  # REINFORCE with the critic as baseline

    np.testing.assert_allclose(critic_loss, np.mean(weights * 0.5 * (values - returns) ** 2), rtol=1e-5)
    np.testing.assert_allclose(actor_loss, -np.mean(weights * (chosen * advantage + c.beta * entropy)), rtol=1e-5)
    np.testing.assert_allclose(metrics["actor_entropy"], entropy.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["imagined_return"], returns[0].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["imagined_value"], values.mean(), rtol=1e-5)

    # Analytic gradients. Actor, per logit: -w/M [A (onehot(a) - π) - β π (log π + H)], with the advantage A a
    # constant; critic, per value: w/M (V - R), with the returns R constants.
    size = horizon * count
    one_hot = np.eye(NUM_ACTIONS)[action]
    logit_grad = -(weights / size)[..., None] * (advantage[..., None] * (one_hot - probs)
                                                 - c.beta * probs * (log_probs + entropy[..., None]))
    value_grad = weights / size * (values - returns)
    np.testing.assert_allclose(actor_grads["w"], np.einsum("knd,kna->da", feat[:-1], logit_grad), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(actor_grads["b"], logit_grad.sum((0, 1)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(critic_grads["w"], np.einsum("knd,kn->d", feat[:-1], value_grad), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(critic_grads["b"], value_grad.sum(), rtol=1e-4, atol=1e-6)
    assert_all_zero(target_grads)  # the target critic is never trained by gradient


def np_percentile(values, q):
    """The q-th percentile of `values` by linear interpolation between the sorted values (NumPy's default),
    written out: rank q/100 * (n - 1) between the order statistics below and above it."""
    ordered = sorted(float(v) for v in np.ravel(values))
    rank = q / 100.0 * (len(ordered) - 1)
    below = int(np.floor(rank))
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (rank - below) * (ordered[above] - ordered[below])


@pytest.mark.parametrize("previous_scale,reward_scale", [(0.0, 1.0), (3.0, 40.0)])
def test_return_normalization_divides_advantages_by_the_ema_of_the_return_spread(previous_scale, reward_scale):
    # S <- decay S + (1 - decay) (P95 - P5 of the batch's λ-returns); advantages / max(1, S). Small returns
    # (spread below 1 with the EMA starting at 0) are left as they are; large ones are scaled down.
    c = tiny_config(return_normalization=True, return_scale_decay=0.9)
    rollout, actor_params, critic_params, target_params = hand_built_rollout()
    rollout = rollout._replace(reward=rollout.reward * reward_scale)
    actor_loss, _, metrics = jax.jit(lambda a, v, t: actor_critic_losses(
        c, linear_actor, linear_critic, a, v, t, rollout, jnp.float32(previous_scale)))(
        actor_params, critic_params, target_params)

    feat, action, cont = f64(rollout.feat), np.asarray(rollout.action), f64(rollout.cont)
    target_values = feat @ f64(target_params["w"]) + f64(target_params["b"])
    returns = np_lambda_returns(f64(rollout.reward), cont, target_values, c.discount, c.lmbda)
    spread = np_percentile(returns, 95) - np_percentile(returns, 5)
    scale = 0.9 * previous_scale + 0.1 * spread
    np.testing.assert_allclose(metrics["return_scale"], scale, rtol=1e-5)

    weights = np.ones_like(returns)
    for k in range(1, returns.shape[0]):
        weights[k] = weights[k - 1] * cont[k - 1]
    values = feat[:-1] @ f64(critic_params["w"]) + f64(critic_params["b"])
    log_probs = np_log_softmax(feat[:-1] @ f64(actor_params["w"]) + f64(actor_params["b"]))
    chosen = np.take_along_axis(log_probs, action[..., None], -1)[..., 0]
    entropy = -np.sum(np.exp(log_probs) * log_probs, -1)
    advantage = (returns - values) / max(1.0, scale)
    np.testing.assert_allclose(actor_loss, -np.mean(weights * (chosen * advantage + c.beta * entropy)), rtol=1e-5)
    if reward_scale > 1:
        assert scale > 1  # the case where the division changes the loss


def test_actor_loss_reaches_no_critic_parameter_and_critic_loss_no_actor_parameter():
    # The baseline is stop_gradient(values): the actor loss moves no critic parameter; the critic loss reads no
    # actor parameter; neither reaches the rollout (features, rewards, continuations come from the world model).
    c = tiny_config()
    rollout, actor_params, critic_params, target_params = hand_built_rollout()

    def losses(actor_params, critic_params, floats):  # floats: the rollout's float fields (feat, reward, cont)
        return actor_critic_losses(c, linear_actor, linear_critic, actor_params, critic_params, target_params,
                                   rollout._replace(feat=floats[0], reward=floats[1], cont=floats[2]))[:2]

    args = (actor_params, critic_params, (rollout.feat, rollout.reward, rollout.cont))
    actor_on, critic_on = jax.jit(jax.jacrev(losses, argnums=(0, 1, 2)))(*args)
    assert_some_nonzero(actor_on[0])
    assert_all_zero(actor_on[1])
    assert_all_zero(actor_on[2])
    assert_all_zero(critic_on[0])
    assert_some_nonzero(critic_on[1])
    assert_all_zero(critic_on[2])


# ---------------------------------------------------------------------------------------------
# Gradient routing through the composition train_update builds.

def test_actor_and_critic_losses_through_imagination_reach_only_their_own_network():
    # As train_update composes them: imagination from the world-model loss's posterior states with the current
    # world model and actor, then the actor and critic losses on that rollout. Neither loss moves a world-model
    # parameter (the rollout's features, rewards and continuations enter them stop-gradiented), nor the other's
    # network. (The world-model loss takes the world-model parameters alone: it cannot move the others.)
    c = tiny_config()
    wm, wm_params = tiny_world_model(c, seed=8)
    batch = tiny_batch(c, seed=9)
    actor, critic = make_actor_critic(c, NUM_ACTIONS)
    feat = jnp.zeros(c.num_hidden_units + latent_size(c))
    actor_params, critic_params = random_params(actor.init, 10, feat), random_params(critic.init, 11, feat)
    target_params = jax.tree.map(lambda p: p + 0.1, critic_params)
    wm_key, imagine_key = jax.random.PRNGKey(12), jax.random.PRNGKey(13)
    # the posterior states as train_update takes them (the world-model test's program, compiled once a run)
    _, (_, posterior) = compiled_world_model_loss(c, wm)(wm_params, batch, wm_key)
    start_h = jax.lax.stop_gradient(posterior.h.reshape(-1, c.num_hidden_units))  # [B*T, H]
    start_z = jax.lax.stop_gradient(posterior.z.reshape(-1, latent_size(c)))  # [B*T, Z]

    def losses(wm_params, actor_params, critic_params):
        rollout = imagine(c, wm, wm_params, actor.apply, actor_params, start_h, start_z, imagine_key)
        actor_loss, critic_loss, _ = actor_critic_losses(c, actor.apply, critic.apply, actor_params, critic_params,
                                                         target_params, rollout)
        # a third output, to show the zeros below are the stop-gradients' doing: the rollout's features do
        # depend on the world-model parameters
        return (actor_loss, critic_loss, jnp.sum(rollout.feat)), rollout

    # the gradient of each output with respect to each network's parameters, a 3 x 3 table, in one program
    table, rollout = jax.jit(jax.jacrev(losses, argnums=(0, 1, 2), has_aux=True))(
        wm_params, actor_params, critic_params)
    (actor_of_wm, actor_of_actor, actor_of_critic), (critic_of_wm, critic_of_actor, critic_of_critic), \
        (feat_of_wm, _, _) = table
    assert_all_zero(actor_of_wm)
    assert_some_nonzero(actor_of_actor)
    assert_all_zero(actor_of_critic)
    assert_all_zero(critic_of_wm)
    assert_all_zero(critic_of_actor)
    assert_some_nonzero(critic_of_critic)
    assert_some_nonzero(feat_of_wm)

    # The actions are drawn by inverse-CDF sampling and carry no gradient: the actor's gradient through
    # imagination is the one with the rollout held fixed.
    fixed = jax.jit(jax.grad(lambda a: actor_critic_losses(c, actor.apply, critic.apply, a, critic_params,
                                                           target_params, rollout)[0]))(actor_params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), actor_of_actor, fixed)
