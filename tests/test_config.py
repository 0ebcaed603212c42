"""Unit tests for config.py: defaults, shipped files, validation messages, overrides, round trip."""

import dataclasses
import json
import pathlib

import pytest

from experiment.config import Config, ConfigError, EnvConfig, config_help, config_to_dict, load_config

ROOT = pathlib.Path(__file__).resolve().parent.parent

REFERENCE = {
    "num_seeds": 5, "eval_frequency": 500, "checkpoint_frequency": 10000, "model_alpha": 2e-4,
    "pi_alpha": 4e-5, "V_alpha": 1e-4, "target_update_frequency": 100, "eps_adam": 1e-5, "wd_adam": 1e-6,
    "beta": 1e-3, "grad_clip": 100.0, "num_features": 32, "feature_width": 32, "num_hidden_units": 200,
    "num_hidden_layers": 3, "num_conv_filters": 16, "conv_depth": 3, "num_steps": 5000000,
    "buffer_size": 100000, "batch_size": 50, "sequence_length": 50, "lmbda": 0.95, "discount": 0.99,
    "training_start_time": 5000, "rollout_length": 10, "train_frequency": 10, "KL_prior_weight": 0.08,
    "KL_posterior_weight": 0.02, "posterior_entropy_weight": 0.01, "reward_weight": 1.0,
    "termination_weight": 1.0, "state_prediction_weight": 1.0, "activation": "elu",
    "learn_reward_variance": False, "maximize_nonterminal": True, "no_conv": False,
    "latent_type": "categorical", "environment": "gymnax_env", "binary_state": True, "jax_env": True,
    "env_config": {"env_name": "SpaceInvaders-MinAtar"},
}
# Keys this project adds to the reference's: speed and memory settings that change no hyper-parameter,
# algorithm options whose defaults leave the reference's algorithm as it is, and what is observed of a run.
OWN_DEFAULTS = {"update_seed_batch": 0, "return_normalization": False, "return_scale_decay": 0.99, "actor_unimix": 0.0,
                "sweep": {}, "model_eps_adam": 0.0, "model_grad_clip": 0.0, "layer_norm": False,
                "symlog_inputs": False, "symlog_observations": False, "twohot_reward": False, "twohot_critic": False,
                "twohot_bins": 255, "twohot_space": "symlog", "zero_init_heads": False, "free_nats": 0.0,
                "latent_unimix": 0.0,
                "slow_critic_rate": 0.0, "slow_critic_weight": 0.0, "return_critic": "target",
                "eval_every": 0, "eval_episodes": 5, "eval_policy": "mode", "eval_max_steps": 10_000,
                "video_every": 10_000, "video_max_frames": 500, "continuous_actor": "truncated_normal",
                "actor_min_std": 0.1, "actor_gradient": "auto", "actor_grad_mix": 0.1, "image_network": "auto",
                "cnn_depth": 32}
DEFAULTS = {**REFERENCE, **OWN_DEFAULTS}


def write_json(tmp_path, data, name="c.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def assert_config_error(call, *fragments):
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_defaults_are_the_reference_values():
    assert config_to_dict(Config()) == DEFAULTS
    assert load_config(None) == Config()
    assert all(type(value) is type(DEFAULTS[key]) for key, value in config_to_dict(Config()).items())


def test_every_field_has_type_default_and_help():
    for f in dataclasses.fields(Config) + dataclasses.fields(EnvConfig):
        assert isinstance(f.type, type)
        assert f.metadata["help"] and "\n" not in f.metadata["help"]
    lines = config_help().splitlines()
    assert len(lines) == len(DEFAULTS)
    assert any(line.startswith("num_steps (int, default 5000000)") for line in lines)
    assert any(line.startswith("env_config.env_name (str") for line in lines)


def test_reference_config_json_lists_every_key_with_defaults():
    with open(ROOT / "config.json") as file:
        assert json.load(file) == REFERENCE
    assert load_config(str(ROOT / "config.json")) == Config()


def test_debug_config_loads_and_is_tiny():
    config = load_config(str(ROOT / "configs" / "debug.json"))
    assert config.env_config.env_name == "Catch-bsuite"
    assert (config.num_seeds, config.num_steps, config.batch_size, config.sequence_length) == (1, 200, 4, 8)
    assert config.no_conv and config.environment == "gymnax_env"
    assert config.model_alpha == Config().model_alpha  # unlisted keys keep their defaults


def test_keys_missing_from_file_take_defaults(tmp_path):
    config = load_config(write_json(tmp_path, {"num_steps": 1000}))
    assert config == dataclasses.replace(Config(), num_steps=1000)


def test_overrides_parse_by_type():
    config = load_config(None, [
        "num_steps=5e6", "buffer_size=2000", "model_alpha=3e-4", "grad_clip=7", "no_conv=TRUE",
        "jax_env=1", "learn_reward_variance=false", "binary_state=0", "activation=relu",
        "env_config.env_name=Breakout-MinAtar",
    ])
    assert config.num_steps == 5000000 and type(config.num_steps) is int
    assert config.buffer_size == 2000
    assert config.model_alpha == 3e-4
    assert config.grad_clip == 7.0 and type(config.grad_clip) is float
    assert config.no_conv is True and config.jax_env is True
    assert config.learn_reward_variance is False and config.binary_state is False
    assert config.activation == "relu"
    assert config.env_config == EnvConfig("Breakout-MinAtar")


def test_overrides_apply_on_top_of_file_in_order(tmp_path):
    path = write_json(tmp_path, {"num_steps": 1000, "env_config": {"env_name": "Asterix-MinAtar"}})
    config = load_config(path, ["num_steps=2000", "num_steps=3000"])
    assert config.num_steps == 3000 and config.env_config.env_name == "Asterix-MinAtar"


def test_json_accepts_integral_float_for_int_and_int_for_float(tmp_path):
    config = load_config(write_json(tmp_path, {"num_steps": 5000000.0, "model_alpha": 1}))
    assert config.num_steps == 5000000 and type(config.num_steps) is int
    assert config.model_alpha == 1.0 and type(config.model_alpha) is float


def test_round_trip_through_json(tmp_path):
    config = load_config(None, ["num_steps=1234", "lmbda=0.5", "env_config.env_name=Freeway-MinAtar"])
    path = write_json(tmp_path, json.dumps(config_to_dict(config)))
    assert load_config(path) == config


def test_missing_file(tmp_path):
    assert_config_error(lambda: load_config(str(tmp_path / "nope.json")), "nope.json", "does not exist")


def test_invalid_json_names_the_line(tmp_path):
    path = write_json(tmp_path, '{\n  "num_steps": 10,\n  "batch_size": \n}')
    assert_config_error(lambda: load_config(path), "c.json", "not valid JSON", "line 4")


def test_top_level_must_be_an_object(tmp_path):
    assert_config_error(lambda: load_config(write_json(tmp_path, [1, 2])), "c.json", "JSON object", "list")


@pytest.mark.parametrize("raw, fragments", [
    ({"num_step": 10}, ["'num_step'", "did you mean 'num_steps'"]),
    ({"env_name": "x"}, ["'env_name'", "did you mean 'env_config.env_name'"]),
    ({"zzzzzz": 1}, ["'zzzzzz'", "valid keys are", "num_steps"]),
    ({"env_config": {"env_nam": "x"}}, ["'env_config.env_nam'", "did you mean 'env_config.env_name'"]),
    ({"env_config": "Breakout-MinAtar"}, ["env_config must be an object with keys env_name"]),
    ({"num_steps": "abc"}, ["num_steps must be an integer, got 'abc' (str)"]),
    ({"num_steps": True}, ["num_steps must be an integer, got True (bool)"]),
    ({"num_steps": 5.5}, ["num_steps must be an integer, got 5.5 (float)"]),
    ({"model_alpha": "fast"}, ["model_alpha must be a finite number"]),
    ({"model_alpha": False}, ["model_alpha must be a finite number"]),
    ({"no_conv": 1}, ["no_conv must be a boolean"]),
    ({"activation": 3}, ["activation must be a string"]),
    ({"env_config": {"env_name": 3}}, ["env_config.env_name must be a string"]),
    ({"num_seeds": 0}, ["num_seeds must be >= 1, got 0"]),
    ({"update_seed_batch": -1}, ["update_seed_batch must be >= 0, got -1"]),
    ({"model_alpha": 0}, ["model_alpha must be > 0, got 0.0"]),
    ({"wd_adam": -1e-3}, ["wd_adam must be >= 0"]),
    ({"lmbda": 1.5}, ["lmbda must be in [0, 1], got 1.5"]),
    ({"feature_width": 1}, ["feature_width must be >= 2"]),
    ({"activation": "swish"}, ["activation must be one of elu, relu, silu, gelu, tanh, got 'swish'"]),
    ({"latent_type": "beta"}, ["latent_type must be one of categorical, gaussian"]),
    ({"environment": "atari"},
     ["environment must be one of gymnax_env, open_grid_env, brax_env, craftax_env, atari_env, gymnasium_env, "
      "gym_env"]),
    ({"buffer_size": 10}, ["buffer_size must be >= sequence_length (50), got 10"]),
    ({"training_start_time": 10}, ["training_start_time must be >= sequence_length (50), got 10"]),
    ({"environment": "gymnasium_env"}, ["environment gymnasium_env is not written in JAX, so jax_env must be false"]),
    ({"env_config": {"env_name": "Catch-bsuite", "max_steps": 3}},
     ["unknown config key 'env_config.max_steps'", "taken by gymnasium_env and gym_env only"]),
])
def test_file_mistakes_raise_one_sentence_naming_the_key(tmp_path, raw, fragments):
    assert_config_error(lambda: load_config(write_json(tmp_path, raw)), *fragments)


@pytest.mark.parametrize("override, fragments", [
    ("num_steps", ["'num_steps'", "KEY=VALUE"]),
    ("num_step=5", ["'num_step'", "did you mean 'num_steps'"]),
    ("env_config.env_nam=x", ["'env_config.env_nam'", "did you mean 'env_config.env_name'"]),
    ("num_steps.x=5", ["'num_steps.x'"]),
    ("env_config=Breakout", ["env_config must be an object with keys env_name"]),
    ("num_steps=abc", ["num_steps must be an integer, got 'abc' (str)"]),
    ("num_steps=5.5", ["num_steps must be an integer, got 5.5 (float)"]),
    ("num_steps=true", ["num_steps must be an integer, got 'true' (str)"]),
    ("model_alpha=nan", ["model_alpha must be a finite number, got nan"]),
    ("no_conv=yes", ["no_conv must be a boolean (true or false), got 'yes' (str)"]),
    ("discount=2", ["discount must be in [0, 1], got 2.0"]),
    ("environment=gym_env", ["environment gym_env is not written in JAX, so jax_env must be false"]),
])
def test_override_mistakes_raise_one_sentence_naming_the_key(override, fragments):
    assert_config_error(lambda: load_config(None, [override]), *fragments)


def test_extra_env_config_keys_are_make_keyword_arguments():
    config = load_config(None, ["environment=gymnasium_env", "jax_env=false", "env_config.env_name=CartPole-v1",
                                "env_config.max_episode_steps=200", "env_config.sutton_barto_reward=true"])
    assert config.env_config.make_kwargs == {"max_episode_steps": 200, "sutton_barto_reward": True}
    assert config_to_dict(config)["env_config"] == {"env_name": "CartPole-v1", "max_episode_steps": 200,
                                                    "sutton_barto_reward": True}
    assert load_config(None, [f"{k}={v}" for k, v in [("environment", "gymnasium_env"), ("jax_env", "false")]]
                       + ["env_config.max_episode_steps=200"]).env_config.make_kwargs == {"max_episode_steps": 200}


def test_direct_construction_is_validated_too():
    assert_config_error(lambda: Config(num_steps=0), "num_steps must be >= 1")
    assert_config_error(lambda: dataclasses.replace(Config(), batch_size="4"), "batch_size must be an integer")
    assert Config(env_config={"env_name": "Catch-bsuite"}).env_config == EnvConfig("Catch-bsuite")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().num_steps = 1
