"""Functional replay ring buffer that lives inside the run-state pytree:
adds one transition at a time and samples contiguous sequences, optionally shifted to cover one episode.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class ReplayBuffer(NamedTuple):
    obs: jax.Array           # [S, *obs_shape] in a compact dtype (bool / uint8 for binary frames)
    action: jax.Array        # [S] int32 (discrete) or [S, A] float32 (continuous, in [-1, 1])
    reward: jax.Array        # [S] float32: received after taking action[i] from obs[i]
    terminated: jax.Array    # [S] bool: the episode terminated after action[i]
    truncated: jax.Array     # [S] bool: a time limit cut the episode after action[i]
    insert_index: jax.Array  # [] int32: where the next entry goes
    count: jax.Array         # [] int32: number of valid entries, <= S


class SequenceBatch(NamedTuple):
    obs: jax.Array         # [B, L, *obs_shape] in the buffer's dtype
    action: jax.Array      # [B, L] int32 or [B, L, A] float32
    reward: jax.Array      # [B, L] float32
    terminated: jax.Array  # [B, L] bool
    truncated: jax.Array   # [B, L] bool


def init_buffer(buffer_size: int, obs_shape: tuple, obs_dtype, action_shape: tuple = (),
                action_dtype=jnp.int32) -> ReplayBuffer:
    """An empty buffer of `buffer_size` entries; observations are stored as `obs_dtype`, actions as
    `action_dtype` of `action_shape` (int32 [] for discrete actions, float32 [A] for continuous ones)."""
    return ReplayBuffer(
        obs=jnp.zeros((buffer_size, *obs_shape), obs_dtype),
        action=jnp.zeros((buffer_size, *action_shape), action_dtype),
        reward=jnp.zeros(buffer_size, jnp.float32),
        terminated=jnp.zeros(buffer_size, bool),
        truncated=jnp.zeros(buffer_size, bool),
        insert_index=jnp.zeros((), jnp.int32),
        count=jnp.zeros((), jnp.int32))


def add(buffer: ReplayBuffer, obs, action, reward, terminated, truncated) -> ReplayBuffer:
    """Writes one transition over the oldest entry (in place when the buffer is donated under jit)."""
    i = buffer.insert_index
    size = buffer.action.shape[0]
    return ReplayBuffer(
        obs=buffer.obs.at[i].set(jnp.asarray(obs).astype(buffer.obs.dtype)),
        action=buffer.action.at[i].set(jnp.asarray(action, buffer.action.dtype)),
        reward=buffer.reward.at[i].set(jnp.asarray(reward, jnp.float32)),
        terminated=buffer.terminated.at[i].set(jnp.asarray(terminated, bool)),
        truncated=buffer.truncated.at[i].set(jnp.asarray(truncated, bool)),
        insert_index=(i + 1) % size,
        count=jnp.minimum(buffer.count + 1, size))


def can_sample(buffer: ReplayBuffer, sequence_length: int) -> jax.Array:
    """[] bool: whether the buffer holds at least one sequence of `sequence_length` entries."""
    return buffer.count >= sequence_length


def _oldest_index(buffer: ReplayBuffer) -> jax.Array:
    return (buffer.insert_index - buffer.count) % buffer.action.shape[0]


def _sequence_start(window_ends: jax.Array, start: jax.Array, sequence_length: int) -> jax.Array:
    """Age position where one sequence starts once shifted to cover one episode as fully as possible.

    window_ends: [2L-1] episode-end flags at age positions start-L+1 .. start+L-1 (False before the oldest).
    The drawn sequence start .. start+L-1 is window[L-1:]. If it holds an episode end, it is moved to end on
    the first one, j, but starts no earlier than just after the previous end nor before position 0.
    """
    L = sequence_length
    offsets = jnp.arange(2 * L - 1)                  # window index -> age position start - L + 1 + index
    first_end = jnp.argmax(window_ends[L - 1:])      # j = start + first_end
    has_end = window_ends[L - 1:].any()
    # The previous end is searched in [j-L+1, j-1], i.e. window indices first_end .. first_end+L-2.
    in_range = (offsets >= first_end) & (offsets <= first_end + L - 2)
    prev_end_index = jnp.max(jnp.where(window_ends & in_range, offsets, -L))  # -L: none, lands at/below 0
    prev_end = start - L + 1 + prev_end_index
    shifted = jnp.maximum(jnp.maximum(start + first_end - L + 1, prev_end + 1), 0)
    return jnp.where(has_end, shifted, start)


def sequence_indices(buffer: ReplayBuffer, starts: jax.Array, sequence_length: int,
                     maximize_nonterminal: bool) -> jax.Array:
    """[B, L] physical indices of the sequences drawn at age positions `starts` [B] (0 = oldest entry).

    Each start must lie in [0, count - L]; `maximize_nonterminal` (static) applies the episode shift.
    """
    L = sequence_length
    size = buffer.action.shape[0]
    oldest = _oldest_index(buffer)
    starts = jnp.asarray(starts, jnp.int32)
    if maximize_nonterminal:
        window = starts[:, None] - L + 1 + jnp.arange(2 * L - 1)               # [B, 2L-1] age positions
        ends = buffer.terminated | buffer.truncated                            # [S]
        # Masking positions before the oldest is belt and braces: the shift's clamp to 0 covers them too.
        window_ends = ends[(oldest + window) % size] & (window >= 0)           # [B, 2L-1]
        starts = jax.vmap(_sequence_start, in_axes=(0, 0, None))(window_ends, starts, L)
    positions = starts[:, None] + jnp.arange(L)                                # [B, L] age positions
    return (oldest + positions) % size


def sample_sequences(buffer: ReplayBuffer, key: jax.Array, batch_size: int, sequence_length: int,
                     maximize_nonterminal: bool) -> SequenceBatch:
    """Draws `batch_size` contiguous sequences of `sequence_length` entries.

    Starts are uniform over the sequences that do not cross the newest/oldest boundary; call only when
    `can_sample(buffer, sequence_length)`. With `maximize_nonterminal`, a sequence holding an episode end
    ends on it, or starts at that episode's first step if the episode is shorter than the sequence.
    """
    # One 32-bit draw modulo the number of starts (at most the capacity): a relative bias under capacity / 2^32
    # (2e-5 for 100,000 entries). jax.random.randint is exact, but it splits its key and draws twice: on CPU
    # 20 more kernels and two more loops in the reference config's update
    # (`git show f1b95ab:bench/README.md`, "Fewer random draws").
    num_starts = jnp.maximum(buffer.count - sequence_length + 1, 1).astype(jnp.uint32)
    starts = (jax.random.bits(key, (batch_size,), jnp.uint32) % num_starts).astype(jnp.int32)  # [B]
    idx = sequence_indices(buffer, starts, sequence_length, maximize_nonterminal)           # [B, L]
    return SequenceBatch(obs=buffer.obs[idx], action=buffer.action[idx], reward=buffer.reward[idx],
                         terminated=buffer.terminated[idx], truncated=buffer.truncated[idx])


def pack_frame(obs: jax.Array) -> jax.Array:
    """One binary frame [*frame_shape] (nonzero = 1) -> [ceil(size/8)] uint8, eight pixels per byte."""
    return jnp.packbits(obs.reshape(-1) != 0)


def unpack_frames(packed: jax.Array, frame_shape: tuple) -> jax.Array:
    """[..., ceil(size/8)] uint8 from `pack_frame` -> [..., *frame_shape] uint8 of 0/1."""
    size = math.prod(frame_shape)
    return jnp.unpackbits(packed, axis=-1, count=size).reshape(*packed.shape[:-1], *frame_shape)
