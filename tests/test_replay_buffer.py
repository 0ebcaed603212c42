"""Unit tests of the replay ring buffer: adding, wraparound, compact dtypes, sequence sampling and the
episode shift of `maximize_nonterminal`, under jit and vmap. Step ids are stored in the reward field."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from replay_buffer import add, can_sample, init_buffer, sample_sequences, sequence_indices

jit_add = jax.jit(add)


def filled(terminated, truncated=None, size=None, warmup=0):
    """A buffer of `size` entries holding `warmup` entries without ends, then one entry per flag.

    Entry with step id t has reward t and obs [t]; with `warmup` > 0 the ring has wrapped.
    """
    truncated = np.zeros(len(terminated), bool) if truncated is None else np.asarray(truncated)
    terminated = np.asarray(terminated)
    size = len(terminated) if size is None else size
    flags = [(False, False)] * warmup + list(zip(terminated, truncated))
    buffer = init_buffer(size, (1,), jnp.int32)
    for t, (term, trunc) in enumerate(flags):
        buffer = jit_add(buffer, jnp.array([t]), t % 3, float(t), term, trunc)
    return buffer


def steps(buffer, idx):
    return np.asarray(buffer.reward[idx]).astype(int)


def reference_start(ends, p0, L, maximize_nonterminal):
    """Plain-Python statement of the shift, on end flags in age order."""
    if not maximize_nonterminal or not ends[p0:p0 + L].any():
        return p0
    j = p0 + int(np.argmax(ends[p0:p0 + L]))
    previous = [q for q in range(max(j - L + 1, 0), j) if ends[q]]
    return max(j - L + 1, (previous[-1] + 1) if previous else 0, 0)


def test_add_wraps_around():
    buffer = init_buffer(5, (2,), jnp.float32)
    assert int(buffer.count) == 0 and not can_sample(buffer, 1)
    for t in range(7):
        buffer = add(buffer, jnp.full(2, t), t, float(t), t == 3, t == 6)
    np.testing.assert_array_equal(buffer.reward, [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buffer.obs[:, 0], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buffer.action, [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buffer.terminated, [False, False, False, True, False])
    np.testing.assert_array_equal(buffer.truncated, [False, True, False, False, False])
    assert int(buffer.insert_index) == 2 and int(buffer.count) == 5
    assert int(buffer.reward[(buffer.insert_index - buffer.count) % 5]) == 2  # oldest entry
    assert can_sample(buffer, 5) and not can_sample(buffer, 6)
    assert all(leaf.dtype == dtype for leaf, dtype in zip(
        buffer, [jnp.float32, jnp.int32, jnp.float32, bool, bool, jnp.int32, jnp.int32]))


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.bool_])
def test_obs_stored_in_compact_dtype(dtype):
    frame = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    buffer = add(init_buffer(3, (2, 2), dtype), frame, 1, 0.5, False, False)
    assert buffer.obs.dtype == dtype
    np.testing.assert_array_equal(buffer.obs[0], frame.astype(dtype))
    batch = sample_sequences(buffer, jax.random.PRNGKey(0), 4, 1, True)
    assert batch.obs.dtype == dtype and batch.obs.shape == (4, 1, 2, 2)


@pytest.mark.parametrize("maximize_nonterminal", [False, True])
def test_samples_are_contiguous_and_stay_inside_the_ring(maximize_nonterminal):
    rng = np.random.default_rng(0)
    buffer = filled(rng.random(30) < 0.2, rng.random(30) < 0.1, size=13)  # wrapped: holds steps 17..29
    L, batch_size = 4, 500
    batch = jax.jit(sample_sequences, static_argnums=(2, 3, 4))(
        buffer, jax.random.PRNGKey(1), batch_size, L, maximize_nonterminal)
    assert batch.obs.shape == (batch_size, L, 1) and batch.reward.shape == (batch_size, L)
    ids = np.asarray(batch.reward).astype(int)
    np.testing.assert_array_equal(np.diff(ids, axis=1), 1)
    assert ids.min() >= 17 and ids.max() <= 29
    np.testing.assert_array_equal(batch.obs[..., 0], ids)
    np.testing.assert_array_equal(batch.action, ids % 3)
    if not maximize_nonterminal:  # the draw is uniform over every valid start
        assert set(ids[:, 0]) == set(range(17, 29 - L + 2))


def test_sequence_starts_are_uniform_over_the_valid_starts():
    buffer = filled(np.zeros(30, bool), size=13)  # wrapped: holds steps 17..29, so 10 starts of length 4
    batch = jax.jit(sample_sequences, static_argnums=(2, 3, 4))(buffer, jax.random.PRNGKey(2), 20000, 4, False)
    counts = np.bincount(np.asarray(batch.reward[:, 0]).astype(int) - 17, minlength=10)
    assert counts.shape == (10,)
    np.testing.assert_allclose(counts / 20000, 0.1, atol=0.011)  # ~5 standard errors of 0.0021


def test_terminal_mid_sequence_after_long_episode_ends_sequence_on_it():
    ends = np.zeros(20, bool)
    ends[10] = True
    buffer = filled(ends)
    idx = sequence_indices(buffer, jnp.array([8, 10, 7]), 4, True)
    np.testing.assert_array_equal(steps(buffer, idx), [[7, 8, 9, 10]] * 3)


def test_short_previous_episode_starts_sequence_after_its_end():
    ends = np.zeros(20, bool)
    ends[[5, 7]] = True
    buffer = filled(ends)
    idx = sequence_indices(buffer, jnp.array([7, 6]), 4, True)
    np.testing.assert_array_equal(steps(buffer, idx), [[6, 7, 8, 9]] * 2)


def test_episode_end_near_oldest_boundary_clamps_start_to_zero():
    ends = np.zeros(20, bool)
    ends[1] = True
    buffer = filled(ends, size=20)
    idx = sequence_indices(buffer, jnp.array([0, 1]), 4, True)
    np.testing.assert_array_equal(steps(buffer, idx), [[0, 1, 2, 3]] * 2)
    # The same on a wrapped ring: the oldest entry is step 5, whose flags come after the warm-up.
    buffer = filled(ends, size=20, warmup=5)
    idx = sequence_indices(buffer, jnp.array([0, 1]), 4, True)
    np.testing.assert_array_equal(steps(buffer, idx), [[5, 6, 7, 8]] * 2)


def test_truncation_counts_as_episode_end():
    truncated = np.zeros(20, bool)
    truncated[10] = True
    buffer = filled(np.zeros(20, bool), truncated)
    idx = sequence_indices(buffer, jnp.array([8]), 4, True)
    np.testing.assert_array_equal(steps(buffer, idx), [[7, 8, 9, 10]])


def test_without_maximize_nonterminal_the_draw_is_unchanged():
    ends = np.zeros(20, bool)
    ends[[5, 10]] = True
    buffer = filled(ends)
    starts = jnp.arange(17)
    idx = sequence_indices(buffer, starts, 4, False)
    np.testing.assert_array_equal(steps(buffer, idx), np.arange(17)[:, None] + np.arange(4))


@pytest.mark.parametrize("size, warmup", [(40, 0), (25, 0), (25, 7)])
@pytest.mark.parametrize("L", [1, 3, 6])
@pytest.mark.parametrize("maximize_nonterminal", [False, True])
def test_every_start_matches_reference(size, warmup, L, maximize_nonterminal):
    rng = np.random.default_rng(size + warmup + L)
    terminated, truncated = rng.random(25) < 0.15, rng.random(25) < 0.1
    buffer = filled(terminated, truncated, size=size, warmup=warmup)
    count = int(buffer.count)
    first_step = warmup + 25 - count  # step id of the oldest entry
    ends = np.concatenate([np.zeros(warmup, bool), terminated | truncated])[first_step:]
    starts = np.arange(count - L + 1)
    indices = jax.jit(sequence_indices, static_argnums=(2, 3))
    idx = indices(buffer, jnp.asarray(starts), L, maximize_nonterminal)
    expected = [reference_start(ends, p0, L, maximize_nonterminal) for p0 in starts]
    np.testing.assert_array_equal(steps(buffer, idx) - first_step, np.array(expected)[:, None] + np.arange(L))


def test_jit_and_vmap_over_seeds_match_per_seed_calls():
    rng = np.random.default_rng(3)
    seeds = [filled(rng.random(12) < 0.3, size=8, warmup=s) for s in range(3)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *seeds)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)

    sample = jax.jit(jax.vmap(sample_sequences, in_axes=(0, 0, None, None, None)), static_argnums=(2, 3, 4))
    batch = sample(stacked, keys, 6, 3, True)
    assert batch.obs.shape == (3, 6, 3, 1)
    for s in range(3):
        single = sample_sequences(seeds[s], keys[s], 6, 3, True)
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(lambda x: x[s], batch), single)

    add_all = jax.jit(jax.vmap(add), donate_argnums=0)
    obs, action = jnp.arange(3)[:, None] + 100, jnp.arange(3)
    reward, done = jnp.full(3, 100.0), jnp.array([True, False, True])
    added = add_all(jax.tree.map(jnp.copy, stacked), obs, action, reward, done, ~done)
    for s in range(3):
        single = add(seeds[s], obs[s], action[s], reward[s], done[s], ~done[s])
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(lambda x: x[s], added), single)
    np.testing.assert_array_equal(jax.vmap(can_sample, in_axes=(0, None))(added, 8), [True] * 3)


@pytest.mark.parametrize("frame_shape", [(10, 10, 6), (10, 5), (7, 7, 2), (3,)])
def test_binary_frames_pack_eight_pixels_per_byte_and_unpack_exactly(frame_shape):
    from replay_buffer import pack_frame, unpack_frames
    frames = jax.random.bernoulli(jax.random.PRNGKey(0), 0.3, (4, *frame_shape)).astype(jnp.float32)
    packed = jax.vmap(pack_frame)(frames)
    assert packed.dtype == jnp.uint8 and packed.shape == (4, -(-int(np.prod(frame_shape)) // 8))
    buffer = init_buffer(4, packed.shape[1:], jnp.uint8)
    for i in range(4):
        buffer = add(buffer, packed[i], 0, 0.0, False, False)
    np.testing.assert_array_equal(unpack_frames(buffer.obs, frame_shape), frames)
