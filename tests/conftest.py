import os
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
