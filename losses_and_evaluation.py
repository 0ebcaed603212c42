"""Losses of DreamerV2: the world-model loss over replayed sequences (observation, reward and termination
likelihoods, KL balancing, posterior entropy bonus) and the actor-critic losses on imagined rollouts, each term
weighted by its named scale (`loss_scales`); and the model diagnostics."""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from agent.distributions import Bernoulli, Heads, takes_part
from networks import RSSMState, WorldModel

# The losses, by name, and the config key that scales each (a sweepable key: its value comes from the run's values)
LOSS_SCALE_KEYS = {"observation": "state_prediction_weight", "reward": "reward_weight",
                   "termination": "termination_weight", "kl_dynamics": "KL_prior_weight",
                   "kl_representation": "KL_posterior_weight", "posterior_entropy": "posterior_entropy_weight",
                   "slow_critic": "slow_critic_weight"}
WORLD_MODEL_LOSSES = ("observation", "reward", "termination", "kl_dynamics", "kl_representation",
                      "posterior_entropy")
CRITIC_LOSSES = ("slow_critic",)  # the critic's own regression has scale 1


def loss_scales(values: dict) -> dict:
    """{loss name: scale} from a run's values (training_step.run_values: the config's numbers, or the swept
    values); checked to name exactly the losses."""
    scales = {name: values[key] for name, key in LOSS_SCALE_KEYS.items()}
    check_loss_names(scales, WORLD_MODEL_LOSSES + CRITIC_LOSSES)
    return scales


def check_loss_names(scales: dict, losses) -> None:
    if set(scales) != set(losses):
        raise ValueError(f"the loss scales must name exactly the losses {sorted(losses)}, got {sorted(scales)}")


class PosteriorStates(NamedTuple):
    h: jax.Array  # [B, T, H] deterministic state the posterior was computed from
    z: jax.Array  # [B, T, Z] posterior latent sample


def world_model_loss(wm: WorldModel, heads: Heads, values: dict, wm_params, batch, key):
    """World-model loss on a batch of sequences (obs [B, T, ...], action/reward/terminated/truncated [B, T]).

    Entry t holds (o_t, a_t, r_t, d_t): r_t and d_t follow a_t, so the reward and termination heads read the
    next deterministic state h_{t+1} = transition(h_t, z_t, a_t). The carry restarts at zero after an episode
    end. `values`: the run's values (training_step.run_values). Returns (loss, (metrics, posterior states))."""
    obs = batch.obs.astype(jnp.float32)  # [B, T, *obs]
    embeds = wm.encode(wm_params, obs)  # [B, T, E]
    seq = wm.rssm.observe(wm_params, embeds, batch.action, batch.terminated | batch.truncated, key)

    obs_dist = wm.observation(wm.decode(wm_params, jnp.concatenate([seq.h, seq.z], -1)))  # elementwise [B, T, *obs]
    kl_losses, kl = wm.rssm.kl_loss(seq.posterior, seq.prior, values["free_nats"])
    posterior = wm.rssm.latents.distribution(seq.posterior)
    log_likelihoods = {  # each [B, T]: the heads' losses are their negatives
        "observation": jnp.sum(obs_dist.log_prob(obs), axis=tuple(range(2, obs.ndim))),
        "reward": heads.reward(wm.reward(wm_params, seq.next_h)).log_prob(batch.reward),
        "termination": Bernoulli(wm.termination(wm_params, seq.next_h)).log_prob(batch.terminated.astype(jnp.float32)),
    }
    # KL balancing; an entropy bonus for categorical latents, a KL to N(0, I) for Gaussian ones
    regularizers = {**kl_losses, "posterior_entropy": posterior.regularizer()}
    check_loss_names({**log_likelihoods, **regularizers}, WORLD_MODEL_LOSSES)
    scales = loss_scales(values)
    scaled = {**{name: -scales[name] * log_likelihood for name, log_likelihood in log_likelihoods.items()},
              **{name: scales[name] * loss for name, loss in regularizers.items()}}
    terms = {"observation_loss": jnp.mean(scaled["observation"]), "reward_loss": jnp.mean(scaled["reward"]),
             "termination_loss": jnp.mean(scaled["termination"]),
             "kl_loss": jnp.mean(scaled["kl_dynamics"] + scaled["kl_representation"]),
             "posterior_entropy_loss": jnp.mean(scaled["posterior_entropy"])}
    loss = sum(terms.values())
    metrics = {"model_loss": loss, **terms, "kl": jnp.mean(kl), "posterior_entropy": jnp.mean(posterior.entropy()),
               "prior_entropy": jnp.mean(wm.rssm.latents.distribution(seq.prior).entropy())}
    return loss, (metrics, PosteriorStates(seq.h, seq.z))


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


def continuation_weights(cont):
    """[K, ...] predicted continue probabilities of transitions k -> k+1 -> [K, ...] probability that the
    imagined episode is still running when transition k starts (1 for k = 0)."""
    return jnp.cumprod(jnp.concatenate([jnp.ones_like(cont[:1]), cont[:-1]], 0), 0)


class ImaginedRollout(NamedTuple):
    feat: jax.Array  # [K+1, N, H+Z] model features along the rollout (index 0 = start state)
    action: jax.Array  # [K, N] int32 (discrete) or [K, N, A] float32 (continuous)
    reward: jax.Array  # [K, N] predicted reward of each transition
    cont: jax.Array  # [K, N] predicted probability that the episode continues after each transition


class ActorPolicy(NamedTuple):
    """The actor acting in imagination (the policy `RSSM.imagine` takes). Discrete actions are drawn by inverse
    CDF; with `straight_through` the transition reads them as one-hot samples whose gradient is the policy's
    probabilities', so the rollout differentiates to the actor (the dynamics gradient). Continuous actions of
    `action_dims` components are reparameterised samples: the rollout always differentiates to the actor."""

    apply: Callable  # (actor params, feat [..., H+Z]) -> actor outputs
    params: object
    heads: Heads
    unimix: object  # the run's actor_unimix
    action_dims: int | None = None  # continuous actions' components (None: discrete)
    straight_through: bool = False

    def noise(self, key, steps: tuple):
        if self.action_dims is not None:
            return jax.random.normal(key, (*steps, self.action_dims))
        return jax.random.uniform(key, (*steps, 1))

    def act(self, feat, noise):
        policy = self.heads.policy(self.apply(self.params, feat), self.unimix)
        if self.action_dims is not None:
            action = policy.sample(noise)  # [N, A]
            return action, action
        action = policy.sample_from_uniform(noise)  # [N]
        if not self.straight_through:
            return action, action
        probs = jnp.exp(policy.log_probs)
        return action, jax.nn.one_hot(action, probs.shape[-1]) + probs - jax.lax.stop_gradient(probs)


def imagine(wm: WorldModel, heads: Heads, wm_params, policy: ActorPolicy, start: RSSMState, key,
            horizon: int) -> ImaginedRollout:
    """The prior rolled `horizon` steps from start states [N, ...] with the actor, and the heads' predicted
    rewards and continuation probabilities along it."""
    rollout = wm.rssm.imagine(wm_params, start, policy, horizon, key)
    h = jnp.concatenate([start.h[None], rollout.h], 0)  # [K+1, N, H]
    feat = jnp.concatenate([h, jnp.concatenate([start.z[None], rollout.z], 0)], -1)
    reward = heads.reward(wm.reward(wm_params, rollout.h)).mean
    cont = jax.nn.sigmoid(-wm.termination(wm_params, rollout.h))
    return ImaginedRollout(feat, rollout.action, reward, cont)


def return_range(returns):
    """The spread of a batch of λ-returns: their 95th minus their 5th percentile (DreamerV3's return scale,
    robust to a few outlying returns)."""
    low, high = jnp.percentile(returns, jnp.array([5.0, 95.0]))
    return high - low


def updated_return_scale(decay, return_scale, returns):
    """The EMA of the λ-returns' spread after this batch: S <- decay * S + (1 - decay) * return_range."""
    return decay * return_scale + (1.0 - decay) * return_range(jax.lax.stop_gradient(returns))


class CriticPasses(NamedTuple):
    """The critic's outputs one actor-critic loss needs, from the features [K+1, N, D]."""

    bootstrap: jax.Array  # [K+1, N] the values λ-returns bootstrap from
    prediction: object  # the critic's distribution over [K, N], which its loss trains
    slow: Callable  # () -> [K, N] the slow (target) critic's values, for its regulariser


def target_critic_passes(critic: Callable, critic_params, target_params, feat) -> CriticPasses:
    """λ-returns bootstrapped from the target critic (return_critic "target")."""
    target_values = critic(target_params, feat).mean  # [K+1, N]
    return CriticPasses(target_values, critic(critic_params, feat[:-1]), lambda: target_values[:-1])


def online_critic_passes(critic_apply: Callable, value_head: Callable, critic_params, target_params,
                         feat) -> CriticPasses:
    """λ-returns bootstrapped from the critic itself (return_critic "online"): one pass of the critic gives the
    bootstrap values and the predictions the loss trains."""
    outputs = critic_apply(critic_params, feat)  # [K+1, N, V]
    slow = lambda: value_head(critic_apply(target_params, feat[:-1])).mean
    return CriticPasses(value_head(outputs).mean, value_head(outputs[:-1]), slow)


class ActorGradient(NamedTuple):
    """The actor's gradient estimator, chosen once (distributions.actor_gradient): REINFORCE with the critic as
    baseline, log π(a) times the advantage; the λ-returns differentiated through the rollout ("dynamics"); or
    a mix, `mix` of dynamics."""

    kind: str  # "reinforce", "dynamics" or "mix"
    mix: float = 0.0

    def objective(self, policy, rollout, returns, baseline, scale, dynamics_returns: Callable):
        if self.kind == "reinforce":
            return policy.log_prob(rollout.action) * ((returns - baseline) / scale)
        objective = (dynamics_returns() - baseline) / scale
        if self.kind == "dynamics":
            return objective
        reinforce = policy.log_prob(jax.lax.stop_gradient(rollout.action)) * (returns - baseline) / scale
        return self.mix * objective + (1.0 - self.mix) * reinforce


class ActorCritic(NamedTuple):
    """What the actor-critic losses are made of, built once from the config (initialization.make_agent)."""

    actor_apply: Callable  # (params, feat [..., D]) -> actor outputs
    critic_apply: Callable  # (params, feat [..., D]) -> critic outputs
    heads: Heads
    gradient: ActorGradient
    critic_passes: Callable  # (critic params, target params, feat [K+1, N, D]) -> CriticPasses
    dynamics_critic: Callable  # (critic params, target params) -> the params the dynamics returns bootstrap from
    return_normalization: bool


def make_actor_critic_losses(config, actor_apply, critic_apply, heads: Heads, gradient: str) -> ActorCritic:
    critic = lambda params, x: heads.value(critic_apply(params, x))
    target = config.return_critic == "target"
    passes = ((lambda p, t, feat: target_critic_passes(critic, p, t, feat)) if target
              else (lambda p, t, feat: online_critic_passes(critic_apply, heads.value, p, t, feat)))
    return ActorCritic(actor_apply, critic_apply, heads, ActorGradient(gradient, config.actor_grad_mix), passes,
                       (lambda p, t: t) if target else (lambda p, t: p), config.return_normalization)


def actor_critic_losses(ac: ActorCritic, values: dict, actor_params, critic_params, target_critic_params,
                        rollout: ImaginedRollout, return_scale=0.0):
    """Actor (plus entropy bonus) and critic losses on one imagined rollout. The critic: its head's loss toward
    the stop-gradient λ-returns, plus the slow regulariser toward the slow critic (DreamerV3). The actor: its
    gradient's objective (ActorGradient; with the dynamics gradient the rollout must be a function of
    `actor_params`) plus the entropy bonus, each step weighted by the probability that the imagined episode
    still runs. The critics' parameters get no gradient from the actor's loss.

    `return_scale` is the EMA S of the λ-returns' spread before this update; it is updated with this rollout's
    returns and, with `return_normalization`, the advantages are divided by max(1, S).
    Returns (actor_loss, critic_loss, metrics); metrics["return_scale"] is the updated S."""
    sg, v = jax.lax.stop_gradient, values
    feat = sg(rollout.feat)  # [K+1, N, D]
    critic = ac.critic_passes(critic_params, target_critic_params, feat)
    returns = sg(lambda_returns(rollout.reward, rollout.cont, critic.bootstrap, v["discount"], v["lmbda"]))  # [K, N]
    return_scale = updated_return_scale(v["return_scale_decay"], return_scale, returns)
    weights = sg(continuation_weights(rollout.cont))  # [K, N]

    critic_loss = jnp.mean(weights * critic.prediction.loss(returns))
    if takes_part(v["slow_critic_weight"]):
        critic_loss += loss_scales(v)["slow_critic"] * jnp.mean(weights * critic.prediction.loss(sg(critic.slow())))

    def dynamics_returns():  # λ-returns with gradients through the rollout; bootstrap from critics held fixed
        bootstrap = ac.heads.value(ac.critic_apply(sg(ac.dynamics_critic(critic_params, target_critic_params)),
                                                   rollout.feat)).mean  # [K+1, N]
        return lambda_returns(rollout.reward, rollout.cont, bootstrap, v["discount"], v["lmbda"])

    policy = ac.heads.policy(ac.actor_apply(actor_params, feat[:-1]), v["actor_unimix"])  # over [K, N]
    baseline = sg(critic.prediction.mean)
    scale = jnp.maximum(1.0, return_scale) if ac.return_normalization else 1.0
    objective = ac.gradient.objective(policy, rollout, returns, baseline, scale, dynamics_returns)
    entropy = policy.entropy()
    actor_loss = -jnp.mean(weights * (objective + v["beta"] * entropy))

    metrics = {"actor_loss": actor_loss, "critic_loss": critic_loss, "actor_entropy": jnp.mean(entropy),
               "imagined_return": jnp.mean(returns[0]), "imagined_value": jnp.mean(critic.prediction.mean),
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


def discounted_sum(rewards, weights, discount: float):
    """sum_k discount^k * weights_k * rewards_k over the leading (time) axis of [K, ...]."""
    powers = discount ** jnp.arange(rewards.shape[0], dtype=jnp.float32)
    return jnp.sum(powers.reshape(-1, *([1] * (rewards.ndim - 1))) * weights * rewards, 0)


def model_diagnostics(config, values: dict, wm: WorldModel, heads: Heads, wm_params, actor_apply: Callable,
                      actor_params, batch, key):
    """Scalar diagnostics of the world model on replayed sequences (batch as in world_model_loss, obs unpacked);
    `values`: the run's values (training_step.run_values).

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
    c, discount = config, values["discount"]
    observe_key, actor_key, open_loop_key = jax.random.split(key, 3)
    obs = batch.obs.astype(jnp.float32)  # [B, T, *obs]
    seq_len = batch.action.shape[1]
    episode_end = batch.terminated | batch.truncated
    seq = wm.rssm.observe(wm_params, wm.encode(wm_params, obs), batch.action, episode_end, observe_key)

    stats = {}
    obs_pred = wm.observation(wm.decode(wm_params, jnp.concatenate([seq.h, seq.z], -1))).mode()  # [B, T, *obs]
    if c.binary_state:
        stats["observation_bit_error"] = jnp.mean((obs_pred != (obs > 0.5)).astype(jnp.float32))
    else:
        stats["observation_mse"] = jnp.mean((obs_pred - obs) ** 2)
    reward_error = heads.reward(wm.reward(wm_params, seq.next_h)).mean - batch.reward  # [B, T]
    stats["reward_mse"] = jnp.mean(reward_error**2)
    stats["reward_mse_nonzero"] = masked_mean(reward_error**2, batch.reward != 0)
    stats["reward_accuracy"] = jnp.mean((jnp.abs(reward_error) < 0.5).astype(jnp.float32))
    termination_correct = ((wm.termination(wm_params, seq.next_h) > 0) == batch.terminated).astype(jnp.float32)
    stats["termination_accuracy"] = jnp.mean(termination_correct)
    stats["termination_accuracy_terminal"] = masked_mean(termination_correct, batch.terminated)
    posterior_dist = wm.rssm.latents.distribution(seq.posterior)
    stats["kl"] = jnp.mean(posterior_dist.kl(wm.rssm.latents.distribution(seq.prior)))
    stats["posterior_entropy"] = jnp.mean(posterior_dist.entropy())

    horizon = min(c.rollout_length, seq_len)
    start = seq_len - horizon
    window = lambda x: jnp.swapaxes(x[:, start:], 0, 1)  # [B, T, ...] -> [H, B, ...]
    terminated, truncated, reward = window(batch.terminated), window(batch.truncated), window(batch.reward)
    real_steps = through_first_episode_end(terminated | truncated)  # [H, B]
    ends_truncated = jnp.sum(real_steps * (truncated & ~terminated), 0) > 0  # [B] first end is a time limit
    real_return = discounted_sum(reward, real_steps, discount)  # [B]

    start_state = RSSMState(seq.h[:, start], seq.z[:, start])
    action_dims = batch.action.shape[2] if batch.action.ndim == 3 else None  # continuous actions [B, T, A]
    policy = ActorPolicy(actor_apply, actor_params, heads, values["actor_unimix"], action_dims)
    rollout = imagine(wm, heads, wm_params, policy, start_state, actor_key, horizon)
    imagined_steps = jnp.where(ends_truncated[None], real_steps, 1.0)
    imagined_return = discounted_sum(rollout.reward, continuation_weights(rollout.cont) * imagined_steps, discount)

    predictions = lambda h: (heads.reward(wm.reward(wm_params, h)).mean, jax.nn.sigmoid(-wm.termination(wm_params, h)))
    open_loop = wm.rssm.imagine(wm_params, start_state, window(batch.action), horizon, open_loop_key, predictions)
    open_loop_reward, open_loop_cont = open_loop.readout  # [H, B] each
    open_loop_return = discounted_sum(open_loop_reward, continuation_weights(open_loop_cont) * real_steps, discount)

    stats.update({
        "real_return": jnp.mean(real_return),
        "imagined_return": jnp.mean(imagined_return),
        "imagined_return_error": jnp.mean(imagined_return - real_return),
        "open_loop_return": jnp.mean(open_loop_return),
        "open_loop_return_abs_error": jnp.mean(jnp.abs(open_loop_return - real_return)),
    })
    return stats
