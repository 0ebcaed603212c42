"""The probability distributions of the agent, as small immutable objects (pytrees, so they pass through jit,
vmap and stop_gradient): the latent variables' (categorical with straight-through samples, or diagonal
Gaussian), the observation and reward likelihoods (Bernoulli, Gaussian with fixed or learned variance) and the
policies (categorical for discrete actions; truncated or bounded normal for continuous ones). Each offers what
the losses use of it: sample, log_prob, entropy, kl, mode.

Samples are drawn from noise passed in, not from a key: a scan over time takes all its steps' noise as one
input drawn before it (`Latents.noise`), which on CPU is far cheaper than a draw per step.

`latents(config)`, `observation_distribution`, `reward_distribution`, `value_distribution` and `action_distribution`
are the places that read which distribution a config asks for. A new distribution is a new class here."""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiment.config import Config


def takes_part(amount) -> bool:
    """Whether a weight or mixing amount enters the computation: a config number unless it is 0, a swept value
    (an array, traced inside the program) always, even where it is 0. Keeps configs without the option on the
    program they had before it."""
    return isinstance(amount, jax.Array) or amount != 0


def free_bits(kl, free_nats):
    """max(kl, free_nats): a KL term below `free_nats` is a constant, so it has no gradient there (DreamerV3).
    The KL as it is where free_nats is the number 0 (a swept value is an array: clipped even where it is 0)."""
    if takes_part(free_nats):
        return jnp.maximum(kl, free_nats)
    return kl


def inverse_cdf_sample(u, probs):
    """Class indices [...] drawn from probs [..., W] with one uniform number u [..., 1] per variable.

    The same distribution as Gumbel-max (jax.random.categorical), which needs W random numbers per variable. The
    CDF is a tiny matmul with a triangular matrix (faster than cumsum on XLA:CPU)."""
    width = probs.shape[-1]
    cdf = probs @ np.triu(np.ones((width, width), np.float32)).astype(probs.dtype)  # [..., W], cdf[..., -1] ~= 1
    return jnp.minimum(jnp.sum(cdf < u * cdf[..., -1:], -1), width - 1)


class OneHotCategorical(NamedTuple):
    """F independent categorical variables of W classes each, log_probs [..., F, W] (normalised). Samples are
    one-hot vectors flattened to [..., F*W], with straight-through gradients to the probabilities."""

    log_probs: jax.Array

    @classmethod
    def from_logits(cls, logits, num: int, width: int, unimix: float = 0.0) -> "OneHotCategorical":
        """From unnormalised logits [..., F*W]; with `unimix` > 0 each variable's probabilities are
        (1 - unimix) softmax + unimix / W (DreamerV3), so no class falls below unimix / W."""
        logits = logits.reshape(*logits.shape[:-1], num, width)
        if not takes_part(unimix):
            return cls(jax.nn.log_softmax(logits, axis=-1))
        return cls(jnp.log((1.0 - unimix) * jax.nn.softmax(logits, -1) + unimix / width))

    def sample(self, noise):
        """One-hot sample [..., F*W] from uniforms noise [..., F, 1]; its gradient is that of the probabilities."""
        probs = jnp.exp(self.log_probs)
        one_hot = jax.nn.one_hot(inverse_cdf_sample(noise, probs), probs.shape[-1], dtype=probs.dtype)
        sample = one_hot + probs - jax.lax.stop_gradient(probs)
        return sample.reshape(*sample.shape[:-2], -1)

    def log_prob(self, sample):
        """log p(sample) [...] of a flattened one-hot sample, summed over the variables."""
        return jnp.sum(sample.reshape(self.log_probs.shape) * self.log_probs, axis=(-2, -1))

    def entropy(self):
        """[...], summed over the variables."""
        return -jnp.sum(jnp.exp(self.log_probs) * self.log_probs, axis=(-2, -1))

    def kl(self, other: "OneHotCategorical"):
        """KL(self || other) [...], summed over the variables."""
        return jnp.sum(jnp.exp(self.log_probs) * (self.log_probs - other.log_probs), axis=(-2, -1))

    def mode(self):
        """The most likely one-hot vector [..., F*W]."""
        mode = jax.nn.one_hot(jnp.argmax(self.log_probs, -1), self.log_probs.shape[-1], dtype=self.log_probs.dtype)
        return mode.reshape(*mode.shape[:-2], -1)

    def regularizer(self):
        """What the posterior-entropy term minimises: the negative entropy (an entropy bonus)."""
        return -self.entropy()


class DiagonalNormal(NamedTuple):
    """Independent Gaussians, mean and std [..., F]."""

    mean: jax.Array
    std: jax.Array

    @classmethod
    def from_params(cls, params, min_std: float = 0.1) -> "DiagonalNormal":
        """From [..., 2F] network outputs: the mean, and a raw std mapped to softplus(raw) + min_std."""
        mean, raw_std = jnp.split(params, 2, axis=-1)
        return cls(mean, jax.nn.softplus(raw_std) + min_std)

    def sample(self, noise):
        """Reparameterised sample [..., F] from standard normals noise [..., F]."""
        return self.mean + self.std * noise

    def log_prob(self, x):
        """[...], summed over the variables."""
        return jnp.sum(-0.5 * ((x - self.mean) / self.std) ** 2 - jnp.log(self.std) - 0.5 * jnp.log(2 * jnp.pi), -1)

    def entropy(self):
        """[...], summed over the variables."""
        return jnp.sum(0.5 * jnp.log(2 * jnp.pi * jnp.e * self.std**2), axis=-1)

    def kl(self, other: "DiagonalNormal"):
        """KL(self || other) [...], summed over the variables."""
        kl = (jnp.log(other.std / self.std) + (self.std**2 + (self.mean - other.mean) ** 2) / (2 * other.std**2)
              - 0.5)
        return jnp.sum(kl, axis=-1)

    def kl_to_standard_normal(self):
        """KL(self || N(0, I)) [...]."""
        return jnp.sum(0.5 * (self.std**2 + self.mean**2 - 1.0) - jnp.log(self.std), axis=-1)

    def mode(self):
        return self.mean

    def regularizer(self):
        """What the posterior-entropy term minimises: the KL to N(0, I) (a Gaussian's entropy is unbounded)."""
        return self.kl_to_standard_normal()


class CategoricalLatents(NamedTuple):
    """The latent space of `num` categorical variables of `width` classes: parameters are logits [..., num*width],
    samples one-hot [..., num*width]; `unimix` of the uniform mixed into each variable's probabilities."""

    num: int
    width: int
    unimix: float = 0.0

    @property
    def param_size(self) -> int:
        return self.num * self.width

    @property
    def size(self) -> int:
        return self.num * self.width

    def distribution(self, params) -> OneHotCategorical:
        return OneHotCategorical.from_logits(params, self.num, self.width, self.unimix)

    def noise(self, key, batch_shape: tuple):
        """Uniforms [*batch_shape, num, 1]: one per variable (`OneHotCategorical.sample`)."""
        return jax.random.uniform(key, (*batch_shape, self.num, 1))

    def one_hot_block(self, start: int) -> tuple[int, int, int] | None:
        """Where a sample sits in a layer's input that holds it from column `start` (kernels.one_hot_matmul)."""
        return start, self.num, self.width


class GaussianLatents(NamedTuple):
    """The latent space of `num` Gaussian variables: parameters [..., 2*num] (mean, raw std), samples [..., num]."""

    num: int

    @property
    def param_size(self) -> int:
        return 2 * self.num

    @property
    def size(self) -> int:
        return self.num

    def distribution(self, params) -> DiagonalNormal:
        return DiagonalNormal.from_params(params)

    def noise(self, key, batch_shape: tuple):
        """Standard normals [*batch_shape, num]."""
        return jax.random.normal(key, (*batch_shape, self.num))

    def one_hot_block(self, start: int) -> None:
        return None


def latents(config: Config) -> CategoricalLatents | GaussianLatents:
    """The latent space the config asks for (`latent_type`)."""
    if config.latent_type == "categorical":
        return CategoricalLatents(config.num_features, config.feature_width, config.latent_unimix)
    return GaussianLatents(config.num_features)


class Bernoulli(NamedTuple):
    """Independent binary variables with logits [...]."""

    logits: jax.Array

    def log_prob(self, target):
        """t log σ(l) + (1 - t) log σ(-l) [...], written with one log σ: log σ(-l) = log σ(l) - l. Its gradient in
        l is exactly t - σ(l), and XLA:CPU evaluates one softplus per decoded pixel instead of two."""
        return jax.nn.log_sigmoid(self.logits) - (1.0 - target) * self.logits

    def loss(self, target):
        """The negative log-likelihood of `target` [...]."""
        return -self.log_prob(target)

    def mode(self):
        return (self.logits > 0).astype(self.logits.dtype)


class Normal(NamedTuple):
    """Independent Gaussians [...] with mean and log std (a fixed log std of 0: unit variance)."""

    mean: jax.Array
    log_std: jax.Array | float = 0.0

    def log_prob(self, x):
        """[...], elementwise."""
        return -0.5 * ((x - self.mean) / jnp.exp(self.log_std)) ** 2 - self.log_std - 0.5 * jnp.log(2 * jnp.pi)

    def loss(self, target):
        """The negative log-likelihood of `target` [...]."""
        return -self.log_prob(target)

    def mode(self):
        return self.mean


class Categorical(NamedTuple):
    """A categorical distribution over A actions. `logits` [..., A] are unnormalised, `log_probs` their
    normalisation; build it with `from_logits`, which can mix in the uniform distribution (DreamerV3's unimix)."""

    logits: jax.Array
    log_probs: jax.Array

    @classmethod
    def from_logits(cls, logits, unimix=0.0) -> "Categorical":
        """Probabilities (1 - unimix) softmax(logits) + unimix / A; the logits as they are where unimix is the
        number 0 (a swept value is an array: mixed even where it is 0)."""
        if takes_part(unimix):
            logits = jnp.log((1.0 - unimix) * jax.nn.softmax(logits, -1) + unimix / logits.shape[-1])
        return cls(logits, jax.nn.log_softmax(logits))

    def sample(self, key):
        """Action indices [...] by Gumbel-max (jax.random.categorical)."""
        return jax.random.categorical(key, self.logits).astype(jnp.int32)

    def sample_from_uniform(self, u):
        """Action indices [...] from uniforms u [..., 1] (`inverse_cdf_sample`)."""
        return inverse_cdf_sample(u, jax.nn.softmax(self.logits, -1))

    def log_prob(self, action):
        """log π(action) [...] of integer actions [...]."""
        return jnp.take_along_axis(self.log_probs, action[..., None], -1)[..., 0]

    def entropy(self):
        return -jnp.sum(jnp.exp(self.log_probs) * self.log_probs, -1)

    def mode(self):
        return jnp.argmax(self.logits, -1).astype(jnp.int32)


class TruncatedNormal(NamedTuple):
    """Independent normals truncated to [-1, 1], one per action component, mean and std [..., A] (DreamerV2's
    continuous policy: mean tanh(m), std 2 sigmoid(s / 2) + min_std). Samples are reparameterised through the
    inverse CDF, so a loss of them differentiates to the mean and std (the dynamics actor gradient)."""

    mean: jax.Array
    std: jax.Array

    @classmethod
    def from_params(cls, params, min_std: float = 0.1) -> "TruncatedNormal":
        """From [..., 2A] actor outputs (m, s)."""
        mean, raw_std = jnp.split(params, 2, axis=-1)
        return cls(jnp.tanh(mean), 2.0 * jax.nn.sigmoid(raw_std / 2.0) + min_std)

    def _bounds(self):
        """The bounds -1, 1 standardised, and the normal's mass between them: (alpha, beta, mass) [..., A]."""
        alpha, beta = (-1.0 - self.mean) / self.std, (1.0 - self.mean) / self.std
        mass = jnp.maximum(jax.scipy.special.ndtr(beta) - jax.scipy.special.ndtr(alpha), 1e-6)
        return alpha, beta, mass

    def sample(self, noise):
        """A sample [..., A] in [-1, 1] from standard normals noise [..., A]: the noise's quantile Φ(noise) taken
        within the truncated range, x = mean + std Φ⁻¹(Φ(α) + Φ(noise) (Φ(β) - Φ(α)))."""
        alpha, _, mass = self._bounds()
        eps = 1e-6  # keeps the quantile off 0 and 1, where Φ⁻¹ is infinite
        quantile = jnp.clip(jax.scipy.special.ndtr(alpha) + jax.scipy.special.ndtr(noise) * mass, eps, 1.0 - eps)
        return jnp.clip(self.mean + self.std * jax.scipy.special.ndtri(quantile), -1.0, 1.0)

    def log_prob(self, x):
        """[...], summed over the components: the normal's log density less log of its mass in [-1, 1]."""
        _, _, mass = self._bounds()
        log_density = -0.5 * ((x - self.mean) / self.std) ** 2 - jnp.log(self.std) - 0.5 * jnp.log(2 * jnp.pi)
        return jnp.sum(log_density - jnp.log(mass), -1)

    def entropy(self):
        """[...], summed over the components: log(sqrt(2πe) σ Z) + (α φ(α) - β φ(β)) / (2Z), Z the mass."""
        alpha, beta, mass = self._bounds()
        pdf = lambda t: jnp.exp(-0.5 * t**2) / jnp.sqrt(2 * jnp.pi)
        entropy = (0.5 * jnp.log(2 * jnp.pi * jnp.e) + jnp.log(self.std * mass)
                   + (alpha * pdf(alpha) - beta * pdf(beta)) / (2.0 * mass))
        return jnp.sum(entropy, -1)

    def mode(self):
        """The mean [..., A] (tanh: inside [-1, 1]), the truncated normal's mode."""
        return self.mean


class BoundedNormal(NamedTuple):
    """DreamerV3's continuous policy: independent normals per action component with mean tanh(m) and std
    0.9 sigmoid(s + 2) + 0.1, mean and std [..., A]; samples are clipped to [-1, 1], log_prob and entropy are the
    normal's."""

    mean: jax.Array
    std: jax.Array

    @classmethod
    def from_params(cls, params, min_std: float = 0.1, max_std: float = 1.0) -> "BoundedNormal":
        """From [..., 2A] actor outputs (m, s)."""
        mean, raw_std = jnp.split(params, 2, axis=-1)
        return cls(jnp.tanh(mean), (max_std - min_std) * jax.nn.sigmoid(raw_std + 2.0) + min_std)

    def sample(self, noise):
        """mean + std noise clipped to [-1, 1], [..., A], from standard normals noise [..., A]."""
        return jnp.clip(self.mean + self.std * noise, -1.0, 1.0)

    def log_prob(self, x):
        """[...], summed over the components."""
        return jnp.sum(-0.5 * ((x - self.mean) / self.std) ** 2 - jnp.log(self.std) - 0.5 * jnp.log(2 * jnp.pi), -1)

    def entropy(self):
        """[...], summed over the components."""
        return jnp.sum(0.5 * jnp.log(2 * jnp.pi * jnp.e) + jnp.log(self.std), -1)

    def mode(self):
        return self.mean


def action_head_size(config: Config, num_actions: int, continuous: bool) -> int:
    """The actor's outputs: one logit per discrete action, or two parameters per continuous component."""
    return 2 * num_actions if continuous else num_actions


def policy_head(config: Config, continuous: bool):
    """The policy as a function of actor outputs [..., action_head_size] and an unimix amount: a Categorical (with
    that unimix) for discrete actions, the `continuous_actor` distribution over [-1, 1]^A for continuous ones."""
    if not continuous:
        return Categorical.from_logits
    if config.continuous_actor == "bounded_normal":
        return lambda out, unimix=None: BoundedNormal.from_params(out)
    return lambda out, unimix=None: TruncatedNormal.from_params(out, config.actor_min_std)


def action_distribution(config: Config, out, continuous: bool, unimix=None):
    """The policy from actor outputs (policy_head), with `unimix`, default the config's actor_unimix."""
    return policy_head(config, continuous)(out, config.actor_unimix if unimix is None else unimix)


def actor_gradient(config: Config, continuous: bool) -> str:
    """The actor's gradient estimator: the config's `actor_gradient`, with "auto" resolved to what DreamerV2 and
    the 2023 DreamerV3 use: REINFORCE for discrete actions, backpropagation through the dynamics for continuous
    ones (either policy). DreamerV3's later release uses REINFORCE for both: `actor_gradient` reinforce."""
    if config.actor_gradient != "auto":
        return config.actor_gradient
    return "dynamics" if continuous else "reinforce"


# ---------------------------------------------------------------------------------------------
# DreamerV3's symlog space: targets of any scale are predicted on a compressed scale.


def symlog(x):
    """sign(x) log(1 + |x|): close to x near 0, logarithmic for large |x|."""
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x):
    """The inverse of symlog: sign(x) (exp(|x|) - 1)."""
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


TWOHOT_LIMIT = 20.0  # the bins are evenly spaced on [-20, 20] in symlog space (DreamerV3, 2023)


def twohot_bins(num_bins: int) -> np.ndarray:
    return np.linspace(-TWOHOT_LIMIT, TWOHOT_LIMIT, num_bins, dtype=np.float32)


def twohot(x, bins):
    """Two-hot encoding [..., K] of x [...] over evenly spaced bins [K]: the two bins around x share weight 1 in
    proportion to their closeness, so that sum(encoding * bins) = x for x within the bins' range (x outside
    it goes all to the nearest end bin). Written as the triangle max(0, 1 - |position - k|) at every bin k,
    elementwise, without a search for the bins."""
    bins = np.asarray(bins)
    position = jnp.clip((x - bins[0]) / (bins[1] - bins[0]), 0, bins.shape[0] - 1)  # [...] in units of bins
    return twohot_at(position, bins.shape[0])


def twohot_at(position, num_bins: int):
    """The two-hot encoding [..., K] of a fractional bin index [...] in [0, K - 1]."""
    return jax.nn.relu(1.0 - jnp.abs(position[..., None] - np.arange(num_bins, dtype=np.float32)))


class TwoHotSymlog(NamedTuple):
    """A scalar predicted as a categorical over bins in symlog space (DreamerV3's reward and critic heads): the
    prediction is symexp of the expected bin, the log-likelihood of a target the cross-entropy with the two-hot
    encoding of its symlog. Gradients do not grow with the target's scale."""

    logits: jax.Array  # [..., K]

    @property
    def mean(self):
        """symexp(E[bin]) [...]."""
        bins = twohot_bins(self.logits.shape[-1])
        return symexp(jax.nn.softmax(self.logits, -1) @ bins)

    def log_prob(self, x):
        """[...] for targets x [...]."""
        target = twohot(symlog(x), twohot_bins(self.logits.shape[-1]))
        return jnp.sum(target * jax.nn.log_softmax(self.logits, -1), -1)

    def loss(self, target):
        """The negative log-likelihood of `target` [...]."""
        return -self.log_prob(target)

    def mode(self):
        return self.mean


def symexp_bins(num_bins: int) -> np.ndarray:
    """The same bins mapped through symexp (DreamerV3's later release): dense near 0, sparse for large |x|."""
    return np.asarray(symexp(twohot_bins(num_bins)), np.float32)


class TwoHotSymexp(NamedTuple):
    """A scalar predicted as a categorical over symexp-spaced bins in raw values (DreamerV3's later release):
    the prediction is the expected bin, the log-likelihood of a target the cross-entropy with its two-hot
    encoding in raw values. Unlike TwoHotSymlog's symexp of an expected symlog, the prediction is the mean of
    the predicted distribution, so a target that varies from sample to sample is not underestimated."""

    logits: jax.Array  # [..., K]

    @property
    def mean(self):
        """E[bin] [...], summed over symmetric pairs of bins, p_i - p_(K-1-i) times b_i, so that equal
        probabilities (zero logits) predict exactly 0."""
        bins = symexp_bins(self.logits.shape[-1])
        probs = jax.nn.softmax(self.logits, -1)
        half = bins.shape[0] // 2  # bins above 0: the last `half`; bin K-1-i holds -b_i
        return (probs[..., -half:] - probs[..., :half][..., ::-1]) @ bins[-half:]

    def log_prob(self, x):
        """[...] for targets x [...]."""
        bins = symexp_bins(self.logits.shape[-1])
        position = jnp.interp(x, bins, np.arange(bins.shape[0], dtype=np.float32))  # [...] in units of bins
        target = twohot_at(position, bins.shape[0])
        return jnp.sum(target * jax.nn.log_softmax(self.logits, -1), -1)

    def loss(self, target):
        """The negative log-likelihood of `target` [...]."""
        return -self.log_prob(target)

    def mode(self):
        return self.mean


class SymlogSquared(NamedTuple):
    """DreamerV3's vector decoder: the prediction lives in symlog space and is scored by squared error there
    (a log-likelihood up to a constant, negated); `mode` maps it back to observation space."""

    prediction: jax.Array  # [...] in symlog space

    def log_prob(self, x):
        """-(prediction - symlog(x))^2 [...], elementwise."""
        return -((self.prediction - symlog(x)) ** 2)

    def loss(self, target):
        """The squared error in symlog space [...], elementwise."""
        return -self.log_prob(target)

    def mode(self):
        return symexp(self.prediction)


class PixelSquared(NamedTuple):
    """DreamerV3's image decoder for uint8 frames: the prediction lives in [-0.5, 0.5] (a pixel / 255 - 0.5) and
    is scored by squared error there (a log-likelihood up to a constant, negated); `mode` maps it back to 0-255."""

    prediction: jax.Array  # [...] in [-0.5, 0.5]

    def log_prob(self, x):
        """-(prediction - (x / 255 - 0.5))^2 [...], elementwise; x in 0-255."""
        return -((self.prediction - (x / 255.0 - 0.5)) ** 2)

    def loss(self, target):
        """The squared error in [-0.5, 0.5] [...], elementwise."""
        return -self.log_prob(target)

    def mode(self):
        return jnp.clip((self.prediction + 0.5) * 255.0, 0.0, 255.0)


def observation_distribution(config: Config, decoded):
    """The observation likelihood of decoder outputs [..., *obs] (elementwise): Bernoulli for binary frames,
    else squared error in symlog space (`symlog_observations`) or a unit-variance Gaussian."""
    if config.binary_state:
        return Bernoulli(decoded)
    return SymlogSquared(decoded) if config.symlog_observations else Normal(decoded)


def reward_head_size(config: Config) -> int:
    return config.twohot_bins if config.twohot_reward else 2


def reward_head(config: Config):
    """The reward head's distribution, as a function of its outputs [..., reward_head_size]: two-hot bins, or a
    Gaussian (mean, and a log std used where `learn_reward_variance`, else unit variance)."""
    if config.twohot_reward:
        return TwoHotSymexp if config.twohot_space == "raw" else TwoHotSymlog
    if config.learn_reward_variance:
        return lambda out: Normal(out[..., 0], out[..., 1])
    return lambda out: Normal(out[..., 0], 0.0)


def reward_distribution(config: Config, out):
    """The reward head's distribution from its outputs [..., reward_head_size] (reward_head)."""
    return reward_head(config)(out)


def value_head_size(config: Config) -> int:
    return config.twohot_bins if config.twohot_critic else 1


class MeanSquared(NamedTuple):
    """A scalar prediction [...] scored by half its squared error (the critic's regression without two-hot
    bins: a unit-variance Gaussian's negative log-likelihood less its constant)."""

    mean: jax.Array

    def loss(self, target):
        return 0.5 * (self.mean - target) ** 2

    def mode(self):
        return self.mean


def value_head(config: Config):
    """The critic's distribution, as a function of its outputs [..., value_head_size]: two-hot bins, or a mean
    scored by squared error (MeanSquared)."""
    if config.twohot_critic:
        return TwoHotSymexp if config.twohot_space == "raw" else TwoHotSymlog
    return lambda out: MeanSquared(out[..., 0])


def value_distribution(config: Config, out):
    """The critic's distribution from its outputs [..., value_head_size] (value_head)."""
    return value_head(config)(out)


class Heads(NamedTuple):
    """The distributions the agent's networks output, chosen from the config once when the agent is made: each
    a function of a network's outputs (policy: of the actor's outputs and the unimix amount, which a sweep may
    set), each distribution owning its `loss(target)`."""

    latents: CategoricalLatents | GaussianLatents
    reward: Callable  # reward head outputs [..., R] -> distribution over the reward [...]
    value: Callable  # critic outputs [..., V] -> distribution over the return [...]
    policy: Callable  # (actor outputs [..., action_head_size], unimix) -> distribution over actions
    continuous: bool  # whether the actions are vectors [A] in [-1, 1] (else integers [])


def make_heads(config: Config, continuous: bool) -> Heads:
    return Heads(latents(config), reward_head(config), value_head(config), policy_head(config, continuous),
                 continuous)
