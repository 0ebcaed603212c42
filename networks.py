"""Haiku networks of the DreamerV2 agent: encoder and decoder, the RSSM (GRU transition, prior and posterior over
the latent variables), reward and termination heads, actor and critic. The latent variables' distributions
are in agent/distributions.py, the CPU forms of a few operations in agent/kernels.py."""

import functools
from typing import Callable, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from agent import kernels
from agent.distributions import (
    PixelSquared,
    free_bits,
    latents,
    observation_distribution,
    reward_head_size,
    symlog,
    value_head_size,
)
from experiment.config import Config

ACTIVATIONS: dict[str, Callable] = {
    "elu": kernels.elu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
}


class Linear(hk.Linear):
    """hk.Linear (same parameters, names and initialisation) told where its input holds one-hot vectors:
    `one_hot_block` = (start, groups, width) as in `kernels.one_hot_matmul`, or None for a plain hk.Linear."""

    def __init__(self, output_size: int, one_hot_block: tuple[int, int, int] | None = None, with_bias: bool = True,
                 w_init=None, name=None):
        super().__init__(output_size, with_bias=with_bias, w_init=w_init, name=name)
        self.one_hot_block = one_hot_block

    def __call__(self, inputs, *, precision=None):
        if self.one_hot_block is None:
            return super().__call__(inputs, precision=precision)
        # hk.Linear's parameters, created as it creates them; only the product differs
        self.input_size = inputs.shape[-1]
        w_init = self.w_init or hk.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(self.input_size))
        w = hk.get_parameter("w", [self.input_size, self.output_size], inputs.dtype, init=w_init)
        out = kernels.one_hot_matmul(inputs, w, self.one_hot_block)
        if not self.with_bias:
            return out
        return out + hk.get_parameter("b", [self.output_size], inputs.dtype, init=self.b_init)


def layer_norm(x):
    """LayerNorm over the last axis with a learned scale and offset."""
    return hk.LayerNorm(-1, create_scale=True, create_offset=True)(x)


class MLP(hk.Module):
    """`num_layers` hidden layers of `width` units, then an optional linear output layer. `one_hot_block`
    describes one-hot vectors in the input (see `Linear`). With `norm`, each hidden layer is a bias-free linear
    map, LayerNorm, then the activation (DreamerV3); `zero_output` initialises the output layer to zero."""

    def __init__(self, width: int, num_layers: int, activation: str, output_size: int | None = None,
                 one_hot_block: tuple[int, int, int] | None = None, norm: bool = False, zero_output: bool = False,
                 name=None):
        super().__init__(name=name)
        self.width, self.num_layers, self.output_size = width, num_layers, output_size
        self.activation = ACTIVATIONS[activation]
        self.one_hot_block, self.norm, self.zero_output = one_hot_block, norm, zero_output

    def __call__(self, x):
        # [..., D] runs as rows [N, D]: XLA:CPU splits a bias-add and activation on the matmul's reshaped
        # output into two kernels per layer
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        block = self.one_hot_block
        for _ in range(self.num_layers):
            if self.norm:
                x = self.activation(layer_norm(Linear(self.width, block, with_bias=False)(x)))
            else:
                x = self.activation(Linear(self.width, block)(x))
            block = None
        if self.output_size is not None:
            x = Linear(self.output_size, block, w_init=jnp.zeros if self.zero_output else None)(x)
        return x.reshape(*lead, x.shape[-1])


class NormGRU(hk.Module):
    """DreamerV3's GRU: one bias-free linear map of [input, h] to the three gates, LayerNorm over them, and an
    update gate biased toward keeping h (sigmoid(u - 1)). (input [N, I], h [N, H]) -> next h [N, H]."""

    def __init__(self, hidden_size: int, name=None):
        super().__init__(name=name)
        self.hidden_size = hidden_size

    def __call__(self, inputs, h):
        gates = layer_norm(hk.Linear(3 * self.hidden_size, with_bias=False)(jnp.concatenate([inputs, h], -1)))
        reset, candidate, update = jnp.split(gates, 3, axis=-1)
        candidate = jnp.tanh(jax.nn.sigmoid(reset) * candidate)
        update = jax.nn.sigmoid(update - 1.0)
        return update * candidate + (1.0 - update) * h


class Conv3x3(hk.Module):
    """A 3x3, stride-1, SAME-padded convolution: [N, H, W, C] -> [N, H, W, filters], with the parameters of
    hk.Conv2D(filters, 3, padding="SAME") (kernels.conv3x3 computes it)."""

    def __init__(self, filters: int, name=None):
        super().__init__(name=name)
        self.filters = filters

    def __call__(self, x):
        w_init = hk.initializers.VarianceScaling(1.0, "fan_avg", "truncated_normal")
        w = hk.get_parameter("w", (3, 3, x.shape[-1], self.filters), x.dtype, init=w_init)  # [row, column, C, F]
        b = hk.get_parameter("b", (self.filters,), x.dtype, init=jnp.zeros)
        return kernels.conv3x3(x, w) + b


def _as_image(obs_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """HWC shape the conv layers see: a 2-D observation gets one channel."""
    return tuple(obs_shape) if len(obs_shape) == 3 else (*obs_shape, 1)


def uses_conv(config: Config, obs_shape: tuple[int, ...]) -> bool:
    return not config.no_conv and len(obs_shape) in (2, 3)


STRIDED_MIN_SIDE = 16  # image_network auto: frames with a smaller side take the small 3x3 stack
STRIDED_FINAL_SIDE = 4  # the strided encoder stops at a 4x4 map (DreamerV3's minres)
STRIDED_KERNEL = 4  # DreamerV2/V3: 4x4 kernels of stride 2


def strided_layout(obs_shape: tuple[int, ...]) -> tuple[int, int]:
    """(padded side, stride-2 stages) of the strided network for frames of `obs_shape` ([H, W] or [H, W, C]):
    a square frame is zero-padded at the bottom and right up to the next power of two (63x63 Craftax pixels to
    64x64), at most an eighth of its side, and halved down to 4x4. Raises ValueError, in one sentence, for a
    frame it cannot take."""
    height, width, _ = _as_image(obs_shape)
    side = 1 << max(height - 1, 1).bit_length()  # the next power of two
    if height != width or height < 8 or side - height > side // 8:
        raise ValueError(f"the strided image network takes square frames whose side is a power of two of at least 8 "
                         f"or up to an eighth below one (64x64, 63x63, 32x32, ...), got {height}x{width}; resize the "
                         f"frames or set image_network to small")
    return side, side.bit_length() - STRIDED_FINAL_SIDE.bit_length()


def image_network(config: Config, obs_shape: tuple[int, ...]) -> str | None:
    """Which network takes these observations: "strided", "small" (3x3 stride-1), or None (the MLP)."""
    if not uses_conv(config, obs_shape):
        return None
    if config.image_network != "auto":
        return config.image_network
    height, width, _ = _as_image(obs_shape)
    if min(height, width) < STRIDED_MIN_SIDE:
        return "small"
    try:
        strided_layout(obs_shape)
    except ValueError:
        return "small"
    return "strided"


def encoder_output_size(config: Config, obs_shape: tuple[int, ...]) -> int:
    network = image_network(config, obs_shape)
    if network is None:
        return config.num_hidden_units
    if network == "strided":
        _, stages = strided_layout(obs_shape)
        return STRIDED_FINAL_SIDE**2 * config.cnn_depth * 2 ** (stages - 1)
    height, width, _ = _as_image(obs_shape)
    return height * width * config.num_conv_filters * 2 ** (config.conv_depth - 1)


def pixel_frames(config: Config, obs_shape: tuple[int, ...], obs_dtype) -> bool:
    """Whether observations are uint8 pixel frames (0-255) taken by the strided network: it then reads and
    predicts them scaled to [-0.5, 0.5] (distributions.PixelSquared scores its predictions)."""
    return (image_network(config, obs_shape) == "strided" and np.dtype(obs_dtype) == np.uint8
            and not config.binary_state)


# XLA:CPU runs a convolution's gradients in the canonical layout (NHWC frames, HWIO kernel) it rewrites them to at
# the top level of a program, but not inside a loop body, where they fall back to a naive loop: in the training
# update inside the compiled block (a lax.scan), a 4x4 stride-2 layer's weight gradient took 18x its time outside.
# So the strided network's convolutions compute both gradients as those canonical convolutions themselves, with
# the same results (bench/results.md, "Convolutions inside the loop").
_CANONICAL = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv2d(x, w, strides: tuple, padding: tuple, lhs_dilation: tuple, kernel_spec: str):
    """lax.conv_general_dilated on NHWC frames with an HWIO or HWOI kernel (hk.Conv2D's and hk.Conv2DTranspose's
    layouts), whose gradients are canonical convolutions (conv2d_input_gradient, conv2d_weight_gradient)."""
    return jax.lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=lhs_dilation,
                                        dimension_numbers=("NHWC", kernel_spec, "NHWC"))


def _conv2d_forward(x, w, strides, padding, lhs_dilation, kernel_spec):
    return conv2d(x, w, strides, padding, lhs_dilation, kernel_spec), (x, w)


def _conv2d_backward(strides, padding, lhs_dilation, kernel_spec, residuals, dy):
    x, w = residuals
    hwio = w if kernel_spec == "HWIO" else w.transpose(0, 1, 3, 2)
    dx = conv2d_input_gradient(dy, hwio, x.shape[1:3], strides, padding, lhs_dilation)
    dw = conv2d_weight_gradient(x, dy, w.shape[:2], strides, padding, lhs_dilation)
    return dx, dw if kernel_spec == "HWIO" else dw.transpose(0, 1, 3, 2)


conv2d.defvjp(_conv2d_forward, _conv2d_backward)


def _dilated(size: int, dilation: int) -> int:
    return 0 if size == 0 else 1 + dilation * (size - 1)


def conv2d_input_gradient(dy, w, size: tuple, strides, padding, lhs_dilation):
    """dx [N, H, W, C] of a convolution of x [N, H, W, C] by w [kh, kw, C, O] (HWIO) giving dy [N, H', W', O]:
    dy convolved with w flipped in space and read O -> C, the roles of the strides and the input dilation
    swapped, as jax.lax's own transpose does, with the kernel laid out HWIO."""
    pads = []
    for n, k, s, d, (low, _), m in zip(size, w.shape[:2], strides, lhs_dilation, padding, dy.shape[1:3]):
        before = k - low - 1
        pads.append((before, _dilated(n, d) + k - 1 - _dilated(m, s) - before))
    flipped = w[::-1, ::-1].transpose(0, 1, 3, 2)  # [kh, kw, O, C]
    return jax.lax.conv_general_dilated(dy, flipped, lhs_dilation, pads, lhs_dilation=strides,
                                        dimension_numbers=_CANONICAL)


def conv2d_weight_gradient(x, dy, kernel: tuple, strides, padding, lhs_dilation):
    """dw[a, b, c, o] = sum over n, i, j of x~[n, s*i + a, s*j + b, c] * dy[n, i, j, o] (x~: x dilated and padded as
    the convolution did, s: its strides) -> [kh, kw, C, O]: one convolution in the canonical layout, the frames'
    channels as its batch and the frames as its features, the strides as its kernel's dilation."""
    channels_first = x.transpose(3, 1, 2, 0)  # [C, H, W, N]
    out_as_kernel = dy.transpose(1, 2, 0, 3)  # [H', W', N, O]
    dw = jax.lax.conv_general_dilated(channels_first, out_as_kernel, (1, 1), padding, lhs_dilation=lhs_dilation,
                                      rhs_dilation=strides, dimension_numbers=_CANONICAL)
    return dw[:, :kernel[0], :kernel[1]].transpose(1, 2, 0, 3)


class StridedConv(hk.Module):
    """hk.Conv2D(channels, 4, stride=2, padding="SAME") or, `transpose`d, hk.Conv2DTranspose with the same
    arguments: the same parameters (names, shapes, initialisation) and outputs, through conv2d; the transpose
    as four stride-1 convolutions (_transposed_by_phases)."""

    def __init__(self, channels: int, transpose: bool = False, with_bias: bool = True):
        super().__init__(name="conv2_d_transpose" if transpose else "conv2_d")
        self.channels, self.transpose, self.with_bias = channels, transpose, with_bias

    def __call__(self, x):
        kernel, stride = STRIDED_KERNEL, 2
        fan_in = kernel * kernel * x.shape[-1]
        shape = (kernel, kernel) + ((self.channels, x.shape[-1]) if self.transpose else (x.shape[-1], self.channels))
        w = hk.get_parameter("w", shape, x.dtype, init=hk.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(fan_in)))
        if self.transpose:
            out = _transposed_by_phases(x, w)
        else:
            out = conv2d(x, w, (stride, stride), _same_padding(x.shape[1:3], kernel, stride), (1, 1), "HWIO")
        if self.with_bias:
            out = out + hk.get_parameter("b", (self.channels,), x.dtype, init=jnp.zeros)
        return out


def _transposed_by_phases(x, w):
    """hk.Conv2DTranspose(O, 4, stride=2, padding="SAME") of x [N, H, W, I] with its kernel w [4, 4, O, I] ->
    [N, 2H, 2W, O], as four 2x2 stride-1 convolutions, one per output phase, interleaved. The transposed
    convolution convolves x dilated by 2 (three zeros in four) and padded by 2: output row 2m takes kernel rows
    0 and 2 at input rows m-1 and m, output row 2m+1 kernel rows 1 and 3 at input rows m and m+1 (columns
    alike). Computed so, it skips the products with the zeros: a quarter of the arithmetic."""
    phases = [[conv2d(x, w[a::2, b::2], (1, 1), ((1 - a, a), (1 - b, b)), (1, 1), "HWOI") for b in (0, 1)]
              for a in (0, 1)]  # [a][b]: [N, H, W, O], output pixels (2m + a, 2n + b)
    n, h, width, o = phases[0][0].shape
    stacked = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # [N, H, 2 (a), W, 2 (b), O]
    return stacked.reshape(n, 2 * h, 2 * width, o)


def _same_padding(size: tuple, kernel: int, stride: int) -> tuple:
    """lax's SAME padding of a strided convolution, per spatial axis: (before, after)."""
    pads = []
    for n in size:
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


class StridedEncoder(hk.Module):
    """DreamerV2/V3's image encoder: frames [N, H, W, C] (float) -> [N, 16 * depth * 2^(stages-1)].
    Each stage is a 4x4 convolution of stride 2 (SAME padding) that halves the frame and doubles the channels,
    from `depth`, down to 4x4 (strided_layout); then LayerNorm over the channels (with `norm`, and no bias) and
    the activation."""

    def __init__(self, depth: int, activation: str, norm: bool, name=None):
        super().__init__(name=name)
        self.depth, self.activation, self.norm = depth, ACTIVATIONS[activation], norm

    def __call__(self, frames):
        side, stages = strided_layout(frames.shape[1:])
        x = jnp.pad(frames, ((0, 0), (0, side - frames.shape[1]), (0, side - frames.shape[2]), (0, 0)))
        for i in range(stages):  # [N, side / 2^(i+1), side / 2^(i+1), depth * 2^i]
            x = StridedConv(self.depth * 2**i, with_bias=not self.norm)(x)
            x = self.activation(layer_norm(x) if self.norm else x)
        return x.reshape(x.shape[0], -1)


class StridedDecoder(hk.Module):
    """The encoder mirrored: features [N, D] -> a linear layer to a 4x4 map of depth * 2^(stages-1) channels,
    then 4x4 transposed convolutions of stride 2 that double the frame and halve the channels, the last one to
    the frame's channels without a norm or an activation, cropped to `frame_shape` [H, W, C]."""

    def __init__(self, frame_shape: tuple[int, int, int], depth: int, activation: str, norm: bool, name=None):
        super().__init__(name=name)
        self.frame_shape, self.depth, self.activation, self.norm = frame_shape, depth, ACTIVATIONS[activation], norm

    def __call__(self, feat):
        height, width, channels = self.frame_shape
        _, stages = strided_layout(self.frame_shape)
        top = self.depth * 2 ** (stages - 1)
        x = hk.Linear(STRIDED_FINAL_SIDE**2 * top)(feat).reshape(-1, STRIDED_FINAL_SIDE, STRIDED_FINAL_SIDE, top)
        for i in reversed(range(stages - 1)):  # [N, 4 * 2^(stages-1-i), ..., depth * 2^i]
            x = StridedConv(self.depth * 2**i, transpose=True, with_bias=not self.norm)(x)
            x = self.activation(layer_norm(x) if self.norm else x)
        x = StridedConv(channels, transpose=True)(x)  # [N, side, side, C]
        return x[:, :height, :width]


def check_trailing_shape(what: str, x, shape: tuple[int, ...]) -> None:
    """Refuses, when tracing, an input whose trailing axes are not `shape`: a wrong width would otherwise be
    met far away (a parameter of another shape, or a silent broadcast)."""
    if tuple(x.shape[x.ndim - len(shape):]) != tuple(shape) or x.ndim < len(shape):
        raise ValueError(f"{what} must have shape [..., {', '.join(map(str, shape))}], got {list(x.shape)}")


class Encoder(hk.Module):
    """Observation [..., *obs_shape] (float) -> embedding [..., E], E = encoder_output_size; `pixels`: uint8 frames
    (pixel_frames), scaled to [-0.5, 0.5] here."""

    def __init__(self, config: Config, obs_shape: tuple[int, ...], pixels: bool = False, name=None):
        super().__init__(name=name)
        self.config, self.obs_shape, self.pixels = config, tuple(obs_shape), pixels

    def __call__(self, obs):
        c = self.config
        check_trailing_shape("Encoder observation", obs, self.obs_shape)
        lead = obs.shape[: obs.ndim - len(self.obs_shape)]
        if not uses_conv(c, self.obs_shape):
            x = obs.reshape(*lead, -1)
            if c.symlog_inputs:
                x = symlog(x)
            return MLP(c.num_hidden_units, c.num_hidden_layers, c.activation, norm=c.layer_norm)(x)
        x = obs.reshape(-1, *_as_image(self.obs_shape))  # [N, H, W, C]
        if image_network(c, self.obs_shape) == "strided":
            x = StridedEncoder(c.cnn_depth, c.activation, c.layer_norm)(x / 255.0 - 0.5 if self.pixels else x)
            return x.reshape(*lead, -1)
        act = ACTIVATIONS[c.activation]
        for i in range(c.conv_depth):
            x = act(Conv3x3(c.num_conv_filters * 2**i)(x))
        return x.reshape(*lead, -1)


class Decoder(hk.Module):
    """Model feature [..., D] -> observation logits (binary) or means [..., *obs_shape] (pixel frames: scaled to
    [-0.5, 0.5], see pixel_frames)."""

    def __init__(self, config: Config, obs_shape: tuple[int, ...], name=None):
        super().__init__(name=name)
        self.config, self.obs_shape = config, tuple(obs_shape)

    def __call__(self, feat):
        c = self.config
        check_trailing_shape("Decoder feature", feat, (c.num_hidden_units + latents(c).size,))
        lead = feat.shape[:-1]
        if not uses_conv(c, self.obs_shape):
            x = MLP(c.num_hidden_units, c.num_hidden_layers, c.activation, int(np.prod(self.obs_shape)),
                    latents(c).one_hot_block(c.num_hidden_units), norm=c.layer_norm)(feat)
            return x.reshape(*lead, *self.obs_shape)
        if image_network(c, self.obs_shape) == "strided":
            x = StridedDecoder(_as_image(self.obs_shape), c.cnn_depth, c.activation, c.layer_norm)(
                feat.reshape(-1, feat.shape[-1]))
            return x.reshape(*lead, *self.obs_shape)
        act = ACTIVATIONS[c.activation]
        height, width, channels = _as_image(self.obs_shape)
        top = c.num_conv_filters * 2 ** (c.conv_depth - 1)
        x = act(Linear(height * width * top, latents(c).one_hot_block(c.num_hidden_units))(
            feat.reshape(-1, feat.shape[-1])))
        x = x.reshape(-1, height, width, top)  # [N, H, W, top]
        for i in reversed(range(c.conv_depth - 1)):
            x = act(Conv3x3(c.num_conv_filters * 2**i)(x))
        x = Conv3x3(channels)(x)
        return x.reshape(*lead, *self.obs_shape)


# ---------------------------------------------------------------------------------------------
# The world model, actor and critic


class RSSMState(NamedTuple):
    h: jax.Array  # [..., H] deterministic state
    z: jax.Array  # [..., Z] latent sample


class Observed(NamedTuple):
    """The posterior pass over sequences, each [B, T, ...]."""

    h: jax.Array  # [B, T, H] the deterministic state the posterior saw
    z: jax.Array  # [B, T, Z] posterior sample
    next_h: jax.Array  # [B, T, H] transition(h, z, action): what the reward and termination heads read
    prior: jax.Array  # [B, T, P] prior latent parameters of z (from h)
    posterior: jax.Array  # [B, T, P] posterior latent parameters


class Imagined(NamedTuple):
    """A prior rollout of K steps from start states [N, ...], time-major."""

    h: jax.Array  # [K, N, H] the state after each transition
    z: jax.Array  # [K, N, Z] its prior sample
    action: jax.Array | None  # [K, N] int32 or [K, N, A] actions the policy took (None for given actions)
    readout: object = None  # [K, N, ...] `readout` of each state, read inside the scan (None without one)


class RSSM:
    """The recurrent state-space model as pure functions of the world model's parameters, the one implementation
    of its step for acting, observing sequences, imagination, the diagnostics and the dream.

    The step: the posterior z ~ q(z | h, embed), then h' = transition(h, z, action); imagination replaces the
    posterior by the prior z' ~ p(z' | h'). `embed` is the encoder's output [..., E]. Samples are drawn from
    noise passed in (`Latents.noise`); a categorical z is a one-hot sample (see `make_world_model`).

    `nets` are the haiku functions of `make_world_model`: transition, prior, and the posterior in two parts
    (the embedding's share of its first layer, then the rest), so that observe runs the first part batched
    over a whole sequence outside its scan."""

    def __init__(self, latent_space, hidden: int, num_actions: int, embed_size: int, nets):
        self.latents, self.hidden, self.num_actions, self.embed_size = latent_space, hidden, num_actions, embed_size
        self._transition, self._prior, self._posterior_embed, self._posterior = nets

    def initial(self, batch_shape: tuple[int, ...] = ()) -> jax.Array:
        """The deterministic state at an episode's start [*batch_shape, H] (zeros)."""
        return jnp.zeros((*batch_shape, self.hidden), jnp.float32)

    def transition(self, params, h, z, action):
        """h [..., H], z [..., Z], action: integers [...] (discrete) or vectors [..., A] -> next h [..., H]."""
        check_trailing_shape("transition h", h, (self.hidden,))
        check_trailing_shape("transition z", z, (self.latents.size,))
        return self._transition(params, h, z, action)

    def prior(self, params, h):
        """Prior latent parameters [..., P] of the state h [..., H]."""
        return self._prior(params, h)

    def posterior(self, params, h, embed):
        """Posterior latent parameters [..., P] from h [..., H] and the encoder's embed [..., E]."""
        check_trailing_shape("posterior embed", embed, (self.embed_size,))
        return self._posterior(params, h, self._posterior_embed(params, embed))

    def posterior_step(self, params, h, embed, noise):
        """The posterior of one step: (h [..., H], embed [..., E], noise) -> (z [..., Z], posterior [..., P])."""
        check_trailing_shape("posterior embed", embed, (self.embed_size,))
        return self._posterior_sample(params, h, self._posterior_embed(params, embed), noise)

    def _posterior_sample(self, params, h, embed_share, noise):
        posterior = self._posterior(params, h, embed_share)
        return self.latents.distribution(posterior).sample(noise), posterior

    def prior_step(self, params, h, z, action, noise):
        """One imagined step: -> (next h [..., H], its prior sample [..., Z], prior parameters [..., P])."""
        next_h = self.transition(params, h, z, action)
        prior = self._prior(params, next_h)
        return next_h, self.latents.distribution(prior).sample(noise), prior

    def observe(self, params, embeds, actions, resets, key) -> Observed:
        """The posterior pass over sequences: embeds [B, T, E], actions [B, T] or [B, T, A], resets [B, T] (the
        carry restarts at zero after a step that ends an episode); one noise draw from `key` for all steps."""
        batch, steps = resets.shape
        check_trailing_shape("observed embeds", embeds, (batch, steps, self.embed_size))
        if actions.shape[:2] != (batch, steps):
            raise ValueError(f"observed actions must have shape [{batch}, {steps}, ...], got {list(actions.shape)}")
        embed_share = self._posterior_embed(params, embeds)  # [B, T, U], batched over all steps

        def step(h, inputs):  # only what depends on the previous step stays in the scan
            embed_t, action_t, reset_t, noise_t = inputs
            z, posterior = self._posterior_sample(params, h, embed_t, noise_t)
            next_h = self.transition(params, h, z, action_t)
            return jnp.where(reset_t[:, None], 0.0, next_h), (h, z, next_h, posterior)

        time_major = lambda x: jnp.swapaxes(x, 0, 1)
        noise = self.latents.noise(key, (steps, batch))  # [T, B, ...]
        inputs = (time_major(embed_share), time_major(actions), time_major(resets), noise)
        _, outs = jax.lax.scan(step, self.initial((batch,)), inputs)
        h, z, next_h, posterior = jax.tree.map(time_major, outs)
        return Observed(h, z, next_h, self._prior(params, h), posterior)

    def imagine(self, params, start: RSSMState, policy_or_actions, horizon: int, key,
                readout: Callable | None = None) -> Imagined:
        """The prior rolled `horizon` steps from start states [N, ...] (or [...]), with given actions [K, N, ...]
        or a policy: an object with `noise(key, steps)` (its noise for all steps, drawn before the scan) and
        `act(feat [N, H+Z], noise_t) -> (action, the action the transition reads)`. `readout(h [N, H])`, if
        given, is read from each new state inside the scan (as the diagnostics' open loop always has)."""
        check_trailing_shape("imagination start h", start.h, (self.hidden,))
        steps = (horizon, *start.h.shape[:-1])
        policy = policy_or_actions if hasattr(policy_or_actions, "act") else None
        if policy is None:
            latent_key, inputs = key, policy_or_actions
        else:
            action_key, latent_key = jax.random.split(key)
            inputs = policy.noise(action_key, steps)

        def step(state, inputs_t):  # only what depends on the previous step stays in the scan
            (h, z), (input_t, noise_t) = state, inputs_t
            action = model_action = input_t
            if policy is not None:
                action, model_action = policy.act(jnp.concatenate([h, z], -1), input_t)
            next_h, next_z, _ = self.prior_step(params, h, z, model_action, noise_t)
            outs = None if policy is None else action, None if readout is None else readout(next_h)
            return (next_h, next_z), (next_h, next_z, *outs)

        _, outs = jax.lax.scan(step, tuple(start), (inputs, self.latents.noise(latent_key, steps)))
        return Imagined(*outs)

    def kl_loss(self, posterior, prior, free_nats):
        """KL balancing of latent parameters [..., P], each term clipped below free_nats: "kl_dynamics" pulls the
        prior toward the posterior, "kl_representation" the posterior toward the prior (each weighted by its
        loss scale). Returns ({name: [...]}, KL(posterior || prior) [...])."""
        sg, dist = jax.lax.stop_gradient, self.latents.distribution
        kl_dynamics = dist(sg(posterior)).kl(dist(prior))
        kl_representation = dist(posterior).kl(dist(sg(prior)))
        return {"kl_dynamics": free_bits(kl_dynamics, free_nats),
                "kl_representation": free_bits(kl_representation, free_nats)}, kl_dynamics


class WorldModel(NamedTuple):
    """Pure functions of the world-model parameters (haiku `multi_transform`, no apply rng).

    encode(params, obs [..., *obs]) -> embed [..., E], E = encoder_output_size
    rssm: the RSSM (observe, imagine, its step and KL loss)
    decode(params, feat [..., H+Z]) -> observation logits/means [..., *obs]
    observation(decoded [..., *obs]) -> the observation likelihood of the decoder's outputs, elementwise
        (distributions.observation_distribution; PixelSquared for pixel frames)
    reward(params, h [..., H]) -> reward head outputs [..., R] (distributions.Heads.reward reads them)
    termination(params, h [..., H]) -> termination logit [...]
    A categorical z must be a sample (at most one non-zero entry per latent variable, as
    `OneHotCategorical.sample` returns): the layers reading it multiply it by gathering weight rows on CPU
    (`Linear`, kernels.one_hot_matmul, which makes a product NaN rather than wrong where that does not hold).
    """

    init: Callable
    encode: Callable
    rssm: RSSM
    decode: Callable
    reward: Callable
    termination: Callable
    observation: Callable


def make_world_model(config: Config, obs_shape: tuple[int, ...], num_actions: int,
                     obs_dtype=np.float32) -> WorldModel:
    """The world model of observations [*obs_shape] of the environment's `obs_dtype` and `num_actions` actions."""
    c = config
    pixels = pixel_frames(c, obs_shape, obs_dtype)
    latent_space = latents(c)

    def build():
        encoder = Encoder(c, obs_shape, pixels, name="encoder")
        decoder = Decoder(c, obs_shape, name="decoder")
        gru = NormGRU(c.num_hidden_units, name="gru") if c.layer_norm else hk.GRU(c.num_hidden_units, name="gru")
        mlp = lambda layers, output_size=None, **kw: MLP(c.num_hidden_units, layers, c.activation, output_size,
                                                         norm=c.layer_norm, **kw)
        transition_input = mlp(1, one_hot_block=latent_space.one_hot_block(0), name="transition_input")
        prior_net = mlp(c.num_hidden_layers, latent_space.param_size, name="prior")
        posterior_net = mlp(c.num_hidden_layers - 1, latent_space.param_size, name="posterior")
        # The posterior's first layer reads [h, encoder output]; its two blocks of rows are separate layers
        # (initialised as the one layer over H + E inputs would be) so the encoder's block runs batched.
        first_init = hk.initializers.TruncatedNormal(
            1.0 / np.sqrt(c.num_hidden_units + encoder_output_size(c, obs_shape)))
        posterior_h = hk.Linear(c.num_hidden_units, w_init=first_init, name="posterior_h")
        posterior_embed = hk.Linear(c.num_hidden_units, with_bias=False, w_init=first_init, name="posterior_embed")
        reward_net = mlp(c.num_hidden_layers, reward_head_size(c), zero_output=c.zero_init_heads, name="reward")
        termination_net = mlp(c.num_hidden_layers, 1, name="termination")

        def transition(h, z, action):
            action = jnp.asarray(action)
            if jnp.issubdtype(action.dtype, jnp.integer):  # discrete action indices [...]
                action = jax.nn.one_hot(action, num_actions, dtype=z.dtype)
            # else already a vector [..., num_actions]: a continuous action, or a discrete one's one-hot sample
            # with straight-through gradients (the dynamics actor gradient)
            x = transition_input(jnp.concatenate([z, action.astype(z.dtype)], -1))
            if c.layer_norm:
                return gru(x, h)
            _, next_h = gru(x, h)
            return next_h

        def posterior(h, embed_share):  # embed_share: posterior_embed(encoder output)
            x = posterior_h(h) + embed_share
            return posterior_net(ACTIVATIONS[c.activation](layer_norm(x) if c.layer_norm else x))

        def termination(h):
            return termination_net(h)[..., 0]

        def init(obs, h, z, action):
            posterior(h, posterior_embed(encoder(obs)))
            decoder(jnp.concatenate([h, z], -1))
            next_h = transition(h, z, action)
            return prior_net(next_h), reward_net(next_h), termination(next_h)

        return init, (encoder, transition, prior_net, posterior_embed, posterior, decoder, reward_net, termination)

    model = hk.without_apply_rng(hk.multi_transform(build))
    encode, transition, prior, project, posterior, decode, reward, termination = model.apply
    rssm = RSSM(latent_space, c.num_hidden_units, num_actions, encoder_output_size(c, obs_shape),
                (transition, prior, project, posterior))
    observation = PixelSquared if pixels else functools.partial(observation_distribution, c)
    return WorldModel(model.init, encode, rssm, decode, reward, termination, observation)


def make_actor_critic(config: Config, num_actions: int):
    """(actor, critic) haiku transforms: feature [..., H+Z] -> actor outputs [..., num_actions] (the policy's
    parameters, distributions.action_head_size and action_distribution) / critic outputs [..., V]
    (distributions.value_distribution reads them). A categorical latent in the features must be a sample, as
    in `WorldModel`."""
    c = config

    def head(output_size: int, name: str, zero_output: bool = False):
        def apply(feat):  # features [h, z]
            check_trailing_shape(f"{name} feature", feat, (c.num_hidden_units + latents(c).size,))
            return MLP(c.num_hidden_units, c.num_hidden_layers, c.activation, output_size,
                       latents(c).one_hot_block(c.num_hidden_units), norm=c.layer_norm, zero_output=zero_output,
                       name=name)(feat)
        return apply

    actor = hk.without_apply_rng(hk.transform(head(num_actions, "actor")))
    critic = hk.without_apply_rng(hk.transform(head(value_head_size(c), "critic", c.zero_init_heads)))
    return actor, critic
