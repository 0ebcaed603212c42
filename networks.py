"""Haiku networks of the DreamerV2 agent: encoder/decoder, RSSM pieces, reward and termination heads,
actor and critic, plus the latent distributions (categorical with straight-through, or diagonal Gaussian)."""

import math
from functools import partial
from typing import Callable, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from config import Config


@jax.custom_vjp
def elu(x):
    """jax.nn.elu whose gradient is computed from its output: the slope is 1 where the output is positive and
    exp(x) = output + 1 elsewhere. The backward pass then keeps no residual but the output every consumer
    reads anyway, and XLA:CPU emits one small kernel for it instead of the several of the safe-`where` JVP.

    exp(x) - 1 rather than expm1(x): XLA:CPU's expm1 runs at 2/3 of exp's speed, and the activations of the
    decoder and encoder made it about 4% of a training update (bench/README.md, "Cheaper elementwise kernels,
    and gathered rows summed in cache"). For x < 0 the two differ by about 1e-7 at most, exp's float32 rounding
    near 1."""
    return jnp.where(x > 0, x, jnp.exp(jnp.minimum(x, 0)) - 1)


def _elu_fwd(x):
    y = elu(x)
    return y, y


def _elu_bwd(y, g):
    return (g * jnp.where(y > 0, 1, y + 1),)


elu.defvjp(_elu_fwd, _elu_bwd)


ACTIVATIONS: dict[str, Callable] = {
    "elu": elu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
}


GATHER_BLOCK_ROWS = 50  # output rows `_one_hot_block_product` sums its gathered weight rows into at once


def _one_hot_block_product(x, w, block: tuple[int, int, int]):
    """x [M, D] @ w [D, O] where x[:, start:start + groups*width] holds `groups` vectors of `width` entries with
    at most one non-zero entry each (one-hot latent samples, straight-through or not): that block is multiplied
    by gathering and scaling one weight row per vector instead of by a matmul over all its columns."""
    start, groups, width = block
    stop = start + groups * width
    rest = jnp.concatenate([x[:, :start], x[:, stop:]], -1)
    out = rest @ jnp.concatenate([w[:start], w[stop:]], 0)
    one_hot = x[:, start:stop].reshape(-1, groups, width)
    # The non-zero entry's index and value [M, G] (0 and 0 where there is none), as plain sums: with at most one
    # non-zero entry a vector's sum is that entry exactly, and XLA:CPU runs argmax's variadic reduce ~10x slower.
    index = jnp.sum(jnp.where(one_hot != 0, jnp.arange(width), 0), -1) + jnp.arange(groups) * width  # row of w[start:]
    value = jnp.sum(one_hot, -1)
    rows = w[start:stop]  # [G * W, O]

    def gathered(index, value):  # [R, G] -> [R, O]: the sum of each row's G scaled weight rows
        return sum(value[:, g, None] * rows[index[:, g]] for g in range(groups))

    # One block of rows at a time, all G weight rows summed into it while it is in cache: summing vector by
    # vector over all M rows reads and writes the whole [M, O] output G times (memory-bound: the decoder's
    # 2,500 x 6,400 output), and an unrolled sum outside a loop is fused into each consumer of the layer's output
    # (the decoder's conv taps, the activation's gradient) and recomputed there (bench/README.md, "One-hot
    # latents multiplied by gathering weight rows" and "... gathered rows summed in cache").
    size, blocks = GATHER_BLOCK_ROWS, x.shape[0] // GATHER_BLOCK_ROWS

    def add_block(i, out):
        rows_at = lambda a: jax.lax.dynamic_slice_in_dim(a, i * size, size, 0)
        return jax.lax.dynamic_update_slice_in_dim(
            out, rows_at(out) + gathered(rows_at(index), rows_at(value)), i * size, 0)

    if blocks:
        out = jax.lax.fori_loop(0, blocks, add_block, out)
    if blocks * size < x.shape[0]:  # the rows left over
        done = blocks * size
        out = out.at[done:].add(gathered(index[done:], value[done:]))
    return out


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def one_hot_block_matmul(x, w, block: tuple[int, int, int]):
    """x [..., D] @ w [D, O], where block = (start, groups, width) says that x[..., start:start + groups*width]
    holds `groups` vectors of `width` entries with at most one non-zero entry each. The forward pass gathers
    weight rows for that block (for the 32x32 categorical latent an update runs 12-15% faster on CPU than
    with dense matmuls, see bench/README.md); the gradients are the dense matmul's."""
    return _one_hot_block_product(x.reshape(-1, x.shape[-1]), w, block).reshape(*x.shape[:-1], w.shape[1])


def _one_hot_block_matmul_fwd(x, w, block):
    return one_hot_block_matmul(x, w, block), (x, w)


def _one_hot_block_matmul_bwd(block, residuals, out_grad):
    x, w = residuals
    flat_x, flat_grad = x.reshape(-1, x.shape[-1]), out_grad.reshape(-1, out_grad.shape[-1])
    return (out_grad @ w.T).astype(x.dtype), (flat_x.T @ flat_grad).astype(w.dtype)


one_hot_block_matmul.defvjp(_one_hot_block_matmul_fwd, _one_hot_block_matmul_bwd)


GATHER_MIN_ROWS = 64  # below this many input rows `Linear` multiplies a one-hot block densely


class Linear(hk.Linear):
    """hk.Linear (same parameters, names and initialisation) told where its input holds one-hot vectors:
    `one_hot_block` = (start, groups, width) as in `one_hot_block_matmul`, or None for a plain hk.Linear.

    The gathering form is used on CPU only, where it was measured, and for inputs of at least
    `GATHER_MIN_ROWS` rows. On an accelerator the dense matmul stays: matmuls are cheap there, and the gathering
    loop would add a loop of small kernels to each such layer. The dense matmul also stays for fewer rows
    (acting's one row, the posterior scan's batch of rows per step): it takes microseconds there, and the loop's
    kernels would only add compile time (bench/README.md, "Fewer kernels")."""

    def __init__(self, output_size: int, one_hot_block: tuple[int, int, int] | None = None, name=None):
        super().__init__(output_size, name=name)
        self.one_hot_block = one_hot_block

    def __call__(self, inputs, *, precision=None):
        rows = int(np.prod(inputs.shape[:-1]))
        if self.one_hot_block is None or jax.default_backend() != "cpu" or rows < GATHER_MIN_ROWS:
            return super().__call__(inputs, precision=precision)
        # hk.Linear's parameters, created as it creates them; only the product differs
        self.input_size = inputs.shape[-1]
        w_init = self.w_init or hk.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(self.input_size))
        w = hk.get_parameter("w", [self.input_size, self.output_size], inputs.dtype, init=w_init)
        b = hk.get_parameter("b", [self.output_size], inputs.dtype, init=self.b_init)
        return one_hot_block_matmul(inputs, w, self.one_hot_block) + b


class MLP(hk.Module):
    """`num_layers` hidden layers of `width` units, then an optional linear output layer. `one_hot_block`
    describes one-hot vectors in the input (see `Linear`)."""

    def __init__(self, width: int, num_layers: int, activation: str, output_size: int | None = None,
                 one_hot_block: tuple[int, int, int] | None = None, name=None):
        super().__init__(name=name)
        self.width, self.num_layers, self.output_size = width, num_layers, output_size
        self.activation = ACTIVATIONS[activation]
        self.one_hot_block = one_hot_block

    def __call__(self, x):
        # [..., D] runs as rows [N, D]: XLA:CPU splits a bias-add and activation on the matmul's reshaped
        # output into two kernels per layer (bench/README.md, "Fewer kernels")
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        block = self.one_hot_block
        for _ in range(self.num_layers):
            x = self.activation(Linear(self.width, block)(x))
            block = None
        if self.output_size is not None:
            x = Linear(self.output_size, block)(x)
        return x.reshape(*lead, x.shape[-1])


WEIGHT_GRAD_CHUNKS = 10  # row chunks of `pixel_matmul`'s weight gradient (a divisor of the rows is taken)


@jax.custom_vjp
def _chunked_weight_grad_matmul(x, w):
    return x @ w


def _chunked_weight_grad_matmul_fwd(x, w):
    return _chunked_weight_grad_matmul(x, w), (x, w)


def _chunked_weight_grad_matmul_bwd(residuals, g):
    x, w = residuals
    chunks = math.gcd(x.shape[0], WEIGHT_GRAD_CHUNKS)
    # [chunks, F, K]: each chunk's g^T x, summed, then transposed to [K, F]
    w_grad_t = jnp.einsum("cmk,cmf->cfk", x.reshape(chunks, -1, x.shape[1]), g.reshape(chunks, -1, g.shape[1]))
    return (g @ w.T).astype(x.dtype), jnp.sum(w_grad_t, 0).T.astype(w.dtype)


_chunked_weight_grad_matmul.defvjp(_chunked_weight_grad_matmul_fwd, _chunked_weight_grad_matmul_bwd)


def pixel_matmul(x, w):
    """x [M, K] @ w [K, F] for a conv layer: M = N*H*W pixel rows (250,000 on the reference config), a few dozen
    to a few hundred columns. The weight gradient x^T g contracts over all M rows, and XLA:CPU runs that product
    at 60-110 GFLOP/s, after copying g transposed; on CPU it is taken as `WEIGHT_GRAD_CHUNKS` products over
    chunks of rows, each giving g^T x, summed: the same sum in another order, up to float32 rounding, and a
    layer's forward and backward pass take up to 30% less time (bench/README.md, "Conv gradients: row shifts
    stacked, weight gradients in chunks"). Other backends differentiate the plain matmul."""
    if jax.default_backend() != "cpu":
        return x @ w
    return _chunked_weight_grad_matmul(x, w)


def _rows_down(a):
    """[N, H, ...] -> a moved down one image row (axis 1): a zero row enters at the top, the last row leaves."""
    return jnp.concatenate([jnp.zeros_like(a[:, :1]), a[:, :-1]], 1)


def _rows_up(a):
    """[N, H, ...] -> a moved up one image row (axis 1): a zero row enters at the bottom, the first row leaves."""
    return jnp.concatenate([a[:, 1:], jnp.zeros_like(a[:, :1])], 1)


@jax.custom_vjp
def kernel_rows_sum(rows):
    """rows [N, H, W, 3, F] (each pixel's output under kernel rows 0, 1, 2) -> [N, H, W, F]: row 0's output moved
    down one image row, row 2's up one, zero rows entering at the edges, and the three added. Its gradient is
    the output gradient and its two shifts stacked in one array; differentiated as written, XLA:CPU pads each
    shifted slice back to [N, H, W, 3, F] and adds the three (bench/README.md, "Conv gradients: row shifts
    stacked, weight gradients in chunks")."""
    # kernel row 0 reads the image row above, row 2 the one below
    return _rows_down(rows[:, :, :, 0]) + rows[:, :, :, 1] + _rows_up(rows[:, :, :, 2])


def _kernel_rows_sum_fwd(rows):
    return kernel_rows_sum(rows), None


def _kernel_rows_sum_bwd(_, g):  # the forward pass's shifts reversed
    return (jnp.stack([_rows_up(g), g, _rows_down(g)], 3),)


kernel_rows_sum.defvjp(_kernel_rows_sum_fwd, _kernel_rows_sum_bwd)


class Conv3x3(hk.Module):
    """A 3x3, stride-1, SAME-padded convolution written with one matmul and no convolution op.

    Same maths and parameter layout as hk.Conv2D(filters, 3, padding="SAME"), but XLA:CPU runs a convolution
    op inside a scan/cond body tens of times slower than outside it, while a matmul runs at full speed (see
    bench/README.md). Two forms, each the faster one where it is used (measured inside the update):
    - more outputs than inputs (the encoder): the nine shifted views concatenated (9C values a pixel) times the
      kernel ([9C, F]);
    - fewer outputs than inputs (the decoder): each pixel's three horizontal taps (3C values, the image padded by a
      column on each side) times the three kernel rows at once ([3C, 3F]); kernel row 0's output is moved down
      one image row, row 2's up one, and the three are added, with zero rows entering at the edges. Nothing is
      computed for rows of vertical padding, and the backward pass adds no padded copies (bench/README.md,
      "Decoder convolutions without vertical padding").
    Both matmuls are `pixel_matmul`s, whose weight gradient is summed over chunks of pixels."""

    def __init__(self, filters: int, name=None):
        super().__init__(name=name)
        self.filters = filters

    def __call__(self, x):  # [N, H, W, C] -> [N, H, W, filters]
        channels, f = x.shape[-1], self.filters
        w_init = hk.initializers.VarianceScaling(1.0, "fan_avg", "truncated_normal")
        w = hk.get_parameter("w", (3, 3, channels, f), x.dtype, init=w_init)  # [kernel row, kernel column, C, F]
        b = hk.get_parameter("b", (f,), x.dtype, init=jnp.zeros)
        height, width = x.shape[1:3]
        if channels <= f:  # more outputs than inputs (the encoder): the 9C patches and one matmul
            padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # [N, H+2, W+2, C]
            patches = jnp.concatenate([padded[:, i:i + height, j:j + width] for i in range(3) for j in range(3)], -1)
            out = pixel_matmul(patches.reshape(-1, 9 * channels), w.reshape(9 * channels, f))
            return out.reshape(*x.shape[:3], f) + b  # [N, H, W, 9C] @ [9C, F]
        padded = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))  # [N, H, W+2, C]: horizontal padding only
        taps = jnp.concatenate([padded[:, :, j:j + width] for j in range(3)], -1)  # [N, H, W, 3C]
        kernels = w.transpose(1, 2, 0, 3).reshape(3 * channels, 3 * f)  # [(column, C), (row, F)]
        rows = pixel_matmul(taps.reshape(-1, 3 * channels), kernels)  # [N*H*W, (kernel row, F)]
        return kernel_rows_sum(rows.reshape(*x.shape[:3], 3, f)) + b


def _as_image(obs_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """HWC shape the conv layers see: a 2-D observation gets one channel."""
    return tuple(obs_shape) if len(obs_shape) == 3 else (*obs_shape, 1)


def uses_conv(config: Config, obs_shape: tuple[int, ...]) -> bool:
    return not config.no_conv and len(obs_shape) in (2, 3)


def encoder_output_size(config: Config, obs_shape: tuple[int, ...]) -> int:
    if not uses_conv(config, obs_shape):
        return config.num_hidden_units
    height, width, _ = _as_image(obs_shape)
    return height * width * config.num_conv_filters * 2 ** (config.conv_depth - 1)


class Encoder(hk.Module):
    """Observation [..., *obs_shape] (float) -> embedding [..., E], E = encoder_output_size."""

    def __init__(self, config: Config, obs_shape: tuple[int, ...], name=None):
        super().__init__(name=name)
        self.config, self.obs_shape = config, tuple(obs_shape)

    def __call__(self, obs):
        c = self.config
        lead = obs.shape[: obs.ndim - len(self.obs_shape)]
        if not uses_conv(c, self.obs_shape):
            x = obs.reshape(*lead, -1)
            return MLP(c.num_hidden_units, c.num_hidden_layers, c.activation)(x)
        act = ACTIVATIONS[c.activation]
        x = obs.reshape(-1, *_as_image(self.obs_shape))  # [N, H, W, C]
        for i in range(c.conv_depth):
            x = act(Conv3x3(c.num_conv_filters * 2**i)(x))
        return x.reshape(*lead, -1)


class Decoder(hk.Module):
    """Model feature [..., D] -> observation logits (binary) or means [..., *obs_shape]."""

    def __init__(self, config: Config, obs_shape: tuple[int, ...], name=None):
        super().__init__(name=name)
        self.config, self.obs_shape = config, tuple(obs_shape)

    def __call__(self, feat):
        c = self.config
        lead = feat.shape[:-1]
        if not uses_conv(c, self.obs_shape):
            x = MLP(c.num_hidden_units, c.num_hidden_layers, c.activation, int(np.prod(self.obs_shape)),
                    feature_one_hot_block(c, c.num_hidden_units))(feat)
            return x.reshape(*lead, *self.obs_shape)
        act = ACTIVATIONS[c.activation]
        height, width, channels = _as_image(self.obs_shape)
        top = c.num_conv_filters * 2 ** (c.conv_depth - 1)
        x = act(Linear(height * width * top, feature_one_hot_block(c, c.num_hidden_units))(
            feat.reshape(-1, feat.shape[-1])))
        x = x.reshape(-1, height, width, top)  # [N, H, W, top]
        for i in reversed(range(c.conv_depth - 1)):
            x = act(Conv3x3(c.num_conv_filters * 2**i)(x))
        x = Conv3x3(channels)(x)
        return x.reshape(*lead, *self.obs_shape)


# ---------------------------------------------------------------------------------------------
# Latent distributions. Categorical parameters are logits [..., F, W]; samples are one-hot,
# flattened to [..., F*W]. Gaussian parameters are [..., 2F] (mean, raw std); samples [..., F].


def latent_param_size(config: Config) -> int:
    if config.latent_type == "categorical":
        return config.num_features * config.feature_width
    return 2 * config.num_features


def latent_size(config: Config) -> int:
    if config.latent_type == "categorical":
        return config.num_features * config.feature_width
    return config.num_features


def feature_one_hot_block(config: Config, start: int) -> tuple[int, int, int] | None:
    """Where a categorical latent sample sits in a layer's input that starts with it at column `start`:
    (start, num_features, feature_width) for `Linear`'s one-hot block; None for Gaussian latents."""
    if config.latent_type == "categorical":
        return start, config.num_features, config.feature_width
    return None


def _categorical_logits(config: Config, params):
    logits = params.reshape(*params.shape[:-1], config.num_features, config.feature_width)
    return jax.nn.log_softmax(logits, axis=-1)


def _gaussian(params):
    mean, raw_std = jnp.split(params, 2, axis=-1)
    return mean, jax.nn.softplus(raw_std) + 0.1


def _inverse_cdf_sample(u, probs):
    """Class indices [...] drawn from probs [..., W] with one uniform number u [..., 1] per categorical variable.

    The same distribution as Gumbel-max (jax.random.categorical), which needs W random numbers per variable:
    generating 32x32 Gumbel noises for 2,500 imagined states took ~10% of a training update on CPU. The CDF is
    a tiny matmul with a triangular matrix (faster than cumsum on XLA:CPU)."""
    width = probs.shape[-1]
    cdf = probs @ np.triu(np.ones((width, width), np.float32)).astype(probs.dtype)  # [..., W], cdf[..., -1] ~= 1
    return jnp.minimum(jnp.sum(cdf < u * cdf[..., -1:], -1), width - 1)


def policy_logits(config: Config, logits):
    """The discrete policy's logits [..., A] after mixing `actor_unimix` of the uniform distribution into its
    probabilities: log((1 - u) softmax(logits) + u / A). With u = 0 the logits are returned as they are."""
    u = config.actor_unimix
    if not isinstance(u, jax.Array) and u == 0:  # a swept value is an array: mixed even where it is 0
        return logits
    return jnp.log((1.0 - u) * jax.nn.softmax(logits, -1) + u / logits.shape[-1])


def categorical_from_uniform(u, logits):
    """Class indices [...] drawn from softmax(logits [..., W]) with uniforms u [..., 1] (see `_inverse_cdf_sample`)."""
    return _inverse_cdf_sample(u, jax.nn.softmax(logits, -1))


def latent_noise(config: Config, key, batch_shape: tuple):
    """The random numbers of one latent sample per entry of `batch_shape`, for `sample_latent_from_noise`:
    uniforms [*batch_shape, F, 1] for categoricals, standard normals [*batch_shape, F] for Gaussians.

    A scan over time takes its steps' noise as an input, drawn at once before it: on CPU each separate draw
    compiles to a loop of about ten kernels, and a draw inside a scan body costs a key split per step too."""
    if config.latent_type == "categorical":
        return jax.random.uniform(key, (*batch_shape, config.num_features, 1))
    return jax.random.normal(key, (*batch_shape, config.num_features))


def sample_latent_from_noise(config: Config, noise, params):
    """A latent sample with gradients to `params`: straight-through for categoricals, reparameterised for
    Gaussians. `noise` is drawn by `latent_noise` for params.shape[:-1]."""
    if config.latent_type == "categorical":
        probs = jnp.exp(_categorical_logits(config, params))  # [..., F, W]
        one_hot = jax.nn.one_hot(_inverse_cdf_sample(noise, probs), config.feature_width, dtype=probs.dtype)
        sample = one_hot + probs - jax.lax.stop_gradient(probs)
        return sample.reshape(*sample.shape[:-2], -1)
    mean, std = _gaussian(params)
    return mean + std * noise


def latent_kl(config: Config, params_p, params_q):
    """KL(p || q) summed over latent variables: [...]."""
    if config.latent_type == "categorical":
        log_p, log_q = _categorical_logits(config, params_p), _categorical_logits(config, params_q)
        return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=(-2, -1))
    mean_p, std_p = _gaussian(params_p)
    mean_q, std_q = _gaussian(params_q)
    kl = jnp.log(std_q / std_p) + (std_p**2 + (mean_p - mean_q) ** 2) / (2 * std_q**2) - 0.5
    return jnp.sum(kl, axis=-1)


def latent_entropy(config: Config, params):
    """Entropy summed over latent variables: [...]."""
    if config.latent_type == "categorical":
        log_p = _categorical_logits(config, params)
        return -jnp.sum(jnp.exp(log_p) * log_p, axis=(-2, -1))
    _, std = _gaussian(params)
    return jnp.sum(0.5 * jnp.log(2 * jnp.pi * jnp.e * std**2), axis=-1)


def latent_kl_to_standard_normal(config: Config, params):
    """KL(posterior || N(0, I)) for Gaussian latents: [...]."""
    mean, std = _gaussian(params)
    return jnp.sum(0.5 * (std**2 + mean**2 - 1.0) - jnp.log(std), axis=-1)


# ---------------------------------------------------------------------------------------------


class WorldModel(NamedTuple):
    """Pure functions of the world-model parameters (haiku `multi_transform`, no apply rng).

    embed(params, obs [..., *obs]) -> [..., U]: the encoder's output already multiplied by its share of the
        posterior's first layer (U = num_hidden_units), so a sequence's embeddings go through that layer in
        one batched matmul outside the posterior's scan
    prior(params, h [..., H]) -> latent params [..., P]
    posterior(params, h [..., H], embed [..., U]) -> latent params [..., P]
    transition(params, h [..., H], z [..., Z], action [...] int) -> next h [..., H]
    decode(params, feat [..., H+Z]) -> observation logits/means [..., *obs]
    reward(params, h [..., H]) -> [..., 2] (mean, log std; log std ignored unless learned)
    termination(params, h [..., H]) -> termination logit [...]
    A categorical z must be a sample (at most one non-zero entry per latent variable, as
    `sample_latent_from_noise` returns): the layers reading it multiply it by gathering weight rows (`Linear`).
    """

    init: Callable
    embed: Callable
    prior: Callable
    posterior: Callable
    transition: Callable
    decode: Callable
    reward: Callable
    termination: Callable


def make_world_model(config: Config, obs_shape: tuple[int, ...], num_actions: int) -> WorldModel:
    c = config

    def build():
        encoder = Encoder(c, obs_shape, name="encoder")
        decoder = Decoder(c, obs_shape, name="decoder")
        gru = hk.GRU(c.num_hidden_units, name="gru")
        transition_input = MLP(c.num_hidden_units, 1, c.activation, one_hot_block=feature_one_hot_block(c, 0),
                               name="transition_input")
        prior_net = MLP(c.num_hidden_units, c.num_hidden_layers, c.activation, latent_param_size(c), name="prior")
        posterior_net = MLP(c.num_hidden_units, c.num_hidden_layers - 1, c.activation, latent_param_size(c),
                            name="posterior")
        # The posterior's first layer reads [h, encoder output]; its two blocks of rows are separate layers
        # (initialised as the one layer over H + E inputs would be) so the encoder's block runs batched.
        first_init = hk.initializers.TruncatedNormal(
            1.0 / np.sqrt(c.num_hidden_units + encoder_output_size(c, obs_shape)))
        posterior_h = hk.Linear(c.num_hidden_units, w_init=first_init, name="posterior_h")
        posterior_embed = hk.Linear(c.num_hidden_units, with_bias=False, w_init=first_init, name="posterior_embed")
        reward_net = MLP(c.num_hidden_units, c.num_hidden_layers, c.activation, 2, name="reward")
        termination_net = MLP(c.num_hidden_units, c.num_hidden_layers, c.activation, 1, name="termination")

        def transition(h, z, action):
            x = transition_input(jnp.concatenate([z, jax.nn.one_hot(action, num_actions, dtype=z.dtype)], -1))
            _, next_h = gru(x, h)
            return next_h

        def embed(obs):
            return posterior_embed(encoder(obs))

        def posterior(h, embed):
            return posterior_net(ACTIVATIONS[c.activation](posterior_h(h) + embed))

        def termination(h):
            return termination_net(h)[..., 0]

        def init(obs, h, z, action):
            posterior(h, embed(obs))
            decoder(jnp.concatenate([h, z], -1))
            next_h = transition(h, z, action)
            return prior_net(next_h), reward_net(next_h), termination(next_h)

        return init, (embed, prior_net, posterior, transition, decoder, reward_net, termination)

    model = hk.without_apply_rng(hk.multi_transform(build))
    return WorldModel(model.init, *model.apply)


def make_actor_critic(config: Config, num_actions: int):
    """(actor, critic) haiku transforms: feature [..., H+Z] -> action logits [..., A] / value [...]. A categorical
    latent in the features must be a sample, as in `WorldModel`."""
    c = config
    mlp = lambda output_size, name: MLP(c.num_hidden_units, c.num_hidden_layers, c.activation, output_size,
                                        feature_one_hot_block(c, c.num_hidden_units), name=name)  # features [h, z]
    actor = hk.without_apply_rng(hk.transform(lambda feat: mlp(num_actions, "actor")(feat)))
    critic = hk.without_apply_rng(hk.transform(lambda feat: mlp(1, "critic")(feat)[..., 0]))
    return actor, critic
