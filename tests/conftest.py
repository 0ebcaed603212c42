"""Test-session set-up: one JAX persistent compilation cache shared by every test (and pytest-xdist worker) of a
run, so a program the suite has compiled once (the same config) is loaded instead of compiled again. A loaded
executable is the compiled one, so runs stay bit-identical; the cache is removed when the run ends. Programs are
compiled with LLVM at level 0, but for the learning tests' runs (level 1, in processes of their own)."""

import os
import shutil
import tempfile
import uuid

import pytest

# The controller picks the id; pytest-xdist workers inherit it through the environment.
_RUN_ID = os.environ.setdefault("DREAMER_TEST_RUN_ID", uuid.uuid4().hex)
CACHE_DIR = os.path.join(tempfile.gettempdir(), f"dreamer-tests-jax-cache-{_RUN_ID}")
# Set before jax is imported, and inherited by the scripts the tests start as subprocesses.
os.environ["JAX_COMPILATION_CACHE_DIR"] = CACHE_DIR
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
# Every program compiled with LLVM at level 0 (agent_environment_interaction_loop.compiler_options takes the
# level from XLA_FLAGS): this suite's time goes mostly to compiling, and its short runs take ~25% less time to
# compile so. The learning tests, long runs, start processes of their own compiled at level 1
# (tests/test_learning.py).
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist) cleans up
        shutil.rmtree(CACHE_DIR, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The learning tests (4-7 and 2.5-4.5 minutes on two cores, most of the suite's time) run first: on two
    pytest-xdist workers the rest then fills the other worker, instead of a learning test starting late and
    running on alone at the end."""
    items.sort(key=lambda item: item.path.name != "test_learning.py")  # stable: the order is kept otherwise


DEBUG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "debug.json")
DEBUG_RUN_ARGS = ["-c", DEBUG, "--wandb", "disabled", "--no_progress", "--set", "checkpoint_frequency=50"]


@pytest.fixture(scope="session")
def debug_run(tmp_path_factory):
    """The debug config's uninterrupted run (seed 0, 200 env steps, a checkpoint every 50) through the scripts'
    entry, started with --load_checkpoint of a missing file: built once per test worker and shared by the tests
    that compare against it. Returns its folder, holding `full.out` (records) and `full.ckpt`; read it, do not
    change it."""
    from experiment import cli

    folder = tmp_path_factory.mktemp("debug_run")
    argv = [*DEBUG_RUN_ARGS, "-o", str(folder / "full.out"), "--save_checkpoint", str(folder / "full.ckpt"),
            "--load_checkpoint", str(folder / "missing.ckpt")]
    assert cli.script_main(argv, description="test", single_seed=False) == 0
    return folder
