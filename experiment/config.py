"""Experiment configuration: one frozen, typed dataclass of hyper-parameters with help texts.
Loaded from JSON plus KEY=VALUE overrides; every user mistake raises ConfigError with one sentence."""

import copy
import dataclasses
import difflib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

JAX_FAMILIES = ("gymnax_env", "open_grid_env", "brax_env", "craftax_env")  # written in JAX: the loop compiles
# env_config keys besides env_name that a JAX family takes, each an integer >= 1 (brax: its time limit in physics
# steps and the physics steps per action)
JAX_FAMILY_KEYS = {"brax_env": ("episode_length", "action_repeat")}
PYTHON_FAMILIES = ("gymnasium_env", "gym_env")  # Python objects, stepped between the agent's jitted pieces
# A pool of games stepped in C++ threads, inside the compiled loop (jax_env) or from Python; its env_config keys
# are checked by envs/atari_envs.py
POOL_FAMILIES = ("atari_env",)
# Python objects too, with env_config keys of their own that their module checks (envs/dmc_envs.py)
KEYED_PYTHON_FAMILIES = ("dmc_env",)


class ConfigError(Exception):
    """A user mistake in the configuration or command line: the message is one sentence."""


def _opt(default, help, *, ge=None, gt=None, le=None, choices=None):
    """A config field: its default, a one-line help text and the checks its value must pass."""
    checks = {"ge": ge, "gt": gt, "le": le, "choices": choices}
    metadata = {"help": help, **{name: bound for name, bound in checks.items() if bound is not None}}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class EnvConfig:
    """Which environment to build; set from the command line as env_config.KEY=VALUE."""

    env_name: str = _opt("SpaceInvaders-MinAtar", "environment id: a gymnax name such as Breakout-MinAtar, a brax "
                         "name such as inverted_pendulum, a gymnasium/gym id such as CartPole-v1 or "
                         "MinAtar/SpaceInvaders-v1, or a DeepMind Control Suite DOMAIN-TASK such as walker-walk")
    # Every other env_config key (e.g. "max_episode_steps": 200) is a keyword argument for gymnasium/gym `make`,
    # or one of the keys a JAX family takes (JAX_FAMILY_KEYS: brax's episode_length and action_repeat).
    make_kwargs: dict = field(default_factory=dict, metadata={"help": "extra keys passed to make", "extra": True})

    def __post_init__(self):
        _check_fields(self, "env_config.")


@dataclass(frozen=True)
class Config:
    """Every hyper-parameter of one experiment; constructing one validates it."""

    num_seeds: int = _opt(5, "independent seeds run side by side in one vmapped program", ge=1)
    update_seed_batch: int = _opt(
        0, "seeds whose training updates run together as one vmapped batch, batch after batch; fewer use less "
        "memory. 0: on GPU/TPU all seeds at once, or the fewest batches that fit in device memory; on CPU all "
        "seeds for small models, one at a time for larger ones (agent_environment_interaction_loop."
        "update_seed_batch). A value that does not divide num_seeds compiles a second copy of the update for the "
        "remaining seeds", ge=0)
    eval_frequency: int = _opt(500, "env steps per compiled block, i.e. between two metric logs", ge=1)
    checkpoint_frequency: int = _opt(10_000, "env steps between checkpoints, used by checkpointing", ge=1)
    model_alpha: float = _opt(2e-4, "world-model learning rate", gt=0)
    pi_alpha: float = _opt(4e-5, "actor learning rate", gt=0)
    V_alpha: float = _opt(1e-4, "critic learning rate", gt=0)
    target_update_frequency: int = _opt(100, "env steps between target-critic updates", ge=1)
    eps_adam: float = _opt(1e-5, "AdamW epsilon", gt=0)
    wd_adam: float = _opt(1e-6, "AdamW weight decay", ge=0)
    beta: float = _opt(1e-3, "actor entropy coefficient", ge=0)
    actor_unimix: float = _opt(
        0.0, "fraction of the uniform distribution mixed into the policy's action probabilities (DreamerV3 uses "
        "0.01): every action keeps at least actor_unimix / num_actions probability", ge=0, le=0.99)
    continuous_actor: str = _opt(
        "truncated_normal", "policy for continuous (Box) actions, over [-1, 1] per component: truncated_normal "
        "(DreamerV2: mean tanh, std in [actor_min_std, 2 + actor_min_std]) or bounded_normal (DreamerV3: mean "
        "tanh, std in [0.1, 1], samples clipped to [-1, 1])", choices=("truncated_normal", "bounded_normal"))
    actor_min_std: float = _opt(0.1, "smallest std of the truncated_normal policy", gt=0)
    actor_gradient: str = _opt(
        "auto", "the actor's gradient: reinforce (log-probability times advantage), dynamics (the lambda-returns "
        "backpropagated through the imagined actions and the learned model, whose parameters it does not "
        "update; discrete actions as straight-through one-hot samples), or mix (actor_grad_mix of dynamics, the "
        "rest reinforce); auto: dynamics for continuous actions (DreamerV2, and DreamerV3 as published in 2023), "
        "reinforce for discrete ones (both)",
        choices=("auto", "reinforce", "dynamics", "mix"))
    actor_grad_mix: float = _opt(0.1, "weight of the dynamics gradient where actor_gradient is mix", ge=0, le=1)
    return_normalization: bool = _opt(
        False, "divide the actor's advantages by max(1, S), S an EMA of the 95th minus 5th percentile of the "
        "imagined lambda-returns (DreamerV3), so that beta weighs the entropy against returns of any scale")
    return_scale_decay: float = _opt(0.99, "EMA decay of the return scale S used by return_normalization",
                                     ge=0, le=1)
    grad_clip: float = _opt(100.0, "global gradient-norm clip", gt=0)
    model_eps_adam: float = _opt(0.0, "world-model AdamW epsilon; 0: eps_adam (DreamerV3: 1e-8)", ge=0)
    model_grad_clip: float = _opt(0.0, "world-model global gradient-norm clip; 0: grad_clip (DreamerV3: 1000)",
                                  ge=0)
    num_features: int = _opt(32, "number of latent variables", ge=1)
    feature_width: int = _opt(32, "classes per categorical latent variable", ge=2)
    num_hidden_units: int = _opt(200, "units per hidden layer", ge=1)
    num_hidden_layers: int = _opt(3, "hidden layers per MLP", ge=1)
    num_conv_filters: int = _opt(16, "filters of the first conv layer, doubled at each further layer", ge=1)
    conv_depth: int = _opt(3, "conv layers in the encoder and decoder", ge=1)
    image_network: str = _opt(
        "auto", "the network of image observations: strided, stride-2 4x4 convolutions down to 4x4 and "
        "transposed ones back up (DreamerV2/V3's, for frames of 16 pixels a side or more); small, "
        "num_conv_filters x conv_depth 3x3 stride-1 convolutions at full resolution (MinAtar-sized frames); auto, "
        "strided where the frame's smaller side is at least 16 pixels and it fits (networks.strided_layout), "
        "else small", choices=("auto", "strided", "small"))
    cnn_depth: int = _opt(32, "channels of the strided network's first convolution, doubled at each further one "
                          "(DreamerV3 size S: 32)", ge=1)
    num_steps: int = _opt(5_000_000, "total env steps per seed", ge=1)
    buffer_size: int = _opt(100_000, "replay capacity in env steps per seed", ge=1)
    batch_size: int = _opt(50, "sequences per training batch", ge=1)
    sequence_length: int = _opt(50, "env steps per training sequence", ge=2)
    lmbda: float = _opt(0.95, "lambda of the lambda-returns", ge=0, le=1)
    discount: float = _opt(0.99, "discount factor", ge=0, le=1)
    training_start_time: int = _opt(5000, "env steps of acting before the first training update", ge=0)
    rollout_length: int = _opt(10, "imagination horizon in model steps", ge=1)
    train_frequency: int = _opt(10, "env steps between training updates", ge=1)
    KL_prior_weight: float = _opt(0.08, "weight of the KL term that trains the prior", ge=0)
    KL_posterior_weight: float = _opt(0.02, "weight of the KL term that trains the posterior", ge=0)
    posterior_entropy_weight: float = _opt(0.01, "weight of the posterior entropy bonus", ge=0)
    reward_weight: float = _opt(1.0, "weight of the reward log-likelihood", ge=0)
    termination_weight: float = _opt(1.0, "weight of the termination log-likelihood", ge=0)
    state_prediction_weight: float = _opt(1.0, "weight of the observation log-likelihood", ge=0)
    activation: str = _opt("elu", "hidden-layer activation", choices=("elu", "relu", "silu", "gelu", "tanh"))
    layer_norm: bool = _opt(False, "LayerNorm before the activation in every MLP hidden layer, and in the GRU "
                            "(DreamerV3, with activation silu)")
    symlog_inputs: bool = _opt(False, "pass observations through symlog before an MLP encoder (DreamerV3; conv "
                               "encoders see images as they are)")
    symlog_observations: bool = _opt(False, "decode non-binary observations by squared error in symlog space "
                                     "(DreamerV3) instead of a unit-variance Gaussian")
    twohot_reward: bool = _opt(False, "reward head as a categorical over twohot_bins symlog bins, trained on "
                               "two-hot targets (DreamerV3) instead of a Gaussian")
    twohot_critic: bool = _opt(False, "critic as a categorical over twohot_bins symlog bins, trained on two-hot "
                               "targets (DreamerV3) instead of a Gaussian")
    twohot_bins: int = _opt(255, "bins of the two-hot reward and critic heads, evenly spaced on [-20, 20] in "
                            "symlog space", ge=2)
    twohot_space: str = _opt(
        "symlog", "where the two-hot heads encode and average: symlog (DreamerV3 2023: two-hot of symlog(x) over "
        "the bins, prediction symexp of the expected bin, which underestimates the mean of a target that varies "
        "from sample to sample) or raw (its later release: the bins mapped through symexp, two-hot of x itself, "
        "prediction the expected bin)", choices=("symlog", "raw"))
    zero_init_heads: bool = _opt(False, "initialise the reward and critic output layers to zero, so both predict "
                                 "0 at the start (DreamerV3)")
    free_nats: float = _opt(0.0, "free bits: each KL term is clipped below this many nats, so it has no gradient "
                            "there (DreamerV3: 1)", ge=0)
    latent_unimix: float = _opt(0.0, "fraction of the uniform distribution mixed into every categorical latent "
                                "(DreamerV3: 0.01)", ge=0, le=0.99)
    slow_critic_rate: float = _opt(
        0.0, "0: the target critic is a copy of the critic refreshed every target_update_frequency env steps; "
        "> 0: a slow copy moved this fraction of the way to the critic at every update (DreamerV3: 0.02)", ge=0, le=1)
    slow_critic_weight: float = _opt(0.0, "weight of the regulariser pulling the critic toward the target "
                                     "critic's predictions (DreamerV3: 1)", ge=0)
    return_critic: str = _opt("target", "which critic's values the lambda-returns bootstrap from: the target "
                              "critic (DreamerV2) or the critic being trained (DreamerV3)",
                              choices=("target", "online"))
    learn_reward_variance: bool = _opt(False, "learn the reward head's variance instead of fixing it to 1")
    maximize_nonterminal: bool = _opt(
        True, "shift a replayed sequence holding an episode end to end on it or start at its episode's start "
        "(the DreamerV2 reference's sampling; DreamerV3 draws sequences uniformly: false). With it, an episode "
        "longer than sequence_length ends at the sequence's last step, a fixed number of steps after the "
        "model's zero start state, which the termination head can learn instead of the states that end episodes")
    no_conv: bool = _opt(False, "use MLP encoder and decoder even for image observations")
    latent_type: str = _opt("categorical", "distribution of the latent variables", choices=("categorical", "gaussian"))
    environment: str = _opt("gymnax_env", "environment family", choices=JAX_FAMILIES + POOL_FAMILIES + PYTHON_FAMILIES
                            + KEYED_PYTHON_FAMILIES)
    binary_state: bool = _opt(True, "observations are 0/1: Bernoulli likelihood and compact replay storage")
    jax_env: bool = _opt(True, "run the whole loop compiled (JAX environments only); false steps the "
                         "environments in Python between the agent's jitted pieces")
    eval_every: int = _opt(
        0, "env steps between evaluations: after each block that crosses a multiple of it, eval_episodes episodes "
        "per seed on environments of their own, which change neither the training run nor its random stream; "
        "0: no evaluation", ge=0)
    eval_episodes: int = _opt(5, "episodes per seed and evaluation", ge=1)
    eval_policy: str = _opt("mode", "actions in evaluation: the policy's most likely action (mode) or a sample",
                            choices=("mode", "sample"))
    eval_max_steps: int = _opt(10_000, "env steps per seed and evaluation at most; episodes unfinished by then "
                               "are left out of eval_return", ge=1)
    video_every: int = _opt(
        10_000, "with --video: env steps between videos (after each block that crosses a multiple of it, and at "
        "the end of the run): one episode of the agent per seed and the world model's predictions beside it",
        ge=1)
    video_max_frames: int = _opt(500, "frames of an episode video at most (at least the 5 frames of context the "
                                 "model's open-loop prediction starts from, and 5 it predicts)", ge=10)
    env_config: EnvConfig = field(default_factory=EnvConfig, metadata={"help": "environment settings"})
    sweep: dict = field(default_factory=dict, metadata={
        "help": "hyper-parameter sweep: {KEY: [V1, V2, ...]} for sweepable keys (SWEEPABLE_KEYS); the run holds "
                "every combination of the values (a variant) with num_seeds seeds each, vmapped in one program"})

    def __post_init__(self):
        _check_fields(self, "")
        if self.buffer_size < self.sequence_length:
            raise ConfigError(
                f"buffer_size must be >= sequence_length ({self.sequence_length}), got {self.buffer_size}")
        if self.training_start_time < self.sequence_length:
            raise ConfigError(f"training_start_time must be >= sequence_length ({self.sequence_length}), "
                              f"got {self.training_start_time}")
        if self.environment in JAX_FAMILIES:
            _check_family_keys(self.environment, self.env_config.make_kwargs)
        if self.jax_env and self.environment in PYTHON_FAMILIES + KEYED_PYTHON_FAMILIES:
            raise ConfigError(f"environment {self.environment} is not written in JAX, so jax_env must be false")
        object.__setattr__(self, "sweep", _checked_sweep(self.sweep))

    @property
    def num_runs(self) -> int:
        """Runs side by side in the program: every variant of the sweep with num_seeds seeds each."""
        return self.num_seeds * math.prod(len(values) for values in self.sweep.values())


def _check_family_keys(environment: str, env_kwargs: dict) -> None:
    """A JAX family's env_config keys besides env_name: those it takes (JAX_FAMILY_KEYS), integers >= 1."""
    taken = JAX_FAMILY_KEYS.get(environment, ())
    for key in sorted(env_kwargs):
        if key not in taken:
            if not taken:
                raise ConfigError(f"{_unknown_key('env_config.' + key)} (extra env_config keys are keyword "
                                  f"arguments for make, taken by {' and '.join(PYTHON_FAMILIES)} only)")
            close = difflib.get_close_matches(key, taken, n=1)
            hint = f"did you mean 'env_config.{close[0]}'? " if close else ""
            raise ConfigError(f"unknown config key 'env_config.{key}'; {hint}{environment} takes "
                              f"{' and '.join('env_config.' + k for k in taken)} besides env_config.env_name")
        value = env_kwargs[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"env_config.{key} must be an integer >= 1, got {value!r}")


# DreamerV3's changes to DreamerV2, as the values of this config's keys (the 2023 paper's; docs/dreamerv3.md
# says where a later release of its code differs). configs/dreamerv3.json and configs/dreamerv3_small.json hold
# them all; any one of them can be set in a DreamerV2 config for an ablation.
DREAMERV3 = {
    "activation": "silu", "layer_norm": True,  # LayerNorm + SiLU in the MLPs and the GRU
    "symlog_inputs": True, "symlog_observations": True,  # symlog encoder inputs, symlog squared-error decoding
    "twohot_reward": True, "twohot_critic": True, "twohot_bins": 255, "zero_init_heads": True,
    "return_normalization": True, "return_scale_decay": 0.99,  # advantages / max(1, S)
    "free_nats": 1.0, "KL_prior_weight": 0.5, "KL_posterior_weight": 0.1, "posterior_entropy_weight": 0.0,
    "latent_unimix": 0.01, "actor_unimix": 0.01,
    "continuous_actor": "bounded_normal",  # with actor_gradient auto: the dynamics gradient, as in 2023
    "slow_critic_rate": 0.02, "slow_critic_weight": 1.0, "return_critic": "online",
    "maximize_nonterminal": False,  # replayed sequences drawn uniformly, not shifted onto episode ends
    "discount": 0.997, "lmbda": 0.95, "rollout_length": 15, "beta": 3e-4,
    "model_alpha": 1e-4, "model_eps_adam": 1e-8, "model_grad_clip": 1000.0,  # Adam per module
    "pi_alpha": 3e-5, "V_alpha": 3e-5, "eps_adam": 1e-5, "grad_clip": 100.0, "wd_adam": 0.0,
}


# Keys that only change what is observed of a run (evaluation episodes, videos), never the run itself: a resume
# may change them.
OBSERVATION_KEYS = ("eval_every", "eval_episodes", "eval_policy", "eval_max_steps", "video_every", "video_max_frames")


# Keys whose values only enter the computation as numbers (learning rates, loss weights, the entropy scale,
# discount, λ, optimizer constants): a sweep holds them as per-run arrays in the run state, vmapped with the
# seeds. Every other key sets a shape, a loop length, a branch or the environment, and so one program.
SWEEPABLE_KEYS = ("model_alpha", "pi_alpha", "V_alpha", "eps_adam", "wd_adam", "grad_clip", "beta", "actor_unimix",
                  "return_scale_decay", "discount", "lmbda", "KL_prior_weight", "KL_posterior_weight",
                  "posterior_entropy_weight", "reward_weight", "termination_weight", "state_prediction_weight",
                  "free_nats", "slow_critic_weight")


def _checked_sweep(sweep: dict) -> dict:
    """The sweep with each value checked and converted like the key's own value would be; ConfigError names the
    first mistake (a key that cannot be swept, an empty or repeated list, a value the key refuses)."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    checked = {}
    for key, values in sweep.items():
        if key not in SWEEPABLE_KEYS:
            what = "is not a config key" if key not in fields else "changes shapes or control flow"
            raise ConfigError(f"sweep key {key!r} {what}; the sweepable keys are {', '.join(SWEEPABLE_KEYS)}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{key} must be a non-empty list of values, got {values!r}")
        coerced = [_coerce(f"sweep.{key}", value, float) for value in values]
        valid = _valid_text(fields[key].metadata)
        for value in coerced:
            if valid and not _in_range(value, fields[key].metadata):
                raise ConfigError(f"sweep.{key} values must be {valid}, got {value!r}")
        if len(set(coerced)) < len(coerced):
            raise ConfigError(f"sweep.{key} lists a value twice: {coerced}")
        checked[key] = coerced
    return checked


def sweep_variants(config: Config) -> list[dict[str, float]]:
    """The sweep's variants, {key: value} each: every combination of the swept values, the last key varying
    fastest (one empty variant without a sweep). Run r of the program is variant r // num_seeds, seed
    r % num_seeds."""
    keys = list(config.sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*(config.sweep[k] for k in keys))]


def variant_name(variant: dict[str, float]) -> str:
    """A variant's name in records, wandb and plots: "beta=0.01,pi_alpha=0.0003" ("" for no sweep)."""
    return ",".join(f"{key}={value:g}" for key, value in variant.items())


def parse_sweep_option(text: str) -> tuple[str, list]:
    """(key, values) of one --sweep KEY=V1,V2,... option; the values are checked with the config."""
    key, sep, values = text.partition("=")
    if not sep or not values.strip():
        raise ConfigError(f"--sweep {text!r} must have the form KEY=V1,V2,..., e.g. beta=0.001,0.01")
    return key.strip(), [_parse_text(value.strip(), float) for value in values.split(",")]


def with_sweep(config: Config, options: Sequence[str]) -> Config:
    """The config with the --sweep options added to its sweep (an option replaces the file's list of its key)."""
    if not options:
        return config
    sweep = dict(config.sweep)
    for option in options:
        key, values = parse_sweep_option(option)
        sweep[key] = values
    return dataclasses.replace(config, sweep=sweep)


def load_config(path: str | None, overrides: Sequence[str] = ()) -> Config:
    """The Config in JSON file `path` (None: all defaults) with "KEY=VALUE" overrides applied in order.

    Keys missing from the file take their defaults; dotted keys reach nested groups
    ("env_config.env_name=Breakout-MinAtar"). Raises ConfigError on any mistake.
    """
    raw = {} if path is None else _read_json(path)
    for override in overrides:
        _apply_override(raw, override)
    return _from_dict(Config, raw, "")


def config_from_dict(raw: dict[str, Any]) -> Config:
    """The Config of plain data as config_to_dict writes it (a checkpoint's or an exported policy's header),
    checked as a file is. Raises ConfigError on any mistake."""
    return _from_dict(Config, copy.deepcopy(raw), "")


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain JSON-serialisable data (env_config as a nested dict); load_config reads it back."""
    data = dataclasses.asdict(config)
    env_config = data.pop("env_config")
    data["env_config"] = {"env_name": env_config["env_name"], **env_config["make_kwargs"]}
    return data


def config_help() -> str:
    """One line per key: name, type, default, help text and valid values."""
    lines = []
    for name, f in _leaf_fields(Config, ""):
        valid = _valid_text(f.metadata)
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        lines.append(f"{name} ({f.type.__name__}, default {default!r}): {f.metadata['help']}"
                     + (f"; must be {valid}" if valid else ""))
    return "\n".join(lines)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path!r}: {error}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path!r} is not valid JSON: {error.msg} "
                          f"at line {error.lineno}, column {error.colno}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path!r} must hold a JSON object of config keys, got {type(raw).__name__}")
    return raw


def _apply_override(raw: dict, override: str) -> None:
    """Set one "KEY=VALUE" in the raw dict, decoding VALUE by the key's type; validation happens later."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"override {override!r} must have the form KEY=VALUE, e.g. num_steps=1000")
    *groups, leaf = key.split(".")
    cls, node = Config, raw
    for group in groups:
        cls = _field_types(cls).get(group)
        if not dataclasses.is_dataclass(cls):
            raise _unknown_key(key)
        node = node.setdefault(group, {})
        if not isinstance(node, dict):
            return  # the file's own value for this group is not an object: validation reports it
    if cls is EnvConfig and leaf not in _field_types(cls):
        node[leaf] = _parse_json_or_text(text)  # a keyword argument for make
        return
    if leaf not in _field_types(cls) or _is_extra(cls, leaf):
        raise _unknown_key(key)
    node[leaf] = _parse_text(text, _field_types(cls)[leaf])


def _parse_json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_text(text: str, typ: type) -> Any:
    """Decode override text by type; text that does not decode stays a str so validation names the mistake."""
    if typ is bool:
        return {"true": True, "1": True, "false": False, "0": False}.get(text.strip().lower(), text)
    if typ is dict:
        return _parse_json_or_text(text)
    if typ in (int, float):
        for parse in (int, float):  # "5e6" for an int becomes 5000000.0, accepted as integral
            try:
                return parse(text)
            except ValueError:
                pass
    return text


def _from_dict(cls: type, raw: dict, prefix: str) -> Any:
    if cls is EnvConfig:  # keys other than env_name are keyword arguments for make
        return EnvConfig(**{k: v for k, v in raw.items() if k == "env_name"},
                         make_kwargs={k: v for k, v in raw.items() if k != "env_name"})
    for key in raw:
        if key not in _field_types(cls) or _is_extra(cls, key):
            raise _unknown_key(prefix + key)
    return cls(**raw)


def _is_extra(cls: type, name: str) -> bool:
    return any(f.name == name and f.metadata.get("extra") for f in dataclasses.fields(cls))


def _check_fields(obj: Any, prefix: str) -> None:
    """Check every field's type and range, normalising lossless conversions (5000.0 -> 5000, 3 -> 3.0)."""
    for f in dataclasses.fields(obj):
        name = prefix + f.name
        value = _coerce(name, getattr(obj, f.name), f.type)
        valid = _valid_text(f.metadata)
        if valid and not _in_range(value, f.metadata):
            raise ConfigError(f"{name} must be {valid}, got {value!r}")
        object.__setattr__(obj, f.name, value)  # frozen, but this is still construction


_TYPE_NAMES = {bool: "a boolean (true or false)", int: "an integer", float: "a finite number", str: "a string"}


def _coerce(name: str, value: Any, typ: type) -> Any:
    if dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            return value
        if isinstance(value, dict):
            return _from_dict(typ, value, name + ".")
        expected = f"an object with keys {', '.join(k for k in _field_types(typ) if not _is_extra(typ, k))}"
    elif typ is dict:
        if isinstance(value, dict):
            return value
        expected = "an object"
    else:
        if typ is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, typ) and (typ is bool or not isinstance(value, bool)):
            if typ is not float or math.isfinite(value):
                return value
        expected = _TYPE_NAMES[typ]
    raise ConfigError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")


def _in_range(value: Any, meta: dict) -> bool:
    return (value in meta.get("choices", (value,))
            and ("ge" not in meta or value >= meta["ge"])
            and ("gt" not in meta or value > meta["gt"])
            and ("le" not in meta or value <= meta["le"]))


def _valid_text(meta: dict) -> str:
    """What a field accepts beyond its type, e.g. ">= 1", "in [0, 1]", "one of elu, relu"; "" if anything."""
    if "choices" in meta:
        return "one of " + ", ".join(meta["choices"])
    if "ge" in meta and "le" in meta:
        return f"in [{meta['ge']}, {meta['le']}]"
    return next((f"{op} {meta[key]}" for key, op in (("gt", ">"), ("ge", ">="), ("le", "<=")) if key in meta), "")


def _field_types(cls: type) -> dict[str, type]:
    return {f.name: f.type for f in dataclasses.fields(cls)}


def _leaf_fields(cls: type, prefix: str) -> Iterator[tuple[str, dataclasses.Field]]:
    """(dotted name, field) for every settable key, nested groups flattened."""
    for f in dataclasses.fields(cls):
        if f.metadata.get("extra"):
            continue
        if dataclasses.is_dataclass(f.type):
            yield from _leaf_fields(f.type, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


def _unknown_key(name: str) -> ConfigError:
    keys = [key for key, _ in _leaf_fields(Config, "")]
    close = [key for key in keys if key.endswith("." + name)] or difflib.get_close_matches(name, keys, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys are {', '.join(keys)}"
    return ConfigError(f"unknown config key {name!r}; {hint}")
