"""The server-start warm-up: once per task, in the background, and never an error for the caller."""

import threading

from training import warmup


def test_warm_up_runs_once_per_task_in_the_background():
    thread = warmup.warm_up("seed")
    assert thread.daemon and thread.name == "clipwatch-warm-up-seed"
    assert warmup.warm_up("seed") is thread  # a second session does not warm again
    thread.join(300)
    assert not thread.is_alive()


def test_a_failing_warm_up_stays_quiet(monkeypatch):
    escaped = []
    monkeypatch.setattr(threading, "excepthook", escaped.append)
    monkeypatch.setattr(warmup, "_started", {})
    thread = warmup.warm_up("no_such_task")  # Trainer raises ValueError inside the thread
    thread.join(60)
    assert not thread.is_alive() and escaped == []
