"""Faster forms of a few array operations on XLA:CPU, each behind a function with the signature and meaning of
the plain operation it replaces:

| function | plain operation | CPU form |
| --- | --- | --- |
| `elu(x)` | `jax.nn.elu(x)` | gradient computed from the output |
| `one_hot_matmul(x, w, block)` | `x @ w` | a block of one-hot vectors multiplied by gathering weight rows |
| `pixel_matmul(x, w)` | `x @ w` | weight gradient summed over chunks of rows |
| `conv3x3(x, w)` | 3x3 SAME convolution, stride 1 (`jax.lax.conv_general_dilated`) | shifted views times one matmul |

`use_cpu_kernels()` is the one place that decides which form runs: the CPU forms on the CPU backend, the plain
operations on every other backend and wherever `plain_kernels()` is active (the tests run the whole update
both ways and compare, tests/test_kernels.py). The choice is made when a function is traced, so build the
agent (and jit its functions) inside `plain_kernels()` to trace it with the plain operations.

Why each CPU form is faster, and by how much, was measured at f1b95ab: `git show f1b95ab:bench/README.md`."""

import contextlib
import math
import os
from functools import partial

import jax
import jax.numpy as jnp

PLAIN_KERNELS_ENV = "DREAMER_PLAIN_KERNELS"  # set to 1 to run the plain operations on CPU too
_plain = [os.environ.get(PLAIN_KERNELS_ENV, "") not in ("", "0")]


def use_cpu_kernels() -> bool:
    """Whether the CPU forms run: on the CPU backend, unless `plain_kernels()` or DREAMER_PLAIN_KERNELS=1."""
    return jax.default_backend() == "cpu" and not _plain[-1]


@contextlib.contextmanager
def plain_kernels(plain: bool = True):
    """Within this context, functions traced use the plain operations (plain=False: the backend's choice)."""
    _plain.append(plain)
    try:
        yield
    finally:
        _plain.pop()


# ---------------------------------------------------------------------------------------------------------------
# ELU


def elu(x):
    """jax.nn.elu(x)."""
    return _elu(x) if use_cpu_kernels() else jax.nn.elu(x)


@jax.custom_vjp
def _elu(x):
    """ELU whose gradient is computed from its output: the slope is 1 where the output is positive and
    exp(x) = output + 1 elsewhere, so the backward pass keeps no residual but the output, and is one small
    kernel instead of the several of the safe-`where` JVP. exp(x) - 1 rather than expm1(x), which XLA:CPU runs
    slower; for x < 0 the two differ by about 1e-7 at most (exp's float32 rounding near 1)."""
    return jnp.where(x > 0, x, jnp.exp(jnp.minimum(x, 0)) - 1)


def _elu_fwd(x):
    y = _elu(x)
    return y, y


def _elu_bwd(y, g):
    return (g * jnp.where(y > 0, 1, y + 1),)


_elu.defvjp(_elu_fwd, _elu_bwd)


# ---------------------------------------------------------------------------------------------------------------
# Products with one-hot vectors

GATHER_MIN_ROWS = 64  # below this many rows `one_hot_matmul` multiplies densely (acting, the posterior scan)
GATHER_BLOCK_ROWS = 50  # output rows the gathered weight rows are summed into at once


def one_hot_matmul(x, w, block: tuple[int, int, int]):
    """x [..., D] @ w [D, O], where block = (start, groups, width) says that x[..., start:start + groups*width]
    holds `groups` vectors of `width` entries with at most one non-zero entry each (categorical latent samples,
    straight-through or not). The CPU form multiplies that block by gathering and scaling one weight row per
    vector; a vector with more than one non-zero entry makes its row of the product NaN there (which the
    training update's numerical-fault check reports), never a silently wrong number."""
    rows = math.prod(x.shape[:-1])
    if not use_cpu_kernels() or rows < GATHER_MIN_ROWS:
        return x @ w
    return _one_hot_block_matmul(x, w, block)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _one_hot_block_matmul(x, w, block):
    return _one_hot_block_product(x.reshape(-1, x.shape[-1]), w, block).reshape(*x.shape[:-1], w.shape[1])


def _one_hot_block_matmul_fwd(x, w, block):
    return _one_hot_block_matmul(x, w, block), (x, w)


def _one_hot_block_matmul_bwd(block, residuals, out_grad):  # the dense product's gradients
    x, w = residuals
    flat_x, flat_grad = x.reshape(-1, x.shape[-1]), out_grad.reshape(-1, out_grad.shape[-1])
    return (out_grad @ w.T).astype(x.dtype), (flat_x.T @ flat_grad).astype(w.dtype)


_one_hot_block_matmul.defvjp(_one_hot_block_matmul_fwd, _one_hot_block_matmul_bwd)


def _one_hot_block_product(x, w, block: tuple[int, int, int]):
    """x [M, D] @ w [D, O] with the one-hot block of `one_hot_matmul` multiplied by gathering weight rows."""
    start, groups, width = block
    stop = start + groups * width
    rest = jnp.concatenate([x[:, :start], x[:, stop:]], -1)
    out = rest @ jnp.concatenate([w[:start], w[stop:]], 0)
    one_hot = x[:, start:stop].reshape(-1, groups, width)
    # Each vector's non-zero entry's index and value [M, G] (0 and 0 where there is none), as plain sums: with at
    # most one non-zero entry a vector's sum is that entry (XLA:CPU runs argmax's variadic reduce far slower).
    non_zero = one_hot != 0
    index = jnp.sum(jnp.where(non_zero, jnp.arange(width), 0), -1) + jnp.arange(groups) * width  # row of w[start:]
    value = jnp.sum(one_hot, -1)
    value = jnp.where(jnp.sum(non_zero, -1) <= 1, value, jnp.nan)  # not one-hot: NaN, not a wrong product
    rows = w[start:stop]  # [G * W, O]

    def gathered(index, value):  # [R, G] -> [R, O]: the sum of each row's G scaled weight rows
        return sum(value[:, g, None] * rows[index[:, g]] for g in range(groups))

    # One block of rows at a time, all G weight rows summed into it while it is in cache: vector by vector over
    # all M rows would read and write the whole [M, O] output G times, and an unrolled sum outside a loop is
    # fused into each consumer of the layer's output and recomputed there.
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


# ---------------------------------------------------------------------------------------------------------------
# Products over many pixel rows, and the 3x3 convolution built on them

WEIGHT_GRAD_CHUNKS = 10  # row chunks of `pixel_matmul`'s weight gradient (a divisor of the rows is taken)


def pixel_matmul(x, w):
    """x [M, K] @ w [K, F] for M pixel rows (many) and a few dozen to a few hundred columns. The CPU form takes
    the weight gradient x^T g, a contraction over all M rows, as `WEIGHT_GRAD_CHUNKS` products over chunks of
    rows, summed: the same sum in another order, equal up to float32 rounding."""
    return _chunked_weight_grad_matmul(x, w) if use_cpu_kernels() else x @ w


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


def conv3x3(x, w):
    """x [N, H, W, C] convolved with the 3x3 kernel w [3, 3, C, F] (kernel row, kernel column, in, out),
    stride 1, zero padding to the same size (SAME): [N, H, W, F].

    The CPU form uses matmuls and no convolution op (XLA:CPU runs a convolution inside a scan or cond body
    far slower than outside it, a matmul at full speed), in one of two forms:
    - more outputs than inputs (an encoder layer): the nine shifted views concatenated (9C values a pixel) times
      the kernel ([9C, F]);
    - fewer outputs than inputs (a decoder layer): each pixel's three horizontal taps (3C values, the image
      padded by a column on each side) times the three kernel rows at once ([3C, 3F]); kernel row 0's output
      moved down one image row, row 2's up one, and the three added, with zero rows entering at the edges, so
      nothing is computed for rows of vertical padding."""
    if not use_cpu_kernels():
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    channels, filters = w.shape[2:]
    height, width = x.shape[1:3]
    if channels <= filters:
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # [N, H+2, W+2, C]
        patches = jnp.concatenate([padded[:, i:i + height, j:j + width] for i in range(3) for j in range(3)], -1)
        out = pixel_matmul(patches.reshape(-1, 9 * channels), w.reshape(9 * channels, filters))
        return out.reshape(*x.shape[:3], filters)  # [N, H, W, 9C] @ [9C, F]
    padded = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))  # [N, H, W+2, C]: horizontal padding only
    taps = jnp.concatenate([padded[:, :, j:j + width] for j in range(3)], -1)  # [N, H, W, 3C]
    kernels = w.transpose(1, 2, 0, 3).reshape(3 * channels, 3 * filters)  # [(column, C), (row, F)]
    rows = pixel_matmul(taps.reshape(-1, 3 * channels), kernels)  # [N*H*W, (kernel row, F)]
    return _kernel_rows_sum(rows.reshape(*x.shape[:3], 3, filters))


def _rows_down(a):
    """[N, H, ...] -> a moved down one image row (axis 1): a zero row enters at the top, the last row leaves."""
    return jnp.concatenate([jnp.zeros_like(a[:, :1]), a[:, :-1]], 1)


def _rows_up(a):
    """[N, H, ...] -> a moved up one image row (axis 1): a zero row enters at the bottom, the first row leaves."""
    return jnp.concatenate([a[:, 1:], jnp.zeros_like(a[:, :1])], 1)


@jax.custom_vjp
def _kernel_rows_sum(rows):
    """rows [N, H, W, 3, F] (each pixel's output under kernel rows 0, 1, 2) -> [N, H, W, F]: row 0's output moved
    down one image row (it reads the row above), row 2's up one, and the three added. Its gradient is the
    output gradient and its two shifts stacked in one array, instead of each shifted slice padded back to the
    input's shape and the three added."""
    return _rows_down(rows[:, :, :, 0]) + rows[:, :, :, 1] + _rows_up(rows[:, :, :, 2])


def _kernel_rows_sum_fwd(rows):
    return _kernel_rows_sum(rows), None


def _kernel_rows_sum_bwd(_, g):  # the forward pass's shifts reversed
    return (jnp.stack([_rows_up(g), g, _rows_down(g)], 3),)


_kernel_rows_sum.defvjp(_kernel_rows_sum_fwd, _kernel_rows_sum_bwd)
