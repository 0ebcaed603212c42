"""The strided image network (DreamerV2/V3's CNN for 64x64 frames): its layout and output shapes, its parameter
count, a gradient that reaches every layer, uint8 pixels scaled and scored in [-0.5, 0.5], which network `auto`
picks, and frames it cannot take refused with one sentence."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent.distributions import PixelSquared, latents
from experiment import cli
from experiment.config import load_config
from networks import encoder_output_size, image_network, make_world_model, strided_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPTH = 4
CONFIG = load_config(os.path.join(ROOT, "configs", "dreamerv3_small.json"),
                     ["no_conv=false", f"cnn_depth={DEPTH}", "binary_state=false"])


def _params(obs_shape, obs_dtype=np.uint8):
    wm = make_world_model(CONFIG, obs_shape, 3, obs_dtype)
    params = wm.init(jax.random.PRNGKey(0), jnp.zeros(obs_shape), jnp.zeros(CONFIG.num_hidden_units),
                     jnp.zeros(latents(CONFIG).size), jnp.int32(0))
    return wm, params


def _count(params, module: str) -> int:
    return sum(leaf.size for name, leaves in params.items() if module in name for leaf in jax.tree.leaves(leaves))


@pytest.mark.parametrize("side", [64, 63])
def test_strided_network_shapes_and_parameter_counts(side):
    assert strided_layout((side, side, 3)) == (64, 4)  # 63x63 is padded to 64x64; 64 -> 32 -> 16 -> 8 -> 4
    assert image_network(CONFIG, (side, side, 3)) == "strided"
    channels = [DEPTH * 2**i for i in range(4)]  # 4, 8, 16, 32
    assert encoder_output_size(CONFIG, (side, side, 3)) == 4 * 4 * channels[-1]
    wm, params = _params((side, side, 3))
    # encoder: 4x4 kernels without bias (LayerNorm follows), each LayerNorm a scale and an offset per channel
    convs = sum(16 * c_in * c_out for c_in, c_out in zip([3, *channels[:-1]], channels))
    assert _count(params, "encoder") == convs + sum(2 * c for c in channels)
    # decoder: a linear layer to the 4x4 map, transposed 4x4 kernels back up, the last one with a bias
    feat = CONFIG.num_hidden_units + latents(CONFIG).size
    linear = feat * 16 * channels[-1] + 16 * channels[-1]
    ups = sum(16 * c_in * c_out for c_in, c_out in zip(channels[:0:-1], channels[-2::-1])) + 16 * channels[0] * 3 + 3
    assert _count(params, "decoder") == linear + ups + sum(2 * c for c in channels[:-1])
    frames = jnp.zeros((2, 5, side, side, 3))
    assert wm.encode(params, frames).shape == (2, 5, encoder_output_size(CONFIG, (side, side, 3)))
    assert wm.decode(params, jnp.zeros((2, 5, feat))).shape == (2, 5, side, side, 3)


def test_the_gradient_reaches_every_layer_of_the_encoder_and_decoder():
    wm, params = _params((64, 64, 3))
    frames = jax.random.randint(jax.random.PRNGKey(1), (2, 64, 64, 3), 0, 256).astype(jnp.float32)
    feat_size = CONFIG.num_hidden_units + latents(CONFIG).size
    project = jax.random.normal(jax.random.PRNGKey(2), (encoder_output_size(CONFIG, (64, 64, 3)), feat_size))

    def loss(params):  # frames -> embedding -> a fixed projection to features -> decoded frames
        decoded = wm.decode(params, wm.encode(params, frames) @ project)
        return -jnp.mean(wm.observation(decoded).log_prob(frames))

    grads = jax.grad(loss)(params)
    for name, leaves in grads.items():
        if "encoder" in name or "decoder" in name:
            for leaf in jax.tree.leaves(leaves):
                assert np.all(np.isfinite(leaf)) and np.any(leaf != 0), name


def test_pixels_are_scored_in_the_scaled_range_and_decoded_back_to_0_255():
    frames = jnp.array([0.0, 127.5, 255.0])
    perfect = PixelSquared(frames / 255.0 - 0.5)
    np.testing.assert_allclose(perfect.log_prob(frames), 0.0, atol=1e-6)
    np.testing.assert_allclose(perfect.mode(), frames, atol=1e-4)
    np.testing.assert_allclose(PixelSquared(jnp.zeros(3)).log_prob(jnp.array([0.0, 255.0, 127.5])),
                               [-0.25, -0.25, 0.0], atol=1e-6)
    assert float(PixelSquared(jnp.array([0.9])).mode()[0]) == 255.0  # clipped to a pixel's range
    wm, _ = _params((64, 64, 3), np.uint8)
    assert isinstance(wm.observation(jnp.zeros(3)), PixelSquared)
    wm, _ = _params((64, 64, 3), np.float32)  # float frames are predicted as they are
    assert not isinstance(wm.observation(jnp.zeros(3)), PixelSquared)


def test_auto_picks_the_small_stack_for_minatar_sized_frames():
    assert image_network(CONFIG, (10, 10, 6)) == "small"  # MinAtar
    assert image_network(CONFIG, (210, 160, 3)) == "small"  # not square: the strided network cannot take it
    assert image_network(CONFIG, (4,)) is None  # vectors: the MLP
    strided = load_config(os.path.join(ROOT, "configs", "dreamerv3_small.json"), ["no_conv=false",
                                                                                   "image_network=strided"])
    assert image_network(strided, (10, 10, 6)) == "strided"  # asked for: used where the frame fits
    assert strided_layout((8, 8, 1)) == (8, 1)


@pytest.mark.parametrize("shape", [(84, 84, 3), (64, 48, 3), (7, 7, 2)])
def test_a_frame_the_strided_network_cannot_take_is_refused(shape):
    with pytest.raises(ValueError, match=r"^the strided image network takes square frames .* got \d+x\d+; "):
        strided_layout(shape)


def test_the_scripts_refuse_such_a_frame_with_one_sentence_and_exit_2(tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    argv = ["-c", os.path.join(ROOT, "configs", "debug.json"), "--set", "environment=open_grid_env", "--set",
            "env_config.env_name=OpenGrid", "--set", "no_conv=false", "--set", "image_network=strided", "--set",
            "binary_state=false", "-o", str(output), "--wandb", "disabled", "--save_checkpoint", ""]
    assert cli.script_main(argv, description="test", single_seed=False) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: OpenGrid: the strided image network takes square frames whose side is a power of two of "
                   "at least 8 or up to an eighth below one (64x64, 63x63, 32x32, ...), got 7x7; resize the frames "
                   "or set image_network to small"]
    assert not output.exists()


@pytest.mark.parametrize("transpose, size, channels", [(False, 64, 3), (False, 9, 5), (True, 8, 6), (True, 4, 3)])
def test_strided_conv_is_haikus_conv_with_the_same_gradients(transpose, size, channels):
    # StridedConv computes its gradients as canonical convolutions (fast inside the loop on XLA:CPU), and its
    # transpose as four stride-1 convolutions: the same parameters as hk.Conv2D / hk.Conv2DTranspose, and their
    # outputs and gradients (to the bit for the strided convolution, to float rounding for the transpose).
    import haiku as hk

    from networks import StridedConv

    def ours(x):
        return StridedConv(7, transpose=transpose)(x)

    def haikus(x):
        module = hk.Conv2DTranspose if transpose else hk.Conv2D
        return module(7, 4, stride=2, padding="SAME")(x)

    x = jax.random.normal(jax.random.PRNGKey(0), (3, size, size, channels))
    ours, haikus = hk.without_apply_rng(hk.transform(ours)), hk.without_apply_rng(hk.transform(haikus))
    params = haikus.init(jax.random.PRNGKey(1), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == jax.tree.map(jnp.shape, params)
    for a, b in zip(jax.tree.leaves(ours.init(jax.random.PRNGKey(1), x)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f.apply(p, x)))
    np.testing.assert_allclose(ours.apply(params, x), haikus.apply(params, x), rtol=0 if not transpose else 1e-5,
                               atol=0 if not transpose else 1e-6)
    for a, b in zip(jax.tree.leaves(jax.grad(loss(ours), argnums=(0, 1))(params, x)),
                    jax.tree.leaves(jax.grad(loss(haikus), argnums=(0, 1))(params, x)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))  # a float32 rounding
