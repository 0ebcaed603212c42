"""Losses of DreamerV2: the world-model loss over replayed sequences (observation, reward and termination
likelihoods, KL balancing, posterior entropy bonus) and the actor-critic losses on imagined rollouts."""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from agent.distributions import (
    Bernoulli,
    action_distribution,
    actor_gradient,
    latents,
    reward_distribution,
    takes_part,
    value_distribution,
)
from experiment.config import Config
from networks import WorldModel


class PosteriorStates(NamedTuple):
    h: jax.Array  # [B, T, H] deterministic state the posterior was computed from
    z: jax.Array  # [B, T, Z] posterior latent sample


def observe_step(config: Config, wm: WorldModel, wm_params, h, embed, noise):
    """One RSSM posterior step, shared by acting and sequence observation: (h, embed) -> (z, posterior params).
    `noise` is the sample's noise (`Latents.noise`)."""
    posterior = wm.posterior(wm_params, h, embed)
    return latents(config).distribution(posterior).sample(noise), posterior


def imagine_step(config: Config, wm: WorldModel, wm_params, h, z, action, noise):
    """One RSSM prior step, shared by imagination and the diagnostics' open-loop rollout: -> (next h, next prior z,
    prior params). `noise` is the prior sample's noise (`Latents.noise`)."""
    next_h = wm.transition(wm_params, h, z, action)
    prior = wm.prior(wm_params, next_h)
    return next_h, latents(config).distribution(prior).sample(noise), prior


def free_bits(kl, free_nats):
    """max(kl, free_nats): a KL term below `free_nats` is a constant, so it has no gradient there (DreamerV3).
    The KL as it is where free_nats is the number 0 (a swept value is an array: clipped even where it is 0)."""
    if takes_part(free_nats):
        return jnp.maximum(kl, free_nats)
    return kl


def kl_balance_loss(config: Config, posterior, prior):
    """KL balancing: the prior is pulled toward the posterior with KL_prior_weight, the posterior toward the
    prior with KL_posterior_weight (DreamerV3's dynamics and representation terms), each term clipped below
    free_nats. `posterior` and `prior` are latent parameters [..., P]. Returns (loss [...], KL(post || prior)
    [...])."""
    sg = jax.lax.stop_gradient
    dist = latents(config).distribution
    kl_prior_side = dist(sg(posterior)).kl(dist(prior))
    kl_posterior_side = dist(posterior).kl(dist(sg(prior)))
    loss = (config.KL_prior_weight * free_bits(kl_prior_side, config.free_nats)
            + config.KL_posterior_weight * free_bits(kl_posterior_side, config.free_nats))
    return loss, kl_prior_side


def observe_sequence(config: Config, wm: WorldModel, wm_params, obs, action, episode_end, key):
    """Posterior pass over sequences obs [B, T, *obs] (float), action/episode_end [B, T]; the carry restarts at
    zero after an episode end. Returns, each [B, T, ...]: h (state the posterior saw), z (posterior sample),
    next_h (transition(h, z, a): what the reward and termination heads read), prior and posterior latent
    parameters."""
    embed = wm.embed(wm_params, obs)  # [B, T, U], batched over all steps
    h0 = jnp.zeros((action.shape[0], config.num_hidden_units), jnp.float32)

    def step(h, inputs):  # only what depends on the previous step stays in the scan
        embed_t, action_t, end_t, noise_t = inputs
        z, posterior = observe_step(config, wm, wm_params, h, embed_t, noise_t)
        next_h = wm.transition(wm_params, h, z, action_t)
        return jnp.where(end_t[:, None], 0.0, next_h), (h, z, next_h, posterior)

    time_major = lambda x: jnp.swapaxes(x, 0, 1)
    noise = latents(config).noise(key, (action.shape[1], action.shape[0]))  # [T, B, ...], one draw for all steps
    _, outs = jax.lax.scan(step, h0, (time_major(embed), time_major(action), time_major(episode_end), noise))
    h, z, next_h, posterior = jax.tree.map(time_major, outs)
    return h, z, next_h, wm.prior(wm_params, h), posterior


def world_model_loss(config: Config, wm: WorldModel, wm_params, batch, key):
    """World-model loss on a batch of sequences (obs [B, T, ...], action/reward/terminated/truncated [B, T]).

    Entry t holds (o_t, a_t, r_t, d_t): r_t and d_t follow a_t, so the reward and termination heads read the
    next deterministic state h_{t+1} = transition(h_t, z_t, a_t). The carry restarts at zero after an episode
    end. Returns (loss, (metrics, posterior states))."""
    c = config
    obs = batch.obs.astype(jnp.float32)  # [B, T, *obs]
    episode_end = batch.terminated | batch.truncated
    h, z, next_h, prior, posterior = observe_sequence(c, wm, wm_params, obs, batch.action, episode_end, key)

    obs_pred = wm.decode(wm_params, jnp.concatenate([h, z], -1))  # [B, T, *obs]
    obs_axes = tuple(range(2, obs.ndim))
    obs_log_prob = jnp.sum(wm.observation(obs_pred).log_prob(obs), axis=obs_axes)

    reward_log_prob = reward_distribution(c, wm.reward(wm_params, next_h)).log_prob(batch.reward)  # [B, T]
    termination = Bernoulli(wm.termination(wm_params, next_h))
    termination_log_prob = termination.log_prob(batch.terminated.astype(jnp.float32))

    kl_loss, kl = kl_balance_loss(c, posterior, prior)
    posterior_dist = latents(c).distribution(posterior)
    entropy = posterior_dist.entropy()
    # an entropy bonus for categorical latents, a KL to N(0, I) for Gaussian ones
    entropy_term = c.posterior_entropy_weight * posterior_dist.regularizer()

    terms = {
        "observation_loss": -c.state_prediction_weight * obs_log_prob,
        "reward_loss": -c.reward_weight * reward_log_prob,
        "termination_loss": -c.termination_weight * termination_log_prob,
        "kl_loss": kl_loss,
        "posterior_entropy_loss": entropy_term,
    }
    terms = {name: jnp.mean(value) for name, value in terms.items()}
    loss = sum(terms.values())
    metrics = {"model_loss": loss, **terms, "kl": jnp.mean(kl), "posterior_entropy": jnp.mean(entropy),
               "prior_entropy": jnp.mean(latents(c).distribution(prior).entropy())}
    return loss, (metrics, PosteriorStates(h, z))


def lambda_returns(rewards, continues, values, discount: float, lmbda: float):
    """λ-returns over an imagined horizon K (time-major).

    rewards, continues: [K, ...] for transitions k -> k+1; values: [K+1, ...] (bootstrap values[K]).
    R_k = r_k + discount * c_k * ((1 - λ) v_{k+1} + λ R_{k+1}),  R_K = v_K. Returns [K, ...]."""

    def backward(next_return, inputs):
        reward, cont, next_value = inputs
        ret = reward + discount * cont * ((1.0 - lmbda) * next_value + lmbda * next_return)
        return ret, ret

    _, returns = jax.lax.scan(backward, values[-1], (rewards, continues, values[1:]), reverse=True)
    return returns


class ImaginedRollout(NamedTuple):
    feat: jax.Array  # [K+1, N, H+Z] model features along the rollout (index 0 = start state)
    action: jax.Array  # [K, N] int32 (discrete) or [K, N, A] float32 (continuous)
    reward: jax.Array  # [K, N] predicted reward of each transition
    cont: jax.Array  # [K, N] predicted probability that the episode continues after each transition


def imagine(config: Config, wm: WorldModel, wm_params, actor_apply: Callable, actor_params, start_h, start_z, key,
            horizon: int | None = None, action_dims: int | None = None, straight_through: bool = False):
    """Roll the prior forward `horizon` steps (default `rollout_length`) from start states [N, H], [N, Z] with
    the actor. Discrete actions (`action_dims` None) are drawn by inverse CDF; with `straight_through` the
    transition reads them as one-hot samples whose gradient is the policy's probabilities', so the rollout
    differentiates to the actor (the dynamics gradient). Continuous actions of `action_dims` components are
    reparameterised samples: the rollout always differentiates to the actor through them."""
    continuous = action_dims is not None

    def step(carry, noise_t):  # only what depends on the previous step stays in the scan
        h, z = carry
        action_noise, latent_noise_t = noise_t
        policy = action_distribution(config, actor_apply(actor_params, jnp.concatenate([h, z], -1)), continuous)
        if continuous:
            action = model_action = policy.sample(action_noise)  # [N, A]
        else:
            action = model_action = policy.sample_from_uniform(action_noise)  # [N]
            if straight_through:
                probs = jnp.exp(policy.log_probs)
                model_action = jax.nn.one_hot(action, probs.shape[-1]) + probs - jax.lax.stop_gradient(probs)
        next_h, next_z, _ = imagine_step(config, wm, wm_params, h, z, model_action, latent_noise_t)
        return (next_h, next_z), (next_h, next_z, action)

    steps = (horizon or config.rollout_length, start_h.shape[0])
    action_key, latent_key = jax.random.split(key)  # the noise of all steps, drawn before the scan
    action_noise = (jax.random.normal(action_key, (*steps, action_dims)) if continuous
                    else jax.random.uniform(action_key, (*steps, 1)))
    noise = action_noise, latents(config).noise(latent_key, steps)
    _, (next_h, next_z, action) = jax.lax.scan(step, (start_h, start_z), noise)
    h = jnp.concatenate([start_h[None], next_h], 0)  # [K+1, N, H]
    feat = jnp.concatenate([h, jnp.concatenate([start_z[None], next_z], 0)], -1)
    reward = reward_distribution(config, wm.reward(wm_params, next_h)).mean
    cont = jax.nn.sigmoid(-wm.termination(wm_params, next_h))
    return ImaginedRollout(feat, action, reward, cont)


def return_range(returns):
    """The spread of a batch of λ-returns: their 95th minus their 5th percentile (DreamerV3's return scale,
    robust to a few outlying returns)."""
    low, high = jnp.percentile(returns, jnp.array([5.0, 95.0]))
    return high - low


def updated_return_scale(config: Config, return_scale, returns):
    """The EMA of the λ-returns' spread after this batch: S <- decay * S + (1 - decay) * return_range."""
    decay = config.return_scale_decay
    return decay * return_scale + (1.0 - decay) * return_range(jax.lax.stop_gradient(returns))


def actor_critic_losses(config: Config, actor_apply, critic_apply, actor_params, critic_params,
                        target_critic_params, rollout: ImaginedRollout, return_scale=0.0, continuous: bool = False):
    """Actor (plus entropy bonus) and critic (regression to λ-returns
    bootstrapped from the target critic, or from the critic itself with return_critic "online") losses on one
    imagined rollout. With slow_critic_weight, the critic is also pulled toward the target critic's
    predictions (DreamerV3's slow critic regulariser).

    The actor's gradient (distributions.actor_gradient): REINFORCE with the critic as baseline, log π(a) times
    the advantage; or dynamics backpropagation, the λ-returns themselves differentiated through the rollout
    (which must then be a function of `actor_params`: its rewards, continuation probabilities and bootstrap
    values depend on the actions); or a mix of the two, actor_grad_mix of dynamics. The critics' parameters get
    no gradient from the actor's loss.

    `return_scale` is the EMA S of the λ-returns' spread before this update; it is updated with this rollout's
    returns and, with `return_normalization`, the advantages are divided by max(1, S), so returns of any scale
    weigh the same against the entropy bonus (returns that vary by less than 1 are left as they are).
    Returns (actor_loss, critic_loss, metrics); metrics["return_scale"] is the updated S."""
    c = config
    sg = jax.lax.stop_gradient
    feat = sg(rollout.feat)  # [K+1, N, D]
    critic = lambda params, x: value_distribution(c, critic_apply(params, x))
    if c.return_critic == "target":
        target_values = critic(target_critic_params, feat).mean  # [K+1, N]
        bootstrap, value_dist = target_values, critic(critic_params, feat[:-1])
    else:  # one pass of the critic gives the bootstrap values and the predictions the loss trains
        outputs = critic_apply(critic_params, feat)  # [K+1, N, V]
        bootstrap, value_dist = value_distribution(c, outputs).mean, value_distribution(c, outputs[:-1])
    returns = sg(lambda_returns(rollout.reward, rollout.cont, bootstrap, c.discount, c.lmbda))  # [K, N]
    return_scale = updated_return_scale(c, return_scale, returns)
    # Weight of step k: probability the imagined episode is still running when it is reached.
    weights = sg(jnp.cumprod(jnp.concatenate([jnp.ones_like(rollout.cont[:1]), rollout.cont[:-1]], 0), 0))

    values = value_dist.mean  # [K, N]
    if c.twohot_critic:  # cross-entropy with the two-hot targets
        critic_loss = -jnp.mean(weights * value_dist.log_prob(returns))
    else:
        critic_loss = jnp.mean(weights * 0.5 * (values - returns) ** 2)
    if takes_part(c.slow_critic_weight):  # toward the slow critic
        slow = target_values[:-1] if c.return_critic == "target" else critic(target_critic_params, feat[:-1]).mean
        slow = sg(slow)
        if c.twohot_critic:
            critic_loss += -c.slow_critic_weight * jnp.mean(weights * value_dist.log_prob(slow))
        else:
            critic_loss += c.slow_critic_weight * jnp.mean(weights * 0.5 * (values - slow) ** 2)

    policy = action_distribution(c, actor_apply(actor_params, feat[:-1]), continuous)  # over [K, N]
    entropy = policy.entropy()
    scale = jnp.maximum(1.0, return_scale) if c.return_normalization else 1.0
    gradient = actor_gradient(c, continuous)
    if gradient == "reinforce":
        advantage = returns - sg(values)
        if c.return_normalization:
            advantage = advantage / scale
        objective = policy.log_prob(rollout.action) * advantage
    else:
        # λ-returns with gradients through the rollout; the bootstrap values from critics held fixed
        bootstrap_critic = target_critic_params if c.return_critic == "target" else critic_params
        dynamics_bootstrap = critic(sg(bootstrap_critic), rollout.feat).mean  # [K+1, N]
        dynamics_returns = lambda_returns(rollout.reward, rollout.cont, dynamics_bootstrap, c.discount, c.lmbda)
        objective = (dynamics_returns - sg(values)) / scale
        if gradient == "mix":
            reinforce = policy.log_prob(sg(rollout.action)) * (returns - sg(values)) / scale
            objective = c.actor_grad_mix * objective + (1.0 - c.actor_grad_mix) * reinforce
    actor_loss = -jnp.mean(weights * (objective + c.beta * entropy))

    metrics = {"actor_loss": actor_loss, "critic_loss": critic_loss, "actor_entropy": jnp.mean(entropy),
               "imagined_return": jnp.mean(returns[0]), "imagined_value": jnp.mean(values),
               "imagined_reward": jnp.mean(rollout.reward), "imagined_continue": jnp.mean(rollout.cont),
               "return_scale": return_scale}
    return actor_loss, critic_loss, metrics


# ---------------------------------------------------------------------------------------------
# Model diagnostics: how well the world model fits a few replayed sequences, once per logged block.

DIAGNOSTIC_SEQUENCES = 8  # replayed sequences the diagnostics look at per seed and block


def masked_mean(values, mask):
    """Mean of `values` where `mask` holds; NaN when it holds nowhere (the caller reports that as missing)."""
    mask = jnp.broadcast_to(mask, values.shape).astype(jnp.float32)
    total = jnp.sum(mask)
    return jnp.where(total > 0, jnp.sum(values * mask) / jnp.maximum(total, 1.0), jnp.nan)


def through_first_episode_end(episode_end):
    """[K, ...] bool (time-major) -> [K, ...] float: 1 up to and including the first episode end, 0 after."""
    ends = episode_end.astype(jnp.int32)
    return (jnp.cumsum(ends, 0) - ends == 0).astype(jnp.float32)


def continuation_weights(cont):
    """[K, ...] predicted continue probabilities of transitions k -> k+1 -> [K, ...] probability that the
    imagined episode is still running when transition k starts (1 for k = 0)."""
    return jnp.cumprod(jnp.concatenate([jnp.ones_like(cont[:1]), cont[:-1]], 0), 0)


def discounted_sum(rewards, weights, discount: float):
    """sum_k discount^k * weights_k * rewards_k over the leading (time) axis of [K, ...]."""
    powers = discount ** jnp.arange(rewards.shape[0], dtype=jnp.float32)
    return jnp.sum(powers.reshape(-1, *([1] * (rewards.ndim - 1))) * weights * rewards, 0)


def model_diagnostics(config: Config, wm: WorldModel, wm_params, actor_apply: Callable, actor_params, batch, key):
    """Scalar diagnostics of the world model on replayed sequences (batch as in world_model_loss, obs unpacked).

    Per-step statistics use every step: the carry restarts after an episode end, so steps after a boundary
    are the first steps of the next episode, and the reward / termination heads of step t predict r_t and
    d_t of the transition a_t (never across the boundary). Returns are compared on the last
    H = min(rollout_length, T) steps of each sequence, starting from the posterior at step T - H (the steps
    before it warm the carry up): `real_return` sums the replayed rewards up to and including the first
    episode end in the window; `imagined_return` rolls the prior forward with the actor, weighting each
    predicted reward by the predicted probability that the episode still runs (cut at the same step when
    the real episode was truncated, since the model cannot know the time limit); `open_loop_return` does
    the same with the replayed actions, cut at the first episode end, so its error is model error alone.
    Masked statistics with nothing to average over (no terminal step, no nonzero reward) are NaN."""
    c = config
    observe_key, actor_key, open_loop_key = jax.random.split(key, 3)
    obs = batch.obs.astype(jnp.float32)  # [B, T, *obs]
    batch_size, seq_len = batch.action.shape[:2]
    episode_end = batch.terminated | batch.truncated
    h, z, next_h, prior, posterior = observe_sequence(c, wm, wm_params, obs, batch.action, episode_end, observe_key)

    stats = {}
    obs_pred = wm.observation(wm.decode(wm_params, jnp.concatenate([h, z], -1))).mode()  # [B, T, *obs]
    if c.binary_state:
        stats["observation_bit_error"] = jnp.mean((obs_pred != (obs > 0.5)).astype(jnp.float32))
    else:
        stats["observation_mse"] = jnp.mean((obs_pred - obs) ** 2)
    reward_error = reward_distribution(c, wm.reward(wm_params, next_h)).mean - batch.reward  # [B, T]
    stats["reward_mse"] = jnp.mean(reward_error**2)
    stats["reward_mse_nonzero"] = masked_mean(reward_error**2, batch.reward != 0)
    stats["reward_accuracy"] = jnp.mean((jnp.abs(reward_error) < 0.5).astype(jnp.float32))
    termination_correct = ((wm.termination(wm_params, next_h) > 0) == batch.terminated).astype(jnp.float32)
    stats["termination_accuracy"] = jnp.mean(termination_correct)
    stats["termination_accuracy_terminal"] = masked_mean(termination_correct, batch.terminated)
    posterior_dist = latents(c).distribution(posterior)
    stats["kl"] = jnp.mean(posterior_dist.kl(latents(c).distribution(prior)))
    stats["posterior_entropy"] = jnp.mean(posterior_dist.entropy())

    horizon = min(c.rollout_length, seq_len)
    start = seq_len - horizon
    window = lambda x: jnp.swapaxes(x[:, start:], 0, 1)  # [B, T, ...] -> [H, B, ...]
    terminated, truncated, reward = window(batch.terminated), window(batch.truncated), window(batch.reward)
    real_steps = through_first_episode_end(terminated | truncated)  # [H, B]
    ends_truncated = jnp.sum(real_steps * (truncated & ~terminated), 0) > 0  # [B] first end is a time limit
    real_return = discounted_sum(reward, real_steps, c.discount)  # [B]

    start_h, start_z = h[:, start], z[:, start]
    action_dims = batch.action.shape[2] if batch.action.ndim == 3 else None  # continuous actions [B, T, A]
    rollout = imagine(c, wm, wm_params, actor_apply, actor_params, start_h, start_z, actor_key, horizon, action_dims)
    imagined_steps = jnp.where(ends_truncated[None], real_steps, 1.0)
    imagined_return = discounted_sum(rollout.reward, continuation_weights(rollout.cont) * imagined_steps, c.discount)

    def open_loop_step(carry, inputs):
        action, noise_t = inputs
        next_h_t, next_z_t, _ = imagine_step(c, wm, wm_params, *carry, action, noise_t)
        outs = (reward_distribution(c, wm.reward(wm_params, next_h_t)).mean,
                jax.nn.sigmoid(-wm.termination(wm_params, next_h_t)))
        return (next_h_t, next_z_t), outs

    open_loop_inputs = (window(batch.action), latents(c).noise(open_loop_key, (horizon, batch_size)))
    _, (open_loop_reward, open_loop_cont) = jax.lax.scan(open_loop_step, (start_h, start_z), open_loop_inputs)
    open_loop_return = discounted_sum(open_loop_reward, continuation_weights(open_loop_cont) * real_steps, c.discount)

    stats.update({
        "real_return": jnp.mean(real_return),
        "imagined_return": jnp.mean(imagined_return),
        "imagined_return_error": jnp.mean(imagined_return - real_return),
        "open_loop_return": jnp.mean(open_loop_return),
        "open_loop_return_abs_error": jnp.mean(jnp.abs(open_loop_return - real_return)),
    })
    return stats
