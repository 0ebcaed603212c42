"""The bench scripts run on the debug config and print one JSON object with the keys bench/README.md documents;
the learning benchmark runs two of its tasks, shortened. No timing is asserted: the figures are measured, not
tested."""

import json
import os
import shlex
import subprocess
import sys

import jax
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import bench_loop  # noqa: E402
import bench_seed_update  # noqa: E402
import bench_update  # noqa: E402
import learning  # noqa: E402

from outputs import plot_metric  # noqa: E402


def _printed_json(capsys):
    out = capsys.readouterr().out
    return json.loads(out)  # the whole of stdout is one JSON object


def test_bench_loop_prints_the_table_for_each_seed_count(capsys):
    bench_loop.main(["-c", "configs/debug.json", "--seeds", "1,2", "--steps", "10", "--repeats", "1"])
    report = _printed_json(capsys)
    assert [r["seeds"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        for key in ("acting_s_per_step", "training_s_per_step", "relative_efficiency", "wall_clock_slowdown"):
            assert r[key] > 0, key
        # training blocks ran one update per train_frequency steps (a count, not a timing: timings on the tiny
        # debug config under a parallel suite are noise)
        assert r["updates_per_training_block"] == report["steps_per_block"] / report["train_frequency"]
    assert report["results"][0]["relative_efficiency"] == 1.0
    assert report["compile_s"] > 0 and report["peak_rss_mb"] > 0
    assert report["replay_bytes_per_seed"] > 0 and report["machine"]["devices"]
    # this suite compiles through a shared persistent cache (conftest.py), and the report says so
    assert report["machine"]["compilation_cache_dir"] == os.environ["JAX_COMPILATION_CACHE_DIR"]



def test_bench_loop_times_the_python_drivers_on_the_same_environment(capsys):
    bench_loop.main(["-c", "configs/debug.json", "--seeds", "2", "--steps", "10", "--repeats", "1",
                     "--drivers", "compiled,python"])
    report = _printed_json(capsys)
    assert report["drivers"] == ["compiled", "python"]
    compiled, python = report["results"]
    assert (compiled["drivers"], python["drivers"]) == ("compiled", "python")
    assert compiled["runs"] == python["runs"] == 2
    # no ahead-of-time compile under the Python drivers: an untimed warm-up block per phase compiles the pieces
    assert python["compile_s"] is None and python["lower_s"] is None and python["warmup_s"] > 0
    assert compiled["warmup_s"] is None and report["compile_s"] == compiled["compile_s"] > 0
    for r in (compiled, python):
        assert r["updates_per_training_block"] == report["steps_per_block"] / report["train_frequency"]
        assert r["relative_efficiency"] == 1.0  # each drivers' entries against their own first
        assert r["acting_run_steps_per_s_per_device"] == pytest.approx(2 / r["acting_s_per_step"])
    for phase in ("acting", "training"):  # the Python drivers' seconds per step over the compiled block's
        assert python[f"compiled_speedup_{phase}"] == pytest.approx(
            python[f"{phase}_s_per_step"] / compiled[f"{phase}_s_per_step"])
        assert f"compiled_speedup_{phase}" not in compiled

def test_bench_update_prints_times_flops_and_roofline(capsys):
    # two seeds vmapped, as the loop runs them; one seed is the same code without the vmap
    bench_update.main(["-c", "configs/debug.json", "--repeats", "1", "--seeds", "2"])
    report = _printed_json(capsys)
    assert report["seeds"] == 2 and report["update_s_per_seed"] == pytest.approx(report["update_s"] / 2)
    for key in ("update_s", "world_model_s", "actor_critic_s", "flops", "world_model_flops", "actor_critic_flops",
                "xla_flops", "gflops_per_s", "roofline_gflops_per_s", "roofline_fraction", "roofline_bound_s"):
        assert report[key] > 0, key
    # the two halves' matrix products make up the update's (the update adds no matmul of its own)
    assert report["flops"] == pytest.approx(report["world_model_flops"] + report["actor_critic_flops"])
    assert report["roofline_bound_s"] == pytest.approx(report["flops"] / report["roofline_gflops_per_s"] / 1e9)


def test_bench_seed_update_runs_every_seeds_update_in_batches(capsys):
    # 2 seeds one at a time (both forms' updates, and a remainder batch: tests/test_loop.py)
    bench_seed_update.main(["-c", "configs/debug.json", "--seeds", "2", "--form", "in_place", "--repeats", "1",
                            "--set", "update_seed_batch=1"])
    report = _printed_json(capsys)
    assert report["form"] == "in_place" and report["update_seed_batch"] == 1
    assert report["updates"] == [2, 2]  # a warm-up call and a timed one, each updating every seed once
    assert len(report["call_s"]) == 2 and report["update_s"] == min(report["call_s"][1:])
    assert report["update_s_per_seed"] == pytest.approx(report["update_s"] / 2)
    assert report["compile_s"] > 0 and report["peak_rss_mb"] > 0


def test_bench_ab_times_two_checkouts_alternately():
    # this checkout against itself (the default baseline), in its own process: the script swaps the project's
    # modules in sys.modules, which a test process should not see
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(root, "bench", "bench_ab.py"), "-c", "configs/debug.json",
                           "--rounds", "3"], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for role in ("baseline", "candidate"):
        assert report[role]["checkout"] == root and len(report[role]["times_s"]) == 3
        assert report[role]["best_s"] == min(report[role]["times_s"]) > 0
    # the same code, config and seed compute the same loss (determinism), whichever modules it was built from
    assert report["baseline"]["model_loss"] == report["candidate"]["model_loss"]
    assert report["best_ratio"] == pytest.approx(report["candidate"]["best_s"] / report["baseline"]["best_s"])
    refused = subprocess.run([sys.executable, os.path.join(root, "bench", "bench_ab.py"), "--baseline", "tests"],
                             cwd=root, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--baseline must be the root of a checkout" in refused.stderr
    assert refused.stdout == ""


def test_matmul_flops_counts_every_seed_of_a_vmapped_product():
    x, w = jax.numpy.ones((3, 4, 5)), jax.numpy.ones((3, 5, 6))
    one = bench_update.flops(lambda x, w: x @ w, x[0], w[0])
    assert one == 2 * 4 * 5 * 6
    assert bench_update.flops(jax.vmap(lambda x, w: x @ w), x, w) == 3 * one


@pytest.mark.parametrize("script", ["bench_loop", "bench_update", "bench_seed_update", "bench_logging",
                                    "bench_python_env", "bench_ab"])
def test_bench_script_refuses_a_config_mistake_in_one_sentence(script):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(root, "bench", f"{script}.py"), "-c", "configs/debug.json",
                           "--set", "bogus=1"], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""  # no JSON, no partial report
    assert done.stderr.startswith("error: unknown config key 'bogus'; valid keys are ")
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1


def test_learning_benchmark_reports_each_task_against_random_play(capsys, tmp_path):
    # Two tasks, one per path (Catch compiled whole, gymnasium CartPole stepped in Python), 600 steps of 2 seeds.
    # The structure is tested, not the learning (tests/test_learning.py).
    learning.main(["--tasks", "catch,cartpole-gymnasium", "--seeds", "2", "--steps", "600",
                   "--out", str(tmp_path), "--no_progress", "--no_diagnostics"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # the whole of stdout is one JSON object...
    with open(tmp_path / "results.json") as file:
        assert json.load(file) == report  # ...kept in the out folder
    assert [task["task"] for task in report["tasks"]] == ["catch", "cartpole-gymnasium"]
    catch, cartpole = report["tasks"]
    assert -0.8 < catch["random_policy"]["return"] < -0.4 and 15 < cartpole["random_policy"]["return"] < 30
    configs = learning.task_configs(["catch", "cartpole-gymnasium"], 600, 2, [])
    for task in report["tasks"]:
        config, definition = configs[task["task"]], learning.TASKS[task["task"]]
        assert (task["updates_per_seed"] > 0) == (config.training_start_time < 600)
        assert task["threshold"] == definition.threshold + (task["random_policy"]["return"] if definition.above_random
                                                            else 0.0)
        assert task["seeds"] == 2 and task["env_steps_per_seed"] == 600 and task["env_steps"] == 1200
        assert len(task["final_returns"]) == 2 and min(task["episodes"]) > 0
        assert task["mean"] == pytest.approx(sum(task["final_returns"]) / 2)
        assert task["iqm"] == pytest.approx(task["mean"])  # 2 seeds: nothing trimmed, and said so
        low, high = task["iqm_ci"]
        assert min(task["final_returns"]) <= low <= high <= max(task["final_returns"])
        assert any("only 2 seeds" in note for note in task["notes"])
        assert task["success_fraction"] == task["successes"] / 2
        assert task["wall_s"] > 0
        with open(task["output"]) as file:  # experiment.runner.run's records: one per seed per block
            records = [json.loads(line) for line in file]
        assert [(r["seed"], r["env_steps"]) for r in records[-2:]] == [(0, 600), (1, 600)]
    # the Markdown table (stderr and results.md) has a row per task, then the plot commands, which run as printed
    table = (tmp_path / "results.md").read_text()
    assert table.startswith("| task | env | random |") and table in captured.err
    assert "| catch | Catch-bsuite |" in table and "| cartpole-gymnasium | CartPole-v1 (Python) |" in table
    for command, task in zip(report["plot_commands"], report["tasks"]):
        assert command in captured.err
        _, script, *args = shlex.split(command)  # python3 plot_metric.py ARGS
        assert os.path.samefile(script, plot_metric.__file__)
        assert plot_metric.main(args) == 0 and (tmp_path / f"{task['task']}.png").exists()


def test_learning_benchmark_statistics():
    values = [3.0, -1.0, 7.0, 2.0, 0.5, 10.0, 4.0, 1.0, 2.5]
    for count in (1, 3, 4, 8, 9):  # the IQM as plot_metric.py (scipy.stats.trim_mean(x, 0.25)) computes it
        assert learning.interquartile_mean(values[:count]) == pytest.approx(
            plot_metric.interquartile_mean(values[:count]))
    low, high = learning.iqm_bootstrap_ci(values)
    assert low < learning.interquartile_mean(values) < high
    assert learning.iqm_bootstrap_ci(values) == (low, high)  # a fixed RNG seed
    assert learning.iqm_bootstrap_ci([1.0]) is None
    stats = learning.seed_statistics([1.0, 2.0, None, 3.0, 4.0, 5.0], threshold=3.0)
    assert stats["successes"] == 3 and stats["success_fraction"] == 0.5  # a seed without episodes fails
    assert stats["mean"] == 3.0 and "1 seed(s) completed no episode" in stats["notes"]


def test_learning_benchmark_lists_its_tasks_and_refuses_an_unknown_one():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "bench", "learning.py")
    listed = subprocess.run([sys.executable, script, "--list"], cwd=root, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(learning.TASKS)
    assert all("steps" in line and "threshold" in line for line in lines)
    refused = subprocess.run([sys.executable, script, "--tasks", "catch,pong"], cwd=root, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: unknown task 'pong'; the tasks are catch, ")
    assert refused.stderr.count("\n") == 1
    # a config mistake names the task whose config it is in, before JAX is imported
    refused = subprocess.run([sys.executable, script, "--tasks", "catch", "--set", "bogus=1"], cwd=root,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stdout == "" and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: task 'catch': unknown config key 'bogus'")
