"""The shared chart cache: one build per key whatever the number of sessions asking at once."""

import threading

import pytest

from dashboard.shared_charts import SharedCharts


def test_sessions_asking_at_once_share_one_build():
    cache = SharedCharts()
    release, calls = threading.Event(), []

    def build():
        calls.append(1)
        release.wait(10)
        return {"datasets": {"data-1": [{"step": 1}]}}

    results = []
    sessions = [threading.Thread(target=lambda: results.append(cache.get(("run", 1, 100), build))) for _ in range(10)]
    for session in sessions:
        session.start()
    release.set()
    for session in sessions:
        session.join(10)
    assert len(calls) == 1 and cache.builds == 1 and cache.hits == 9
    assert len(results) == 10 and all(result is results[0] for result in results)


def test_a_new_key_builds_again_and_old_keys_are_evicted():
    cache = SharedCharts(capacity=2)
    for step in (100, 200, 300):
        assert cache.get(("run", 1, step), lambda step=step: step) == step
    assert cache.builds == 3
    assert cache.get(("run", 1, 300), lambda: "rebuilt") == 300
    assert cache.get(("run", 1, 100), lambda: "rebuilt") == "rebuilt"  # evicted, built anew


def test_a_failed_build_raises_for_its_caller_and_the_next_caller_builds():
    cache = SharedCharts()
    with pytest.raises(ZeroDivisionError):
        cache.get("key", lambda: 1 / 0)
    assert cache.get("key", lambda: "built") == "built"


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_capacity_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=f"Received: capacity={bad!r}"):
        SharedCharts(bad)
