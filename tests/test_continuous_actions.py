"""Continuous (Box) actions: the adapters' spec and mapping to the bounds, the refusals, the policies'
distributions against plain computations, the dynamics gradient, and debug runs of gymnax and gymnasium
Pendulum."""

import dataclasses

import gymnasium
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from latent_functions import config_actor_critic_losses as actor_critic_losses
from latent_functions import config_imagine as imagine
from scipy import stats

from agent.distributions import BoundedNormal, TruncatedNormal, actor_gradient
from environments import make_environment
from envs.protocol import EnvSpec, check_action_space, to_bounds
from experiment.config import ConfigError, load_config
from experiment.runner import run
from initialization import make_agent
from networks import make_actor_critic, make_world_model
from replay_buffer import add
from runtime import checkpoint


@pytest.fixture(scope="module")
def pendulum_config():
    config = load_config("configs/debug.json")
    return dataclasses.replace(config, env_config=dataclasses.replace(config.env_config, env_name="Pendulum-v1"),
                               binary_state=False)


def test_gymnax_pendulum_spec_reset_and_step():
    env = make_environment("gymnax_env", "Pendulum-v1")
    assert env.spec == EnvSpec((3,), np.dtype(np.float32), 1, True)
    assert env.spec.action_shape == (1,) and env.spec.action_dtype == np.dtype(np.float32)
    keys = jax.random.split(jax.random.key(0), 2)
    env_state, obs = jax.vmap(env.reset)(keys)
    assert obs.shape == (2, 3) and obs.dtype == jnp.float32
    env_state, obs, reward, terminated, truncated = jax.vmap(env.step)(keys, env_state, jnp.full((2, 1), 0.5))
    assert obs.shape == (2, 3) and reward.shape == (2,) and reward.dtype == jnp.float32
    assert terminated.dtype == truncated.dtype == jnp.bool_
    spec = make_environment("gymnax_env", "MountainCarContinuous-v0").spec
    assert spec == EnvSpec((2,), np.dtype(np.float32), 1, True)


@pytest.mark.parametrize("action, torque", [(1.0, 2.0), (-1.0, -2.0), (0.0, 0.0), (0.25, 0.5), (3.0, 2.0)])
def test_gymnax_actions_in_minus_one_one_are_mapped_to_the_bounds(action, torque):
    env = make_environment("gymnax_env", "Pendulum-v1")
    raw, params = gymnax.make("Pendulum-v1")
    key = jax.random.key(1)
    env_state, _ = env.reset(key)
    _, obs, reward, *_ = env.step(key, env_state, jnp.array([action]))
    raw_obs, _, raw_reward, *_ = raw.step(key, env_state, jnp.array([torque]), params)
    np.testing.assert_array_equal(obs, raw_obs)
    assert float(reward) == float(raw_reward)


def test_to_bounds_maps_each_component():
    low, high = np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32)
    np.testing.assert_allclose(to_bounds(np.array([-1.0, 1.0]), low, high), [-2.0, 10.0])
    np.testing.assert_allclose(to_bounds(np.array([0.5, -0.5]), low, high), [1.0, 2.5])


def test_gymnasium_pendulum_maps_actions_to_its_bounds():
    family = make_environment("gymnasium_env", "Pendulum-v1")
    assert family.spec == EnvSpec((3,), np.dtype(np.float32), 1, True)
    env, raw = family.instance(3), gymnasium.make("Pendulum-v1")
    first, (raw_first, _) = env.reset(None), raw.reset(seed=3)
    np.testing.assert_array_equal(first, raw_first)
    obs, reward, terminated, truncated = env.step(None, np.array([0.5], np.float32))
    raw_obs, raw_reward, *_ = raw.step(np.array([1.0], np.float32))
    np.testing.assert_array_equal(obs, raw_obs)
    assert reward == pytest.approx(raw_reward) and not terminated and not truncated
    env.close(), raw.close()


@pytest.mark.parametrize("space, fragments", [
    (gymnasium.spaces.MultiDiscrete([2, 3]), ["MultiDiscrete", "only Discrete and bounded Box"]),
    (gymnasium.spaces.Dict({"a": gymnasium.spaces.Discrete(2)}), ["Dict", "only Discrete and bounded Box"]),
    (gymnasium.spaces.Tuple([gymnasium.spaces.Discrete(2)]), ["Tuple", "only Discrete and bounded Box"]),
    (gymnasium.spaces.Box(-np.inf, 1.0, (2,)), ["Box", "-inf", "unbounded", "bounded Box"]),
    (gymnax.environments.spaces.Box(0.0, np.inf, (1,)), ["Box", "unbounded", "bounded Box"]),
])
def test_unsupported_action_spaces_are_refused_naming_the_space(space, fragments):
    with pytest.raises(ConfigError) as error:
        check_action_space(space, "Some-v0")
    message = str(error.value)
    assert "\n" not in message and "'Some-v0'" in message
    for fragment in fragments:
        assert fragment in message, message


def test_truncated_normal_matches_scipy():
    params = jnp.array([[0.3, -2.0, 0.5, 1.5], [3.0, 0.0, -1.0, -4.0]])  # [N, 2A], A = 2
    dist = TruncatedNormal.from_params(params, min_std=0.1)
    mean, std = np.tanh(params[:, :2]), 2 / (1 + np.exp(-params[:, 2:] / 2)) + 0.1
    np.testing.assert_allclose(dist.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(dist.std, std, rtol=1e-6)
    ref = stats.truncnorm((-1 - mean) / std, (1 - mean) / std, loc=mean, scale=std)
    x = np.array([[0.2, -0.9], [0.99, 0.0]], np.float32)
    np.testing.assert_allclose(dist.log_prob(x), ref.logpdf(x).sum(-1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dist.entropy(), ref.entropy().sum(-1), rtol=1e-4, atol=1e-4)
    noise = np.array([[-0.7, 1.2], [0.1, -2.5]], np.float32)
    np.testing.assert_allclose(dist.sample(noise), ref.ppf(stats.norm.cdf(noise)), rtol=1e-4, atol=1e-4)
    samples = dist.sample(jax.random.normal(jax.random.key(0), (20_000, 2, 2)))
    assert float(samples.min()) >= -1.0 and float(samples.max()) <= 1.0
    np.testing.assert_allclose(samples.mean(0), ref.mean(), atol=0.02)


def test_bounded_normal_matches_a_plain_normal_and_clips_samples():
    params = jnp.array([[0.3, 2.0, -1.0, 5.0]])  # A = 2
    dist = BoundedNormal.from_params(params)
    mean, std = np.tanh([0.3, 2.0]), 0.9 / (1 + np.exp(-(np.array([-1.0, 5.0]) + 2))) + 0.1
    np.testing.assert_allclose(dist.mean[0], mean, rtol=1e-6)
    np.testing.assert_allclose(dist.std[0], std, rtol=1e-6)
    x = np.array([[0.1, 0.9]], np.float32)
    np.testing.assert_allclose(dist.log_prob(x), stats.norm(mean, std).logpdf(x).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(dist.entropy(), stats.norm(mean, std).entropy().sum(), rtol=1e-5)
    noise = np.array([[0.5, 3.0]], np.float32)
    np.testing.assert_allclose(dist.sample(noise), np.clip(mean + std * noise, -1, 1), rtol=1e-6)
    assert BoundedNormal.from_params(jnp.array([0.0, -100.0])).std[0] == pytest.approx(0.1)
    assert BoundedNormal.from_params(jnp.array([0.0, 100.0])).std[0] == pytest.approx(1.0)


def test_auto_gradient_is_dynamics_for_continuous_actions_and_reinforce_for_discrete(pendulum_config):
    # DreamerV2 and the 2023 DreamerV3 alike, whichever the continuous policy
    for actor in ("truncated_normal", "bounded_normal"):
        c = dataclasses.replace(pendulum_config, continuous_actor=actor)
        assert actor_gradient(c, continuous=True) == "dynamics" and actor_gradient(c, continuous=False) == "reinforce"
    c = pendulum_config
    assert actor_gradient(dataclasses.replace(c, actor_gradient="mix"), False) == "mix"


def test_dynamics_gradient_flows_through_the_rollout(pendulum_config):
    """With beta 0 the dynamics actor loss depends on the actor only through the imagined actions: its gradient
    is zero for a fixed rollout and non-zero for the rollout differentiated with the actor."""
    c = dataclasses.replace(pendulum_config, beta=0.0)
    wm, (actor, critic) = make_world_model(c, (3,), 1), make_actor_critic(c, 2)
    z_size = c.num_features * c.feature_width
    feat = jnp.zeros(c.num_hidden_units + z_size)
    keys = jax.random.split(jax.random.key(0), 4)
    wm_params = wm.init(keys[0], jnp.zeros(3), jnp.zeros(c.num_hidden_units), jnp.zeros(z_size), jnp.zeros(1))
    actor_params, critic_params = actor.init(keys[1], feat), critic.init(keys[2], feat)
    start_h = jax.random.normal(keys[3], (6, c.num_hidden_units))
    start_z = jax.nn.one_hot(jnp.arange(6 * c.num_features).reshape(6, -1) % c.feature_width,
                             c.feature_width).reshape(6, -1)

    def loss(actor_params, rollout_params):
        rollout = imagine(c, wm, wm_params, actor.apply, rollout_params, start_h, start_z, keys[3], None, 1)
        return actor_critic_losses(c, actor.apply, critic.apply, actor_params, critic_params, critic_params,
                                   rollout, 0.0, continuous=True)[0]

    through_rollout = jax.jit(jax.grad(lambda p: loss(p, p)))(actor_params)
    fixed_rollout = jax.jit(jax.grad(lambda p: loss(p, actor_params)))(actor_params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(fixed_rollout))
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(through_rollout)) > 0.0


@jax.jit
def _random_transitions(replay, key):
    """30 transitions of random actions in [-1, 1] from gymnax Pendulum added to `replay`."""
    env = make_environment("gymnax_env", "Pendulum-v1")

    def step(carry, key):
        replay, env_state, obs = carry
        action = jax.random.uniform(key, (1,), minval=-1, maxval=1)
        env_state, next_obs, reward, terminated, truncated = env.step(key, env_state, action)
        return (add(replay, obs, action, reward, terminated, truncated), env_state, next_obs), None

    env_state, obs = env.reset(key)
    return jax.lax.scan(step, (replay, env_state, obs), jax.random.split(key, 30))[0][0]


def test_straight_through_discrete_actions_carry_the_gradient_into_the_rollout(pendulum_config):
    """Discrete actions under the dynamics gradient: the transition reads one-hot samples whose gradient is the
    policy's probabilities', so the imagined rewards differentiate to the actor; integer actions do not."""
    c = pendulum_config
    wm, (actor, _) = make_world_model(c, (3,), 4), make_actor_critic(c, 4)
    z_size = c.num_features * c.feature_width
    keys = jax.random.split(jax.random.key(1), 3)
    wm_params = wm.init(keys[0], jnp.zeros(3), jnp.zeros(c.num_hidden_units), jnp.zeros(z_size), 0)
    actor_params = actor.init(keys[1], jnp.zeros(c.num_hidden_units + z_size))
    start_h = jax.random.normal(keys[2], (6, c.num_hidden_units))
    start_z = jax.nn.one_hot(jnp.zeros((6, c.num_features), jnp.int32), c.feature_width).reshape(6, -1)

    def grad_norm(straight_through):
        total_reward = lambda p: jnp.sum(imagine(c, wm, wm_params, actor.apply, p, start_h, start_z, keys[2],
                                                 straight_through=straight_through).reward)
        grads = jax.jit(jax.grad(total_reward))(actor_params)
        return max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))

    assert grad_norm(True) > 0.0 and grad_norm(False) == 0.0


def _filled_state(agent, env):
    key = jax.random.key(0)
    env_state, obs = env.reset(key)
    state = agent.init_state(key, env_state, obs)
    replay = _random_transitions(state.replay, key)
    assert replay.action.dtype == jnp.float32 and replay.action.shape == (state.replay.obs.shape[0], 1)
    return state._replace(replay=replay)


def test_dynamics_gradient_updates_the_actor_and_not_the_world_model(pendulum_config):
    """One update with the dynamics gradient and one with REINFORCE from the same state: the world model's new
    parameters are the same (only its own loss updates it), the actor's differ."""
    env = make_environment("gymnax_env", "Pendulum-v1")
    new_params, grad_norms = {}, {}
    for gradient in ("dynamics", "reinforce"):
        agent = make_agent(dataclasses.replace(pendulum_config, actor_gradient=gradient), env)
        state, metrics = jax.jit(agent.train_update)(_filled_state(agent, env))
        assert int(metrics["numerical_fault"]) == 0
        new_params[gradient], grad_norms[gradient] = state.params, float(metrics["actor_grad_norm"])
    dynamics, reinforce = new_params["dynamics"], new_params["reinforce"]
    jax.tree.map(np.testing.assert_array_equal, dynamics.world_model, reinforce.world_model)
    assert grad_norms["dynamics"] > 0 and grad_norms["dynamics"] != grad_norms["reinforce"]
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(dynamics.actor),
                                                        jax.tree.leaves(reinforce.actor)))


@pytest.mark.parametrize("environment, overrides", [
    ("gymnax_env", {}),  # truncated normal, dynamics gradient
    ("gymnasium_env", {"continuous_actor": "bounded_normal", "actor_gradient": "mix", "jax_env": False}),
])
def test_continuous_debug_run_trains_without_nan(pendulum_config, environment, overrides, tmp_path):
    config = dataclasses.replace(pendulum_config, environment=environment, **overrides)
    result = run(config, make_environment(environment, "Pendulum-v1"), seed=0, output=None, progress=False)
    state = result["state"]
    assert int(state.updates[0]) > 0
    assert state.replay.action.dtype == jnp.float32 and state.replay.action.shape[-1] == 1
    actions = np.asarray(state.replay.action[0, :int(state.replay.count[0])])
    assert np.all(np.abs(actions) <= 1.0) and np.std(actions) > 0.05
    for leaf in jax.tree.leaves(state.params):
        assert np.all(np.isfinite(leaf))
    path = str(tmp_path / "run.ckpt")  # the float actions go through a checkpoint as they are
    checkpoint.save(path, state, {})
    loaded, _ = checkpoint.load(path, jax.eval_shape(lambda: state))
    np.testing.assert_array_equal(loaded.replay.action, state.replay.action)
