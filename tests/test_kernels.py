"""The CPU kernels (kernels.py) against the plain operations they stand for: values and gradients of each, the
one-hot product's check of its input, the one switch that picks the forms, and the whole training update run
both ways."""

import dataclasses

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent import kernels
from agent.distributions import latents
from environments import environment_from_config
from experiment.config import Config, load_config
from initialization import make_agent
from networks import Conv3x3, Linear

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU forms run on the CPU backend only")


def grads_of(f, *args):
    """Gradients of sum(sin(f(*args))) with respect to every argument: a cotangent that is not all ones."""
    return jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=tuple(range(len(args))))(*args)


def assert_close_with_gradients(ours, plain, args, atol, rtol=1e-5):
    np.testing.assert_allclose(ours(*args), plain(*args), rtol=rtol, atol=atol)
    for a, b in zip(grads_of(ours, *args), grads_of(plain, *args)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def test_the_switch_picks_the_cpu_forms_on_cpu_and_the_plain_operations_inside_plain_kernels():
    assert kernels.use_cpu_kernels()
    x = jnp.linspace(-2.0, 2.0, 5)
    # a fresh function each time: JAX caches a traced function's program, and the choice is made when tracing
    custom = lambda f: "custom_vjp_call" in str(jax.make_jaxpr(lambda x: f(x))(x))
    assert custom(kernels.elu)
    with kernels.plain_kernels():
        assert not kernels.use_cpu_kernels() and not custom(kernels.elu)
        with kernels.plain_kernels(False):
            assert kernels.use_cpu_kernels()
    assert kernels.use_cpu_kernels()


def test_elu_matches_jax_nn_elu_with_its_gradient():
    x = jnp.concatenate([jnp.linspace(-30.0, 5.0, 701), jnp.array([0.0, -0.0, 1e-30, -1e-30])])
    elu = kernels.elu
    # exp(x) - 1 where jax.nn.elu takes expm1(x): equal to within exp's float32 rounding near 1, never below -1
    np.testing.assert_allclose(elu(x), jax.nn.elu(x), rtol=1e-6, atol=1.2e-7)
    np.testing.assert_array_equal(elu(x)[x > 0], x[x > 0])
    assert float(jnp.min(elu(x))) >= -1.0
    slope = jax.grad(lambda x: jnp.sum(jnp.cos(x) * elu(x)))(x)
    np.testing.assert_allclose(slope, jax.grad(lambda x: jnp.sum(jnp.cos(x) * jax.nn.elu(x)))(x), rtol=1e-6, atol=1e-7)
    assert float(jax.grad(elu)(0.0)) == 1.0 and float(jax.grad(elu)(-50.0)) == 0.0


# rows divisible by the 10 chunks, by 5 of them (the divisor taken), and by none (one chunk)
@pytest.mark.parametrize("rows", [40, 15, 7])
def test_pixel_matmul_matches_the_plain_matmul_with_its_gradients(rows):
    key_x, key_w = jax.random.split(jax.random.PRNGKey(0))
    x, w = jax.random.normal(key_x, (rows, 6)), jax.random.normal(key_w, (6, 4))
    np.testing.assert_array_equal(kernels.pixel_matmul(x, w), x @ w)
    assert_close_with_gradients(kernels.pixel_matmul, lambda x, w: x @ w, (x, w), atol=1e-5)


# the patch form (C <= F) and the kernel-row form (C > F), also on a one-row image (no row above or below)
@pytest.mark.parametrize("channels,filters,height", [(3, 5, 10), (7, 2, 10), (7, 2, 1)])
def test_conv3x3_matches_the_plain_convolution_with_its_gradients(channels, filters, height):
    key_x, key_w = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(key_x, (2, height, 7, channels))
    w = jax.random.normal(key_w, (3, 3, channels, filters))
    with kernels.plain_kernels():
        plain = lambda x, w: kernels.conv3x3(x, w)
        plain_values, plain_grads = plain(x, w), grads_of(plain, x, w)
    np.testing.assert_allclose(kernels.conv3x3(x, w), plain_values, atol=1e-5)
    for a, b in zip(grads_of(kernels.conv3x3, x, w), plain_grads):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_the_conv_module_has_haiku_conv2d_parameters_and_values():
    ours = hk.without_apply_rng(hk.transform(lambda x: Conv3x3(5, name="conv")(x)))
    reference = hk.without_apply_rng(hk.transform(lambda x: hk.Conv2D(5, 3, padding="SAME", name="conv")(x)))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 7, 3))
    params = jax.tree.map(lambda p: p + 0.1, reference.init(jax.random.PRNGKey(1), x))  # a nonzero bias too
    assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == jax.tree.map(jnp.shape, params)
    for plain in (False, True):
        with kernels.plain_kernels(plain):
            np.testing.assert_allclose(ours.apply(params, x), reference.apply(params, x), atol=1e-5)


def one_hot_input(lead, start, groups=4, width=3, rest=5):
    """x [*lead, rest + groups*width] whose columns start:start+groups*width hold latent samples (straight-through
    values: the gradient path of a real sample), one of them all zero."""
    key_z, key_x, key_g = jax.random.split(jax.random.PRNGKey(0), 3)
    space = latents(Config(num_features=groups, feature_width=width))
    logits = jax.random.normal(key_z, (*lead, groups * width))
    z = space.distribution(logits).sample(space.noise(key_g, lead))
    z = z.reshape(*lead, groups, width).at[..., 1, :].set(0.0).reshape(*lead, -1)
    dense = jax.random.normal(key_x, (*lead, rest))
    return jnp.concatenate([dense[..., :start], z, dense[..., start:]], -1)


# block first (transition) / after h (features); rows summed in blocks of 50 (none here: only the rows left
# over), of 4 (12 rows: three blocks) or of 4 with 2 rows left over (6 rows)
@pytest.mark.parametrize("start,lead,block_rows", [(0, (6,), 50), (5, (3, 4), 50), (5, (3, 4), 4), (0, (6,), 4)])
def test_one_hot_matmul_matches_the_plain_matmul_with_its_gradients(start, lead, block_rows, monkeypatch):
    monkeypatch.setattr(kernels, "GATHER_MIN_ROWS", 1)  # the gathering form for these few rows too
    monkeypatch.setattr(kernels, "GATHER_BLOCK_ROWS", block_rows)
    x = one_hot_input(lead, start)
    w = jax.random.normal(jax.random.PRNGKey(3), (x.shape[-1], 7))
    ours = lambda x, w: kernels.one_hot_matmul(x, w, (start, 4, 3))
    assert "custom_vjp_call" in str(jax.make_jaxpr(ours)(x, w))  # the gathering form did run
    assert_close_with_gradients(ours, lambda x, w: x @ w, (x, w), atol=1e-5)
    np.testing.assert_allclose(jax.vmap(ours, in_axes=(0, None))(x, w), x @ w, atol=1e-5)  # seeds are vmapped


def test_one_hot_matmul_makes_a_row_nan_where_a_vector_is_not_one_hot(monkeypatch):
    monkeypatch.setattr(kernels, "GATHER_MIN_ROWS", 1)
    x = one_hot_input((6,), 5)
    w = jax.random.normal(jax.random.PRNGKey(3), (x.shape[-1], 7))
    bad = x.at[2, 5:8].set(jnp.array([0.5, 0.5, 0.0]))  # row 2's first vector has two non-zero entries
    out = kernels.one_hot_matmul(bad, w, (5, 4, 3))
    assert np.all(np.isnan(out[2])) and np.all(np.isfinite(np.delete(np.asarray(out), 2, 0)))
    with kernels.plain_kernels():
        assert np.all(np.isfinite(kernels.one_hot_matmul(bad, w, (5, 4, 3))))  # the plain product needs nothing


def test_the_linear_module_has_haiku_linear_parameters_and_values():
    x = one_hot_input((70,), 5)  # enough rows for the gathering form
    ours = hk.without_apply_rng(hk.transform(lambda x: Linear(7, (5, 4, 3))(x)))
    reference = hk.without_apply_rng(hk.transform(lambda x: hk.Linear(7)(x)))
    params = reference.init(jax.random.PRNGKey(1), x)
    jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.PRNGKey(1), x), params)  # same initialisation
    params = jax.tree.map(lambda p: p + 0.1, params)
    np.testing.assert_allclose(ours.apply(params, x), reference.apply(params, x), atol=1e-5)


@pytest.mark.parametrize("env_name,overrides", [
    ("Catch-bsuite", {}),  # MLP encoder and decoder
    ("Breakout-MinAtar", {"no_conv": False, "num_conv_filters": 4, "conv_depth": 2, "batch_size": 8}),  # conv
])
def test_the_training_update_is_the_same_with_the_cpu_kernels_and_the_plain_operations(env_name, overrides):
    config = dataclasses.replace(load_config("configs/debug.json", [f"env_config.env_name={env_name}"]),
                                 **overrides)
    env = environment_from_config(config)

    def update(plain: bool):
        with kernels.plain_kernels(plain):
            agent = make_agent(config, env)
            env_state, obs = env.reset(jax.random.PRNGKey(1))
            state = agent.init_state(jax.random.PRNGKey(0), env_state, obs)
            replay = jax.jit(lambda s: fill_replay(config, agent, env, s))(state)
            return jax.jit(agent.train_update)(state._replace(replay=replay))

    (ours, ours_metrics), (plain, plain_metrics) = update(False), update(True)
    for name in ("model_loss", "actor_loss", "critic_loss", "model_grad_norm", "actor_grad_norm"):
        np.testing.assert_allclose(ours_metrics[name], plain_metrics[name], rtol=2e-4, err_msg=name)
    for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(plain.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def fill_replay(config, agent, env, state):
    """The replay of `state` filled with random-action transitions of `env` (enough to sample a batch)."""
    from replay_buffer import add

    def step(carry, key):
        replay, env_state, obs = carry
        action_key, env_key = jax.random.split(key)
        action = jax.random.randint(action_key, (), 0, env.spec.num_actions)
        env_state, next_obs, reward, terminated, truncated = env.step(env_key, env_state, action)
        replay = add(replay, agent.replay_obs(obs), action, reward, terminated, truncated)
        return (replay, env_state, next_obs), None

    keys = jax.random.split(jax.random.PRNGKey(5), config.training_start_time + 1)
    (replay, _, _), _ = jax.lax.scan(step, (state.replay, state.env_state, state.obs), keys)
    return replay
