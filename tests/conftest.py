"""Test-session set-up: one JAX persistent compilation cache shared by every test (and pytest-xdist worker) of a
run, so a program the suite has compiled once (the same config) is loaded instead of compiled again. A loaded
executable is the compiled one, so runs stay bit-identical; the cache is removed when the run ends. Programs are
compiled with LLVM at level 0 and XLA:CPU's older elemental fusion emitter (both compile faster), but for the
learning tests' runs, which compile as the scripts do, at level 1, in processes of their own."""

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
# This suite's time goes mostly to compiling its many short runs, so they compile for speed of compiling:
# - LLVM at level 0 (agent_environment_interaction_loop.compiler_options takes the level from XLA_FLAGS): ~25%
#   less compile time than the scripts' level 1;
# - XLA:CPU's elemental fusion emitter instead of its newer MLIR one: ~35% less again (the debug block of two
#   seeds: 3.0 s against 4.7 s), and the runs as fast to within 10%.
# The float rounding differs from the scripts', deterministically. The learning tests, long runs, start processes
# of their own that compile as the scripts do (tests/test_learning.py). Flags the user set are kept.
USER_XLA_FLAGS = os.environ.setdefault("DREAMER_TEST_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
SUITE_XLA_FLAGS = {"--xla_backend_optimization_level": "0", "--xla_cpu_use_fusion_emitters": "false"}
os.environ["XLA_FLAGS"] = " ".join([USER_XLA_FLAGS] + [f"{flag}={value}" for flag, value in SUITE_XLA_FLAGS.items()
                                                       if flag not in USER_XLA_FLAGS]).strip()

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
