"""Unit tests of the loss pieces: λ-returns, KL balancing, latent distributions, RSSM shapes; the optimizer."""

import dataclasses

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from latent_functions import config_world_model_loss as world_model_loss
from latent_functions import (
    kl_balance_loss,
    latent_entropy,
    latent_kl,
    latent_noise,
    latent_param_size,
    latent_size,
    sample_latent_from_noise,
)

from agent.distributions import Categorical
from agent.training_step import make_optimizer, run_values
from experiment.config import Config
from losses_and_evaluation import lambda_returns
from networks import make_world_model
from replay_buffer import SequenceBatch


def test_lambda_returns_hand_computed_with_termination_in_the_middle():
    # Horizon 3; the episode terminates after transition 1 (continue = 0 there).
    rewards = jnp.array([1.0, 2.0, 3.0])
    continues = jnp.array([1.0, 0.0, 1.0])
    values = jnp.array([10.0, 20.0, 30.0, 40.0])
    discount, lmbda = 0.9, 0.5
    r2 = 3.0 + 0.9 * 1.0 * 40.0  # R_3 = v_3 = 40
    r1 = 2.0  # terminal: nothing after it counts
    r0 = 1.0 + 0.9 * 1.0 * (0.5 * 20.0 + 0.5 * r1)
    np.testing.assert_allclose(lambda_returns(rewards, continues, values, discount, lmbda), [r0, r1, r2], rtol=1e-6)


def test_lambda_returns_limits():
    rewards, continues = jnp.ones(4), jnp.ones(4)
    values = jnp.arange(5.0)
    # λ = 0: one-step TD targets; λ = 1: discounted Monte Carlo plus bootstrap at the horizon.
    np.testing.assert_allclose(lambda_returns(rewards, continues, values, 0.5, 0.0), 1.0 + 0.5 * values[1:])
    mc = [sum(0.5**j for j in range(4 - k)) + 0.5 ** (4 - k) * 4.0 for k in range(4)]
    np.testing.assert_allclose(lambda_returns(rewards, continues, values, 0.5, 1.0), mc, rtol=1e-6)


def test_kl_balance_loss_on_known_logits():
    config = Config(num_features=1, feature_width=2, KL_prior_weight=0.8, KL_posterior_weight=0.2)
    posterior = jnp.log(jnp.array([[0.5, 0.5]]))
    prior = jnp.log(jnp.array([[0.9, 0.1]]))
    kl = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    loss, kl_value = kl_balance_loss(config, posterior, prior)
    np.testing.assert_allclose(kl_value, [kl], rtol=1e-5)
    np.testing.assert_allclose(loss, [(0.8 + 0.2) * kl], rtol=1e-5)
    # The balance shows in the gradients: the prior side gets 0.8 of the KL gradient, the posterior 0.2.
    grad_prior = jax.grad(lambda p: kl_balance_loss(config, posterior, p)[0].sum())(prior)
    grad_full = jax.grad(lambda p: latent_kl(config, posterior, p).sum())(prior)
    np.testing.assert_allclose(grad_prior, 0.8 * grad_full, rtol=1e-5)
    grad_post = jax.grad(lambda q: kl_balance_loss(config, q, prior)[0].sum())(posterior)
    grad_full = jax.grad(lambda q: latent_kl(config, q, prior).sum())(posterior)
    np.testing.assert_allclose(grad_post, 0.2 * grad_full, rtol=1e-5)


def sample_latent(config, key, params):
    return sample_latent_from_noise(config, latent_noise(config, key, params.shape[:-1]), params)


def test_categorical_sample_is_one_hot_with_straight_through_gradient():
    config = Config(num_features=3, feature_width=4)
    logits = jax.random.normal(jax.random.PRNGKey(0), (12,))
    z = sample_latent(config, jax.random.PRNGKey(1), logits)
    assert z.shape == (12,)
    np.testing.assert_array_equal(z.reshape(3, 4).sum(-1), 1.0)
    assert set(np.unique(np.asarray(z)).tolist()) <= {0.0, 1.0}
    grad = jax.grad(lambda lg: jnp.sum(sample_latent(config, jax.random.PRNGKey(1), lg) * jnp.arange(12.0)))(logits)
    assert np.abs(grad).sum() > 0  # gradients pass through the sample
    np.testing.assert_allclose(latent_entropy(config, jnp.zeros(12)), 3 * np.log(4), rtol=1e-6)


def test_categorical_samples_follow_the_latent_distribution():
    config = Config(num_features=2, feature_width=4)
    logits = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.0, 0.0, 0.3]]) + 1e-30).reshape(-1)
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)
    freq = jnp.mean(jax.vmap(lambda k: sample_latent(config, k, logits))(keys), 0).reshape(2, 4)
    np.testing.assert_allclose(freq, jnp.exp(logits).reshape(2, 4), atol=0.015)  # ~4 standard errors
    assert freq[1, 1] == 0 and freq[1, 2] == 0  # zero-probability classes are never drawn


def test_policy_samples_from_uniforms_follow_the_softmax():
    probs = jnp.array([0.1, 0.0, 0.6, 0.3])
    u = jax.random.uniform(jax.random.PRNGKey(3), (20000, 1))
    classes = Categorical.from_logits(jnp.broadcast_to(jnp.log(probs + 1e-30), (20000, 4))).sample_from_uniform(u)
    freq = np.bincount(np.asarray(classes), minlength=4) / 20000
    np.testing.assert_allclose(freq, probs, atol=0.015)  # ~4 standard errors
    assert freq[1] == 0


def test_a_sequence_of_latent_samples_from_one_draw_of_noise_matches_step_by_step_sampling():
    for latent_type in ("categorical", "gaussian"):
        config = Config(num_features=3, feature_width=4, latent_type=latent_type)
        params = jax.random.normal(jax.random.PRNGKey(0), (5, 2, latent_param_size(config)))  # [T, B, ...]
        noise = latent_noise(config, jax.random.PRNGKey(1), (5, 2))
        whole = sample_latent_from_noise(config, noise, params)
        steps = jnp.stack([sample_latent_from_noise(config, noise[t], params[t]) for t in range(5)])
        np.testing.assert_array_equal(whole, steps)
        assert whole.shape == (5, 2, latent_size(config))


def test_gaussian_latents_kl_is_zero_for_equal_and_positive_otherwise():
    config = Config(num_features=5, latent_type="gaussian")
    params = jax.random.normal(jax.random.PRNGKey(0), (10,))
    np.testing.assert_allclose(latent_kl(config, params, params), 0.0, atol=1e-6)
    assert latent_kl(config, params, params + 1.0) > 0
    assert sample_latent(config, jax.random.PRNGKey(1), params).shape == (5,)


@pytest.mark.parametrize("obs_shape,no_conv,latent_type", [((10, 10, 6), False, "categorical"),
                                                          ((10, 5), False, "gaussian"),
                                                          ((4,), True, "categorical")])
def test_rssm_and_world_model_loss_shapes(obs_shape, no_conv, latent_type):
    config = Config(num_features=4, feature_width=3, num_hidden_units=16, num_hidden_layers=1,
                    num_conv_filters=2, conv_depth=2, no_conv=no_conv, latent_type=latent_type,
                    sequence_length=6, batch_size=3)
    wm = make_world_model(config, obs_shape, num_actions=3)
    hidden, z_size = 16, latent_size(config)
    params = wm.init(jax.random.PRNGKey(0), jnp.zeros(obs_shape), jnp.zeros(hidden), jnp.zeros(z_size), 0)
    h = jnp.zeros((7, hidden))
    assert wm.encode(params, jnp.zeros((7, *obs_shape))).shape[0] == 7
    assert wm.rssm.transition(params, h, jnp.zeros((7, z_size)), jnp.zeros(7, jnp.int32)).shape == (7, hidden)
    assert wm.decode(params, jnp.zeros((2, 7, hidden + z_size))).shape == (2, 7, *obs_shape)
    assert wm.termination(params, h).shape == (7,)

    batch_size, seq_len = 3, 6
    batch = SequenceBatch(
        obs=jnp.ones((batch_size, seq_len, *obs_shape), jnp.uint8),
        action=jnp.zeros((batch_size, seq_len), jnp.int32),
        reward=jnp.ones((batch_size, seq_len)),
        terminated=jnp.zeros((batch_size, seq_len), bool).at[:, 2].set(True),
        truncated=jnp.zeros((batch_size, seq_len), bool))
    loss, (metrics, posterior) = world_model_loss(config, wm, params, batch, jax.random.PRNGKey(1))
    assert np.isfinite(loss)
    assert posterior.h.shape == (batch_size, seq_len, hidden)
    assert posterior.z.shape == (batch_size, seq_len, z_size)
    # The carry restarts at zero right after the episode end at t = 2.
    np.testing.assert_array_equal(posterior.h[:, 3], 0.0)
    assert all(np.isfinite(v) for v in metrics.values())


def test_mlp_on_leading_axes_matches_the_same_mlp_row_by_row():
    import haiku as hk

    from networks import MLP
    net = hk.without_apply_rng(hk.transform(lambda x: MLP(6, 2, "elu", 3)(x)))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5))
    params = net.init(jax.random.PRNGKey(1), x)
    out = net.apply(params, x)
    assert out.shape == (2, 3, 3)
    np.testing.assert_allclose(out, jax.vmap(lambda row: net.apply(params, row))(x.reshape(6, 1, 5)).reshape(2, 3, 3),
                               atol=1e-6)


def test_flat_optimizer_matches_the_same_recipe_leaf_by_leaf():
    # make_optimizer runs on one flat vector per network (fewer kernels to compile); its steps must be those of
    # the same chain applied leaf by leaf. The gradients are large enough for the global-norm clip to act.
    config = dataclasses.replace(Config(), grad_clip=1.0, wd_adam=1e-2)
    leafwise = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                           optax.adamw(1e-2, eps=config.eps_adam, weight_decay=config.wd_adam))
    flat = make_optimizer(run_values(config, {}), 1e-2)
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 16))
    params = {"a": {"w": jax.random.normal(next(keys), (3, 4)), "b": jax.random.normal(next(keys), (4,))},
              "c": {"w": jax.random.normal(next(keys), (5,))}}
    flat_state, leaf_state = flat.init(params), leafwise.init(params)
    assert flat_state[1][0].mu.shape == (21,)  # the moments are stored flat
    flat_params = leaf_params = params
    for _ in range(4):
        grads = jax.tree.map(lambda x: 10.0 * jax.random.normal(next(keys), x.shape), params)
        assert optax.tree.norm(grads) > config.grad_clip
        updates, flat_state = flat.update(grads, flat_state, flat_params)
        flat_params = optax.apply_updates(flat_params, updates)
        updates, leaf_state = leafwise.update(grads, leaf_state, leaf_params)
        leaf_params = optax.apply_updates(leaf_params, updates)
    for a, b in zip(jax.tree.leaves(flat_params), jax.tree.leaves(leaf_params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(jax.tree.leaves(flat_params)[0], jax.tree.leaves(params)[0])  # it did move


def _depends_on_inputs(jaxpr, marked: set) -> list:
    """The equations of `jaxpr` with an input computed from a `marked` variable (nested jaxprs count as one
    equation: the test below refuses them on the parameters' path, so nothing hides in them)."""
    hits = []
    for eqn in jaxpr.eqns:
        if any(isinstance(v, jax.extend.core.Var) and v in marked for v in eqn.invars):
            hits.append(eqn)
            marked.update(eqn.outvars)
    return hits


def test_the_optimizer_never_concatenates_the_parameters():
    # Each new parameter must read only its old self, elementwise, so that XLA can write it in place. When the
    # parameters were concatenated (weight decay inside optax.flatten), XLA:GPU fused that concatenation into
    # every parameter's update and the loop's skip-training branch copied all parameters at every env step.
    config = dataclasses.replace(Config(), wd_adam=1e-2)
    optimizer = make_optimizer(run_values(config, {}), 1e-2)
    params = {"a": {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}, "c": jnp.ones((5,))}
    grads, state = jax.tree.map(lambda x: 0.5 * x, params), optimizer.init(params)
    closed = jax.make_jaxpr(lambda p: optax.apply_updates(p, optimizer.update(grads, state, p)[0]))(params)
    from_params = _depends_on_inputs(closed.jaxpr, set(closed.jaxpr.invars))
    assert from_params  # the decay reads the parameters
    assert all(eqn.primitive.name not in ("concatenate", "pjit") for eqn in from_params), \
        sorted({eqn.primitive.name for eqn in from_params})
    # the gradients, by contrast, are concatenated: the flat part of the recipe is there
    flat = jax.make_jaxpr(lambda g: optimizer.update(g, state, params)[0])(grads)
    assert "concatenate" in {eqn.primitive.name for eqn in _depends_on_inputs(flat.jaxpr, set(flat.jaxpr.invars))}


def test_networks_refuse_inputs_of_the_wrong_width_when_traced():
    from networks import make_actor_critic
    config = Config(num_features=4, feature_width=3, num_hidden_units=16, num_hidden_layers=1, no_conv=True)
    wm = make_world_model(config, (5,), num_actions=3)
    with pytest.raises(ValueError, match=r"Encoder observation must have shape \[\.\.\., 5\], got \[4\]"):
        wm.init(jax.random.PRNGKey(0), jnp.zeros(4), jnp.zeros(16), jnp.zeros(12), 0)
    params = wm.init(jax.random.PRNGKey(0), jnp.zeros(5), jnp.zeros(16), jnp.zeros(12), 0)
    with pytest.raises(ValueError, match=r"transition z must have shape \[\.\.\., 12\], got \[2, 4\]"):
        wm.rssm.transition(params, jnp.zeros((2, 16)), jnp.zeros((2, 4)), jnp.zeros(2, jnp.int32))
    actor, _ = make_actor_critic(config, 3)
    actor_params = actor.init(jax.random.PRNGKey(0), jnp.zeros(28))
    with pytest.raises(ValueError, match=r"actor feature must have shape \[\.\.\., 28\]"):
        actor.apply(actor_params, jnp.zeros((2, 16)))
