"""The Atari reference scores and the human-normalised score, and the learning benchmark's Atari scoring on made-up
records and results (no environment, no training)."""

import json
import os
import sys
from typing import NamedTuple

import numpy as np
import pytest

from envs.atari_scores import ATARI100K_GAMES, REFERENCE_SCORES, human_normalized, reference_scores
from experiment.config import ConfigError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import learning  # noqa: E402


def test_the_table_holds_the_26_atari_100k_games_with_human_above_random():
    assert len(ATARI100K_GAMES) == len(set(ATARI100K_GAMES)) == 26
    assert {"Pong", "Hero", "KungFuMaster", "UpNDown", "MsPacman", "PrivateEye"} <= set(ATARI100K_GAMES)
    assert all(scores.human > scores.random for scores in REFERENCE_SCORES.values())
    assert reference_scores("Pong") == (-20.7, 14.6)
    assert reference_scores("Alien") == (227.8, 7127.7)


def test_the_games_are_named_as_envpool_names_them():
    envpool = pytest.importorskip("envpool")
    ids = set(envpool.list_all_envs())
    assert [game for game in ATARI100K_GAMES if f"{game}-v5" not in ids] == []


@pytest.mark.parametrize("game", ATARI100K_GAMES)
def test_random_play_scores_0_and_the_human_tester_1(game):
    random, human = reference_scores(game)
    assert human_normalized(game, random) == 0.0
    assert human_normalized(game, human) == pytest.approx(1.0)
    assert human_normalized(game, (random + human) / 2) == pytest.approx(0.5)


def test_a_score_below_random_is_negative():
    assert human_normalized("Pong", -21.0) == pytest.approx(-0.3 / 35.3)
    assert human_normalized("Freeway", 59.2) == pytest.approx(2.0)


def test_an_unknown_game_is_refused_with_one_sentence_naming_the_games():
    with pytest.raises(ValueError) as error:
        human_normalized("SpaceInvaders", 100.0)
    message = str(error.value)
    assert message.startswith("no reference scores for Atari game 'SpaceInvaders'; the Atari 100k games are Alien, ")
    assert "\n" not in message and message.endswith("UpNDown")
    with pytest.raises(ValueError):
        human_normalized("Pong-v5", 0.0)  # envpool's game name, not its task id


def _record(seed, env_steps, **fields):
    return {"seed": seed, "env_steps": env_steps, "episode_return": 0.0, **fields}


def test_each_seed_scores_its_last_evaluation():
    records = [_record(0, 1000), _record(1, 1000),
               _record(0, 2000, eval_return=-20.0), _record(1, 2000, eval_return=-21.0),
               _record(0, 3000), _record(1, 3000),
               _record(0, 4000, eval_return=-10.0), _record(1, 4000, eval_return=None)]
    evaluations = learning.final_evaluations(records, [0, 1, 2])
    assert evaluations == [{"eval_return": -10.0, "env_steps": 4000}, {"eval_return": None, "env_steps": 4000},
                           None]
    score = learning.atari_score("Pong", [0, 1, 2], evaluations)
    assert score["eval_returns"] == [-10.0, None, None] and score["eval_env_steps"] == [4000, 4000, None]
    assert score["human_normalized"] == [pytest.approx(10.7 / 35.3), None, None]
    assert score["mean_human_normalized"] == pytest.approx(10.7 / 35.3)  # over the seeds that have a score
    assert (score["random_score"], score["human_score"]) == (-20.7, 14.6)
    assert score["notes"] == ["seed(s) 1, 2 have no final evaluation return (no evaluation episode finished "
                              "within eval_max_steps)"]


def _task_result(task, game, normalized):
    random, human = reference_scores(game)
    returns = [None if value is None else random + value * (human - random) for value in normalized]
    scored = [value for value in normalized if value is not None]
    return {"task": task, "seeds": len(normalized), "env_steps_per_s": 100.0, "device_peak_bytes_per_seed": None,
            "atari": {"game": game, "random_score": random, "human_score": human, "eval_returns": returns,
                      "human_normalized": normalized,
                      "mean_human_normalized": sum(scored) / len(scored) if scored else None}}


def test_the_mean_and_median_are_over_the_atari_tasks_of_their_seed_means():
    results = [_task_result("atari-pong", "Pong", [0.1, 0.3]),
               {"task": "catch", "atari": None},
               _task_result("atari-boxing", "Boxing", [1.0, 2.0, 3.0]),
               _task_result("atari-krull", "Krull", [0.5, 0.7])]
    summary = learning.atari_summary(results)
    assert summary["tasks"] == 3 and summary["unscored"] == []
    assert summary["games"] == {"atari-pong": "Pong", "atari-boxing": "Boxing", "atari-krull": "Krull"}
    assert summary["per_task_human_normalized"] == pytest.approx({"atari-pong": 0.2, "atari-boxing": 2.0,
                                                                  "atari-krull": 0.6})
    assert summary["mean_human_normalized"] == pytest.approx((0.2 + 2.0 + 0.6) / 3)
    assert summary["median_human_normalized"] == pytest.approx(0.6)
    table = learning.atari_table(results)
    assert [line.split(" | ")[0] for line in table if line.startswith("| atari-")] == [
        "| atari-pong", "| atari-boxing", "| atari-krull"]
    assert table[-1] == ("Atari, 3 task(s): human-normalised score mean 0.933, median 0.6 (of each task's mean over "
                         "its seeds)")


def test_a_run_without_atari_tasks_has_no_atari_summary_and_an_unscored_task_is_left_out():
    assert learning.atari_summary([{"task": "catch", "atari": None}]) is None
    assert learning.atari_table([{"task": "catch", "atari": None}]) == []
    summary = learning.atari_summary([_task_result("atari-pong", "Pong", [None, None]),
                                      _task_result("atari-krull", "Krull", [0.4])])
    assert summary["unscored"] == ["atari-pong"]
    assert summary["mean_human_normalized"] == summary["median_human_normalized"] == pytest.approx(0.4)
    summary = learning.atari_summary([_task_result("atari-pong", "Pong", [None])])
    assert summary["mean_human_normalized"] is None and summary["median_human_normalized"] is None


def test_an_atari_task_is_refused_before_running_unless_an_evaluation_ends_it():
    configs = learning.task_configs(["atari-pong"], None, None, [])
    assert configs["atari-pong"].env_config.env_name == "Pong"
    assert configs["atari-pong"].num_steps % configs["atari-pong"].eval_every == 0
    with pytest.raises(ConfigError, match=r"^task 'atari-pong': its Atari score is the evaluation at the end of "
                                          r"the run, so num_steps \(1000\) must be a multiple of eval_every"):
        learning.task_configs(["atari-pong"], 1000, None, [])
    assert learning.task_configs(["atari-pong"], 1000, None, ["eval_every=500"])["atari-pong"].eval_every == 500
    with pytest.raises(ConfigError, match=r"^task 'atari-pong': no reference scores for Atari game 'Tennis'"):
        learning.task_configs(["atari-pong"], None, None, ["env_config.env_name=Tennis"])


def test_another_config_file_runs_the_atari_tasks_at_its_preset():
    preset = os.path.join(learning.ROOT, "configs", "dreamerv3_atari100k.json")
    configs = learning.task_configs(["atari-pong", "atari-krull"], 100_000, 5, [], preset)
    assert [config.env_config.env_name for config in configs.values()] == ["Pong", "Krull"]
    assert all(config.num_seeds == 5 and config.cnn_depth == 32 for config in configs.values())


class _FinalState(NamedTuple):
    env_steps: np.ndarray
    updates: np.ndarray
    replay: dict


def test_an_atari_task_reports_its_seeds_final_evaluations_from_its_records(tmp_path, monkeypatch):
    import experiment.runner

    # the records of a 2-seed run, no training
    def fake_run(config, env, seed, output, progress, diagnostics, video_dir=None):
        with open(output, "w", encoding="utf-8") as file:
            for steps, evaluated in ((500, {}), (1000, {"eval_return": [-15.0, -21.0]})):
                for i in range(2):
                    fields = {"eval_return": evaluated["eval_return"][i]} if evaluated else {}
                    file.write(json.dumps({"seed": seed + i, "env_steps": steps, **fields}) + "\n")
        return {"state": _FinalState(np.array([1000, 1000]), np.array([62, 62]), {"obs": np.zeros((2, 10), np.uint8)}),
                "returns": [[-21.0, -20.0], [-21.0]], "compile_s": 1.0, "run_s": 4.0,
                "runs": experiment.runner.Runs([seed, seed + 1], [{}, {}])}

    monkeypatch.setattr(experiment.runner, "run", fake_run)
    config = learning.task_configs(["atari-pong"], 1000, 2, ["eval_every=500"])["atari-pong"]
    result = learning.run_task("atari-pong", learning.TASKS["atari-pong"], config, None, {"return": -20.5},
                               str(tmp_path), progress=False, diagnostics=False)
    assert result["atari"]["eval_returns"] == [-15.0, -21.0] and result["atari"]["eval_env_steps"] == [1000, 1000]
    assert result["atari"]["human_normalized"] == pytest.approx([5.7 / 35.3, -0.3 / 35.3])
    assert result["env_steps_per_s"] == 500.0 and result["replay_bytes_per_seed"] == 10
    assert result["state_bytes_per_seed"] == (2 * 8 + 2 * 8 + 20) // 2
    report, table = learning.write_report([result], [], str(tmp_path), machine={})
    assert report["atari"]["mean_human_normalized"] == pytest.approx(2.7 / 35.3)
    assert "| atari-pong | Pong: -20.7, 14.6 | -15 -21 |" in table
