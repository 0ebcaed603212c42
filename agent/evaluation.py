"""What a run shows besides its training metrics: evaluation episodes and recorded episodes with the world
model's predictions beside them (drawn by outputs/videos.py), after the blocks that call for them.

Both play on environments of their own with keys of their own (folded from each run's seed with a tag of their
own, as experiment.runner.diagnostic_keys does), reading the run state without changing it: a run with them on has
the training numbers of a run without them. For JAX environments they are jitted functions vmapped over the
runs, run between blocks (a `while_loop` until every run has its episodes or the step cap, a `scan` of a
fixed number of frames for a recording); for Python environments (gymnasium, gym) they step one environment
object per run, apart from the training ones, between the agent's jitted pieces."""

import sys
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from agent.distributions import reward_head
from experiment.config import Config
from networks import RSSMState, make_world_model

EVALUATION_KEY_TAG = 0xE7A1  # folded into each run's PRNGKey(seed) for its evaluation episodes
VIDEO_KEY_TAG = 0x71DE  # folded into each run's PRNGKey(seed) for its recorded episodes
DREAM_CONTEXT = 5  # frames of a recorded episode the model observes before it predicts open loop
DREAM_HORIZON = 15  # frames the model predicts open loop, from the context's last state and the real actions


def observation_keys(seeds, tag: int, env_steps: int) -> jax.Array:
    """[len(seeds), 2] keys for what is observed at `env_steps`, apart from the runs' own keys: each run's
    PRNGKey(seed) folded with `tag`, then with the env step."""
    return jnp.stack([jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), tag), env_steps)
                      for seed in seeds])


def crosses(steps: int, size: int, every: int) -> bool:
    """Whether the block of `size` env steps ending at `steps` crosses a multiple of `every` (0: never)."""
    return every > 0 and steps // every > (steps - size) // every


class Policy(NamedTuple):
    """How one run chooses actions in an episode, carrying a state of its own (the agent's RSSM carry)."""

    init: Callable  # () -> carry at an episode's start
    act: Callable  # (carry, obs, key) -> (action [], aux): aux is what advance needs besides the action
    advance: Callable  # (carry, aux, action, episode_end) -> carry for the next observation


def agent_policy(config: Config, agent, params, hparams, greedy: bool) -> Policy:
    """One run's agent as a Policy: its posterior from each observation, then its policy's mode (`greedy`) or a
    sample; the carry is the RSSM's deterministic state, restarted after an episode end as in training."""
    return Policy(init=lambda: jnp.zeros(config.num_hidden_units, jnp.float32),
                  act=lambda h, obs, key: agent.act(params, hparams, h, obs, key, greedy),
                  advance=lambda h, z, action, end: agent.next_h(params, h, z, action, end))


class Episodes(NamedTuple):
    """The episodes of one evaluation, in the order they ended; unfinished slots hold NaN and 0."""

    returns: jax.Array  # [N] float32 undiscounted return, NaN where the episode did not finish
    lengths: jax.Array  # [N] int32 env steps, 0 where the episode did not finish


def run_episodes(env, policy: Policy, key, num_episodes: int, max_steps: int) -> Episodes:
    """Plays `num_episodes` episodes of JAX environment `env` (auto-resetting) from a fresh reset, or as many as
    end within `max_steps` env steps. Traceable: jit and vmap it."""
    reset_key, key = jax.random.split(key)
    env_state, obs = env.reset(reset_key)

    def unfinished(loop):
        *_, done, steps, _ = loop
        return (done < num_episodes) & (steps < max_steps)

    def step(loop):
        env_state, obs, carry, episode_return, episode_length, returns, lengths, done, steps, key = loop
        key, act_key, env_key = jax.random.split(key, 3)
        action, aux = policy.act(carry, obs, act_key)
        env_state, obs, reward, terminated, truncated = env.step(env_key, env_state, action)
        end = terminated | truncated
        episode_return, episode_length = episode_return + reward, episode_length + 1
        slot = jnp.minimum(done, num_episodes - 1)
        returns = returns.at[slot].set(jnp.where(end, episode_return, returns[slot]))
        lengths = lengths.at[slot].set(jnp.where(end, episode_length, lengths[slot]))
        return (env_state, obs, policy.advance(carry, aux, action, end), jnp.where(end, 0.0, episode_return),
                jnp.where(end, 0, episode_length), returns, lengths, done + end.astype(jnp.int32), steps + 1, key)

    loop = (env_state, obs, policy.init(), jnp.float32(0.0), jnp.int32(0),
            jnp.full(num_episodes, jnp.nan, jnp.float32), jnp.zeros(num_episodes, jnp.int32), jnp.int32(0),
            jnp.int32(0), key)
    loop = jax.lax.while_loop(unfinished, step, loop)
    return Episodes(loop[5], loop[6])


class Recording(NamedTuple):
    """One episode as the agent saw it, [T] steps of a fixed T; steps after the episode's end are padding."""

    obs: jax.Array  # [T, *obs] the observation acted on at each step
    action: jax.Array  # [T] int32, or [T, A] float32 for continuous actions
    reward: jax.Array  # [T] float32 reward of the step's transition
    length: jax.Array  # [] int32 steps of the episode recorded (T if it did not end within them)


def record_episode(env, policy: Policy, key, num_frames: int) -> Recording:
    """Plays one episode of JAX environment `env` from a fresh reset for at most `num_frames` steps, recording
    what the policy saw and did (a `while_loop`: it stops at the episode's end). Traceable: jit and vmap it."""
    reset_key, key = jax.random.split(key)
    env_state, obs = env.reset(reset_key)

    def running(loop):
        *_, steps, ended, _ = loop
        return ~ended & (steps < num_frames)

    def step(loop):
        env_state, obs, carry, recording, steps, ended, key = loop
        key, act_key, env_key = jax.random.split(key, 3)
        action, aux = policy.act(carry, obs, act_key)
        env_state, next_obs, reward, terminated, truncated = env.step(env_key, env_state, action)
        end = terminated | truncated
        recording = Recording(recording.obs.at[steps].set(obs), recording.action.at[steps].set(action),
                              recording.reward.at[steps].set(reward), steps + 1)
        return env_state, next_obs, policy.advance(carry, aux, action, end), recording, steps + 1, end, key

    spec = env.spec
    empty = Recording(jnp.zeros((num_frames, *obs.shape), obs.dtype),
                      jnp.zeros((num_frames, *spec.action_shape), spec.action_dtype),
                      jnp.zeros(num_frames, jnp.float32), jnp.int32(0))
    loop = (env_state, obs, policy.init(), empty, jnp.int32(0), jnp.bool_(False), key)
    return jax.lax.while_loop(running, step, loop)[3]


class Dream(NamedTuple):
    """The world model's view of the first DREAM_CONTEXT + DREAM_HORIZON steps of a recording, in observation
    space (probabilities for binary observations, means otherwise)."""

    reconstruction: jax.Array  # [T, *obs] decoded posterior: every frame observed
    prediction: jax.Array  # [T, *obs] the reconstruction for the context frames, then the open-loop prediction
    reward: jax.Array  # [T] predicted reward of each step's transition, open loop from the context's last step


def dream(config: Config, wm, wm_params, obs, action, key, context: int = DREAM_CONTEXT) -> Dream:
    """Reconstruction and open-loop prediction of one recorded sequence obs [T, *obs], action [T] (no episode end
    inside it): the posterior observes every frame for the reconstruction (RSSM.observe); the prediction
    observes frames 0..context-1, then rolls the prior forward with the recorded actions (RSSM.imagine)."""
    c = config
    observe_key, open_loop_key = jax.random.split(key)

    def decoded(feat):  # in observation space: a pixel's probability for binary frames, else the prediction
        out = wm.decode(wm_params, feat)
        return jax.nn.sigmoid(out) if c.binary_state else wm.observation(out).mode()

    steps = action.shape[0]
    embeds = wm.encode(wm_params, obs[None].astype(jnp.float32))  # [1, T, E]
    seq = wm.rssm.observe(wm_params, embeds, action[None], jnp.zeros((1, steps), bool), observe_key)
    h, z, next_h = seq.h[0], seq.z[0], seq.next_h[0]  # [T, ...]
    reconstruction = decoded(jnp.concatenate([h, z], -1))

    # From the last context step's posterior, transitions context-1 .. T-1 lead to the states of frames
    # context .. T (the last one past the window: only its reward is shown).
    start = RSSMState(h[context - 1], z[context - 1])
    open_loop = wm.rssm.imagine(wm_params, start, action[context - 1:], steps - context + 1, open_loop_key)
    predicted = decoded(jnp.concatenate([open_loop.h[:-1], open_loop.z[:-1]], -1))
    prediction = jnp.concatenate([reconstruction[:context], predicted], 0)
    # the reward of transition t reads the state after it: the posterior's for t < context - 1, then open loop
    reward_h = jnp.concatenate([next_h[:context - 1], open_loop.h], 0)  # [T, H]
    return Dream(reconstruction, prediction, reward_head(c)(wm.reward(wm_params, reward_h)).mean)


def dream_length(num_frames: int) -> int:
    """Steps of a recording the dream covers: the context and the open-loop horizon, within the recording."""
    return min(num_frames, DREAM_CONTEXT + DREAM_HORIZON)


class RunObserver:
    """Evaluation episodes and videos for the runs of one program (experiment.runner.runs_of), after the blocks that
    call for them. `after_block` adds the `eval_*` fields to the block's records and returns the media files
    written for each run."""

    def __init__(self, config: Config, env, agent, runs, video_dir: str | None = None):
        self.config, self.env, self.agent, self.runs, self.video_dir = config, env, agent, runs, video_dir
        self.python = getattr(env, "is_python", False)
        self.greedy = config.eval_policy == "mode"
        self.wm = make_world_model(config, env.spec.obs_shape, env.spec.num_actions, env.spec.obs_dtype)
        self._evaluate = self._record = self._dream = None  # jitted at their first use
        self._python_envs = None
        # Python environments draw the recorded episode with their rgb_array render where they have one
        self._render = self.python and video_dir is not None
        self._rendered = None  # each run's rendered frames of its last recorded episode, or None

    def wants(self, steps: int, size: int) -> tuple[bool, bool]:
        """(evaluate, record videos) after the block of `size` env steps that ended at `steps`."""
        c = self.config
        video = self.video_dir is not None and (crosses(steps, size, c.video_every) or steps == c.num_steps)
        return crosses(steps, size, c.eval_every), video

    def after_block(self, state, records: list[dict], size: int) -> list[dict] | None:
        """Adds the `eval_*` fields to the block's records where it calls for evaluation; where it calls for
        videos, returns each run's recorded episode (`recordings`), else None."""
        steps = int(state.env_steps[0])
        evaluate, video = self.wants(steps, size)
        if evaluate:
            episodes = self.evaluate(state, steps)
            for record, returns, lengths in zip(records, np.asarray(episodes.returns), np.asarray(episodes.lengths)):
                finished = np.isfinite(returns)
                record["eval_return"] = float(np.mean(returns[finished])) if finished.any() else None
                record["eval_returns"] = [float(r) for r in returns[finished]]
                record["eval_length"] = float(np.mean(lengths[finished])) if finished.any() else None
        return self.recordings(state, steps) if video else None

    def recordings(self, state, steps: int) -> list[dict]:
        """Each run's episode recorded at env step `steps`, as host arrays without the run axis: {"recording":
        Recording, "dream": Dream, "rendered": the environment's frames or None}; the videos sink
        (outputs.videos.VideoFiles) draws them."""
        recording, dreamed = self.record(state, steps)
        return [{"recording": jax.tree.map(lambda x: np.asarray(x[i]), recording),
                 "dream": jax.tree.map(lambda x: np.asarray(x[i]), dreamed),
                 "rendered": self._rendered[i] if self._rendered else None}
                for i in range(len(self.runs.seeds))]

    def _policy(self, params, hparams, greedy):
        return agent_policy(self.config, self.agent, params, hparams, greedy)

    def evaluate(self, state, steps: int) -> Episodes:
        """Each run's evaluation episodes at env step `steps`, [runs, eval_episodes] each."""
        c = self.config
        keys = observation_keys(self.runs.seeds, EVALUATION_KEY_TAG, steps)
        acting_params = state.params._replace(critic=None, target_critic=None)
        if self.python:
            return self._python_episodes(acting_params, state.hparams, keys, steps, c.eval_episodes,
                                         c.eval_max_steps)
        if self._evaluate is None:
            def evaluate(params, hparams, key):
                return run_episodes(self.env, self._policy(params, hparams, self.greedy), key, c.eval_episodes,
                                    c.eval_max_steps)
            self._evaluate = jax.jit(jax.vmap(evaluate))
        return jax.device_get(self._evaluate(acting_params, state.hparams, keys))

    def record(self, state, steps: int) -> tuple[Recording, Dream]:
        """Each run's recorded episode at env step `steps` (acting as evaluation does) and the model's dream of
        its first steps, with a leading run axis."""
        c = self.config
        keys = observation_keys(self.runs.seeds, VIDEO_KEY_TAG, steps)
        acting_params = state.params._replace(critic=None, target_critic=None)
        frames = dream_length(c.video_max_frames)
        if self._dream is None:
            def dream_of(wm_params, obs, action, key):
                return dream(c, self.wm, wm_params, obs[:frames], action[:frames], key)
            self._dream = jax.jit(jax.vmap(dream_of))
        dream_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 1)
        if self.python:
            recording = self._python_recording(acting_params, state.hparams, keys, steps)
        else:
            if self._record is None:
                def record(params, hparams, key):
                    return record_episode(self.env, self._policy(params, hparams, self.greedy), key,
                                          c.video_max_frames)
                self._record = jax.jit(jax.vmap(record))
            recording = self._record(acting_params, state.hparams, keys)
        dreamed = self._dream(acting_params.world_model, recording.obs, recording.action, dream_keys)
        return jax.device_get(recording), jax.device_get(dreamed)

    # Python environments: one object per run besides the training ones, stepped on the host.

    def _python_setup(self, steps: int, tag: int):
        if self._python_envs is None:
            self._python_envs = [self._python_instance(seed) for seed in self.runs.seeds]
            agent, greedy = self.agent, self.greedy
            self._act = jax.jit(jax.vmap(lambda p, hp, h, o, k: agent.act(p, hp, h, o, k, greedy)))
            self._next_h = jax.jit(jax.vmap(agent.next_h))
        for env, seed in zip(self._python_envs, self.runs.seeds):
            env.reseed(int(np.random.SeedSequence([seed, tag, steps]).generate_state(1)[0]))
        return np.stack([env.reset(None) for env in self._python_envs])

    def _python_instance(self, seed: int):
        if self._render:
            try:
                return self.env.instance(seed, render=True)
            except Exception as error:  # noqa: BLE001 - the env has no rgb_array render: draw observations
                self._no_render(error)
        return self.env.instance(seed)

    def _no_render(self, error: BaseException):
        if self._render:
            print(f"warning: {self.config.env_config.env_name} cannot render rgb_array frames "
                  f"({type(error).__name__}: {error}); videos draw its observations where they are images",
                  file=sys.stderr)
        self._render = False

    def _python_steps(self, params, hparams, keys, obs, steps: int, render: bool = False):
        """Yields (obs, actions, rewards, episode ends, rendered frames or None) of every run's environment,
        step after step; the frames are rendered before the step, showing what `obs` shows."""
        h = jnp.zeros((len(self.runs.seeds), self.config.num_hidden_units), jnp.float32)
        for t in range(steps):
            step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, t)
            action, z = self._act(params, hparams, h, obs, step_keys)
            actions = np.asarray(action)
            frames = None
            if render and self._render:
                try:
                    frames = [env.render() for env in self._python_envs]
                except Exception as error:  # noqa: BLE001 - e.g. a renderer's missing dependency
                    self._no_render(error)
            outputs = [env.step(None, a) for env, a in zip(self._python_envs, actions)]
            next_obs, reward, terminated, truncated = (np.asarray(x) for x in zip(*outputs))
            end = terminated | truncated
            yield obs, actions, reward.astype(np.float32), end, frames
            h = self._next_h(params, h, z, action, jnp.asarray(end))
            obs = np.stack(next_obs)

    def _python_episodes(self, params, hparams, keys, steps, num_episodes, max_steps) -> Episodes:
        obs = self._python_setup(steps, EVALUATION_KEY_TAG)
        runs = len(self.runs.seeds)
        returns, lengths = np.full((runs, num_episodes), np.nan, np.float32), np.zeros((runs, num_episodes), np.int32)
        done, running_return, running_length = np.zeros(runs, int), np.zeros(runs, np.float32), np.zeros(runs, int)
        for _, _, reward, end, _ in self._python_steps(params, hparams, keys, obs, max_steps):
            running_return += reward
            running_length += 1
            for i in np.flatnonzero(end & (done < num_episodes)):
                returns[i, done[i]], lengths[i, done[i]] = running_return[i], running_length[i]
                done[i] += 1
            running_return[end], running_length[end] = 0.0, 0
            if (done >= num_episodes).all():
                break
        return Episodes(returns, lengths)

    def _python_recording(self, params, hparams, keys, steps) -> Recording:
        obs = self._python_setup(steps, VIDEO_KEY_TAG)
        frames = self.config.video_max_frames
        recorded, ended = [], np.zeros(len(self.runs.seeds), bool)
        lengths = np.zeros(len(self.runs.seeds), np.int32)
        rendered = [[] for _ in self.runs.seeds]
        for step in self._python_steps(params, hparams, keys, obs, frames, render=True):
            recorded.append(step[:3])
            for i, frame in enumerate(step[4] or []):
                if not ended[i]:
                    rendered[i].append(frame)
            lengths += ~ended
            ended |= step[3]
            if ended.all():
                break
        self._rendered = rendered if self._render and all(rendered) else None
        obs, action, reward = (np.stack(x, 1) for x in zip(*recorded))  # [runs, t, ...]
        pad = lambda x: np.concatenate([x, np.zeros((x.shape[0], frames - x.shape[1], *x.shape[2:]), x.dtype)], 1)
        return Recording(pad(obs), pad(action).astype(self.env.spec.action_dtype), pad(reward), lengths)

    def close(self):
        for env in self._python_envs or []:
            env.close()
