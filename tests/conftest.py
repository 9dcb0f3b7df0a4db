import atexit
import gc
import os
import shutil
import sys
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One intra-op thread per TensorFlow process: the suite runs two workers on two cores, and each
# worker's trainers, and the CLI runs, scripts and servers it starts (they inherit this), would
# otherwise size their pools to both cores and spin against each other. Measured, whole suite:
# 1,395 -> 1,225 s of CPU, 817 -> 719 s. test_reproducibility's two processes keep TensorFlow's
# default, as users run it.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

# A full (oldest-generation) collection scans the whole heap, and a worker's heap fills with the
# graphs its runs trace: 24 of them took 13.8 s of three modules' 131 s here (0.58 s each, with
# the interpreter lock held, so the run being traced waited too). Considered every 100 middle
# collections instead of every 10: 5 of them, 2.7 s (whole suite: 13-14 a worker, 9.5-11 s).
# Trainers are freed by reference counts, not by these collections (training/loop/step_pool.py).
gc.set_threshold(*gc.get_threshold()[:2], 100)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# No persistent XLA cache in the suite (it must be set before TensorFlow is imported, so here and
# not in a fixture; subprocesses inherit it). Shared by the suite's own process and the CLI runs
# and Streamlit servers it starts and kills, it ended 3 of the last 4 full runs here and on CI
# with TensorFlow aborting the process (SIGABRT/SIGSEGV) in an XLA compile, at 91%, in a test
# that passes alone; without it, 11% slower on the trainer modules. tests/test_xla_cache.py and
# test_reproducibility.py give their own processes their own cache folders.
os.environ.setdefault("CLIPWATCH_XLA_CACHE", "off")

# Every XLA executable TensorFlow compiles keeps its LLVM code mapped for the life of the process:
# measured, ~555 memory maps per seed trainer (quick and full step), never returned. The suite
# starts hundreds of trainers in one process and crossed Linux's default limit of 65,530 maps
# at 87-91%, where TensorFlow's next compile aborted the process (SIGABRT or SIGSEGV, 4 of the
# last 5 full runs). Raise the limit for this machine where we may (root, as CI runs).
_MAPS_NEEDED = 1_048_576
try:
    with open("/proc/sys/vm/max_map_count") as _limit:
        if int(_limit.read()) < _MAPS_NEEDED:
            with open("/proc/sys/vm/max_map_count", "w") as _raised:
                _raised.write(str(_MAPS_NEEDED))
except (OSError, ValueError):
    pass  # not Linux, or not allowed: a long suite may then hit the limit

# Property-based tests stay bounded so the suite stays fast; `HYPOTHESIS_PROFILE=thorough`
# searches ten times as many cases. No example database: running the tests writes nothing into
# the checkout.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="clipwatch-hypothesis-")  # its patch files
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)  # each worker's, when it exits
settings.register_profile(
    "clipwatch",
    max_examples=200,
    deadline=None,  # a shared 2-core machine: a slow example is load, not a bug
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("thorough", parent=settings.get_profile("clipwatch"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "clipwatch"))


@pytest.fixture(autouse=True)
def run_database_in_a_temporary_folder(tmp_path, monkeypatch):
    """Whatever a test records goes to its own temporary database, never to the repo's runs/."""
    monkeypatch.setenv("CLIPWATCH_DB", str(tmp_path / "clipwatch.db"))


@pytest.fixture
def trainers():
    """Makes `Trainer`s for a test and stops every one of them after it."""
    from training import Trainer

    made = []

    def make(**kwargs):
        trainer = Trainer(**kwargs)
        made.append(trainer)
        return trainer

    yield make
    for trainer in made:
        trainer.stop(timeout=120)  # joined: a thread still compiling must not run into the next test


@pytest.fixture
def fresh_compile():
    """The test watches its runs compile: no run before it in this process lends them its
    compiled steps (training/loop/step_pool.py)."""
    from training.loop import step_pool

    step_pool.clear()


# Threads that run TensorFlow (a trainer, a step compile, a warm-up). An attached run's command
# poller ("clipwatch-commands") only reads the database and lives as long as its LiveClipping.
_COMPILE_THREADS = ("clipwatch-compile", "clipwatch-warm-up-")
_TENSORFLOW_THREADS = ("clipwatch-trainer", *_COMPILE_THREADS)
_waited_for_in_vain: set = set()


def _join(names: tuple[str, ...], seconds: float = 120.0) -> None:
    """Join the live threads named `names*`; one still alive after `seconds` is not waited for again."""
    deadline = time.monotonic() + seconds
    for thread in threading.enumerate():
        if thread.name.startswith(names) and thread not in _waited_for_in_vain:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                _waited_for_in_vain.add(thread)


@pytest.fixture(autouse=True)
def no_compile_outlives_its_test():
    """A full step's background compile (or a warm-up) ends before the next test starts. One that
    outlived its test (its trainer stopped with a short join) was the one TensorFlow thread at
    work when the suite died, three times, with SIGABRT or SIGSEGV, while later tests ran and
    collected earlier tests' objects. Torn down after the fixtures that stop a test's runs."""
    yield
    _join(_COMPILE_THREADS)


@pytest.fixture(autouse=True, scope="module")
def no_training_thread_outlives_its_module():
    """Each module's trainers (a module may share one running trainer among its tests), compiles
    and warm-ups end before the next module starts."""
    yield
    _join(_TENSORFLOW_THREADS)


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL cluster for the session (tests/postgres_server.py), removed after.
    Skipped only where no PostgreSQL binaries are installed (CI installs them)."""
    from postgres_server import PostgresServer, binaries_missing

    missing = binaries_missing()
    if missing:
        pytest.skip(missing)
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_location(request, tmp_path):
    """Where a test's run database is, once per backend: a SQLite path or a PostgreSQL URL."""
    from postgres_server import fresh_location

    return fresh_location(request.param, tmp_path, request)


# The order the two workers take the modules in: longest first (--no-loadscope-reorder in
# pyproject.toml keeps it; xdist's own order is by number of tests, which sent the long
# one-test modules, test_xla_cache's 31 s among them, to the end, where one worker ran them
# while the other had finished). Seconds per module, measured: the full suite at b798d5d, both
# workers (test_browser's with the fork test it took in since). A module not listed counts as 0
# and runs at the end, in collection order.
MODULE_SECONDS = {
    "keras": 119, "browser": 70, "step_compiler": 72, "benchmarks": 69, "keras_scripts": 63, "trainer": 56,
    "forking": 47, "step_pool": 45, "cli_defects": 39, "command_relay": 36, "persistence_faults": 36,
    "browser_attached": 36, "postgres": 34, "reproducibility": 34, "browser_speed": 33, "database_defects": 30,
    "history_app": 30, "app": 28, "inputs": 28, "benchmarks_speed": 24, "xla_cache": 24, "fork_app": 23,
    "persistence": 21, "step_gaps": 20, "snapshot_files": 17, "cli": 13, "browser_access": 13, "page_defects": 13,
    "attached_app": 12, "xla_fallback": 12, "copying": 9, "lazy_import": 7, "plugin_app": 7, "engine": 7,
    "chart_specs": 7, "import_name": 6,
}


def pytest_collection_modifyitems(items):
    """Longest modules first (stable: a module's tests keep their order)."""

    def seconds(item) -> int:
        return MODULE_SECONDS.get(item.path.stem.removeprefix("test_"), 0)

    items.sort(key=lambda item: -seconds(item))


def pytest_unconfigure(config):
    """One garbage collection, then freeze what survives it. pytest's unraisable-exception check
    ends each process with five full collections (_pytest/unraisableexception.py, after this
    hook); over a worker's heap of traced TensorFlow graphs they took 1.95 s for two modules
    here, at the very end of the run. Frozen, they scan only what is new (0.00 s). Anything
    this collection finds still reaches that check: its hook is in place until after them."""
    gc.collect()
    gc.freeze()
