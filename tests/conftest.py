import os
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The persistent XLA cache goes to a temporary folder, never the checkout's runs/ (it must be
# set before TensorFlow is imported, so here and not in a fixture).
os.environ.setdefault("CLIPWATCH_XLA_CACHE", tempfile.mkdtemp(prefix="clipwatch-xla-cache-"))

# Property-based tests stay bounded so the suite stays fast; `HYPOTHESIS_PROFILE=thorough`
# searches ten times as many cases. No example database: running the tests writes nothing into
# the checkout.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="clipwatch-hypothesis-"))  # its patch files
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
        trainer.stop()
