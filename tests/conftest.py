import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def run_database_in_a_temporary_folder(tmp_path, monkeypatch):
    """Whatever a test records goes to its own temporary database, never to the repo's runs/."""
    monkeypatch.setenv("CLIPWATCH_DB", str(tmp_path / "clipwatch.db"))
