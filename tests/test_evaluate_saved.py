"""Evaluating a saved agent (`--load_checkpoint CKPT --evaluate N`) and exporting its policy (`--export`): the
returns are those of the in-training greedy evaluation at the checkpoint's step, the checkpoint is left as it was,
a mismatched environment or a missing checkpoint is refused, and the exported policy acts as the runner's."""

import hashlib
import json
import os
import re

import jax
import numpy as np
import pytest

import dreamer_multiseed
import dreamer_single_seed
from agent.evaluation import EVALUATION_KEY_TAG, agent_policy, observation_keys, run_episodes
from environments import environment_from_config
from experiment.config import config_to_dict, load_config
from experiment.saved_agent import load_export, load_saved_agent
from initialization import make_agent
from runtime import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG = os.path.join(ROOT, "configs", "debug.json")
EPISODES = 3
# A run whose last block (env step 200) evaluates EPISODES greedy episodes per seed.
TRAIN = ["-c", DEBUG, "--wandb", "disabled", "--no_progress", "--set", "eval_every=200", "--set",
         f"eval_episodes={EPISODES}"]


def _records(path):
    with open(path) as file:
        return [json.loads(line) for line in file]


def _sha256(path):
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def _train(folder, *args):
    folder.mkdir()
    output, ckpt, export = (str(folder / name) for name in ("train.out", "run.ckpt", "trained.npz"))
    assert dreamer_multiseed.main([*TRAIN, *args, "-o", output, "--save_checkpoint", ckpt, "--export", export]) == 0
    return {"folder": folder, "records": _records(output), "ckpt": ckpt, "export": export, "args": list(args)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A single-seed debug run's checkpoint (env step 200) and the policy it exported after training."""
    return _train(tmp_path_factory.mktemp("saved") / "run")


def _evaluate(main, run, name, *args):
    output = str(run["folder"] / f"{name}.out")
    code = main(["-c", DEBUG, *run["args"], "--wandb", "disabled", "--load_checkpoint", run["ckpt"], "--evaluate",
                 str(EPISODES), "-o", output, *args])
    return code, (_records(output) if code == 0 else None)


def _trained_eval(run):
    return {(r["seed"], r.get("variant")): r["eval_returns"] for r in run["records"] if r["env_steps"] == 200}


@pytest.mark.parametrize("main", [dreamer_multiseed.main, dreamer_single_seed.main], ids=["multiseed", "single_seed"])
def test_evaluating_a_checkpoint_gives_the_in_training_returns_and_leaves_it_unchanged(trained, main, capsys):
    digest, files = _sha256(trained["ckpt"]), sorted(os.listdir(trained["folder"]))
    name = main.__module__
    code, records = _evaluate(main, trained, name)
    assert code == 0
    assert _sha256(trained["ckpt"]) == digest
    assert sorted(os.listdir(trained["folder"])) == sorted([*files, f"{name}.out"])  # its own output only
    (record,) = records
    assert record["eval_returns"] == _trained_eval(trained)[(0, None)]
    assert len(record["eval_lengths"]) == EPISODES and record["env_steps"] == 200
    returns = np.array(record["eval_returns"])
    assert (record["eval_return"], record["eval_return_std"], record["eval_return_min"], record["eval_return_max"]) \
        == pytest.approx((returns.mean(), returns.std(), returns.min(), returns.max()))
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("seed ")]
    assert summary == [f"seed 0: {EPISODES} episodes, return mean {returns.mean():.3f}, std {returns.std():.3f}, "
                       f"min {returns.min():.3f}, max {returns.max():.3f}"]


def test_videos_of_an_evaluation(trained):
    code, _ = _evaluate(dreamer_multiseed.main, trained, "video", "--video")
    assert code == 0
    assert sorted(os.listdir(trained["folder"] / "video_videos" / "seed0")) == [
        "000000200_dream.gif", "000000200_dream.png", "000000200_episode.gif"]


def test_a_mismatched_environment_and_a_missing_checkpoint_are_refused(trained, capsys, tmp_path):
    digest = _sha256(trained["ckpt"])
    code, _ = _evaluate(dreamer_multiseed.main, trained, "minatar", "--set", "env_config.env_name=Breakout-MinAtar")
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert re.search(r"trained on Catch-bsuite \(observations float32\[10, 5\], 3 actions\), but Breakout-MinAtar "
                     r"\(observations \w+\[10, 10, 4\], 3 actions\) has other spaces", error), error
    assert _sha256(trained["ckpt"]) == digest and not os.path.exists(trained["folder"] / "minatar.out")
    missing = str(tmp_path / "missing.ckpt")
    argv = ["-c", DEBUG, "--wandb", "disabled", "-o", str(tmp_path / "o"), "--evaluate", "2"]
    assert dreamer_multiseed.main([*argv, "--load_checkpoint", missing]) == 2
    expected = f"error: checkpoint {missing!r} does not exist; --evaluate needs a trained agent\n"
    assert capsys.readouterr().err == expected
    assert dreamer_multiseed.main(argv) == 2
    assert "--load_checkpoint" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_the_exported_policy_acts_as_the_runners(trained):
    export = str(trained["folder"] / "evaluated.npz")
    code, (record,) = _evaluate(dreamer_multiseed.main, trained, "export", "--export", export)
    assert code == 0
    with np.load(export, allow_pickle=False) as evaluated, np.load(trained["export"], allow_pickle=False) as after:
        names = set(evaluated.files) - {checkpoint.HEADER_KEY}
        assert names == set(after.files) - {checkpoint.HEADER_KEY}
        assert not any("critic" in name for name in names)
        for name in names:  # the export after training holds the same parameters
            np.testing.assert_array_equal(evaluated[name], after[name], err_msg=name)
    exported = load_export(export)
    # the evaluation's config: the checkpoint's with its eval_episodes
    assert config_to_dict(exported.config) == config_to_dict(load_config(DEBUG, [f"eval_episodes={EPISODES}"]))
    assert (exported.seeds, exported.env_steps) == ([0], 200)
    env = environment_from_config(exported.config)
    agent = make_agent(exported.config, env)
    params, hparams = exported.run(0)
    policy = agent_policy(exported.config, agent, params, hparams, greedy=True)
    key = observation_keys([0], EVALUATION_KEY_TAG, 200)[0]
    episodes = jax.jit(lambda key: run_episodes(env, policy, key, EPISODES, exported.config.eval_max_steps))(key)
    assert [float(r) for r in episodes.returns] == record["eval_returns"]
    # action by action, against the checkpoint's parameters as the runner loads them
    saved = load_saved_agent(trained["ckpt"], exported.config, env, None)
    runner_params = jax.tree.map(lambda x: x[0], saved.params)
    env_state, obs = env.reset(jax.random.PRNGKey(1))
    h = policy.init()
    for step in range(20):
        act_key, env_key = jax.random.split(jax.random.PRNGKey(step))
        action, z = policy.act(h, obs, act_key)
        expected, _ = agent.act(runner_params, hparams, h, obs, act_key, True)
        assert int(action) == int(expected)
        env_state, obs, _, terminated, truncated = env.step(env_key, env_state, action)
        h = policy.advance(h, z, action, terminated | truncated)


def test_the_docs_example_loads_the_export_and_acts(trained):
    with open(os.path.join(ROOT, "docs", "evaluation.md")) as file:
        docs = file.read()
    example = re.search(r"## Using an exported policy.*?```python\n(.*?)```", docs, re.S).group(1)
    namespace = {}
    exec(example.replace('"policy.npz"', repr(trained["export"])), namespace)  # noqa: S102
    assert np.isfinite(namespace["episode_return"])


def test_a_sweep_checkpoint_evaluates_every_variant(tmp_path):
    run = _train(tmp_path / "sweep", "--sweep", "beta=0.01,0.1", "--set", "num_seeds=2")
    code, records = _evaluate(dreamer_multiseed.main, run, "sweep")
    assert code == 0
    assert {(r["seed"], r.get("variant")): r["eval_returns"] for r in records} == _trained_eval(run)
    assert len(records) == 4
