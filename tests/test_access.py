"""Viewers and an operator: the gate's permissions, the wrong-key lock-out, the guarded manager."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboard.access import (
    LOCKOUT_SECONDS,
    MAX_WRONG_KEYS,
    GuardedRunManager,
    KeyAttempts,
    OperatorGate,
    ViewOnlyError,
)

KEY = "correct horse battery staple"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Recorder:
    """A stand-in for the RunManager: records which methods ran."""

    def __init__(self):
        self.calls = []
        self.state = "running"

    def snapshot(self):
        self.calls.append("snapshot")
        return "a snapshot"

    def set_clip_threshold(self, value):
        self.calls.append(("set_clip_threshold", value))

    def some_new_command(self):
        self.calls.append("some_new_command")


def test_the_right_key_unlocks_one_session_and_not_another():
    gate = OperatorGate(KEY)
    operator = gate.unlock(KeyAttempts(), KEY)
    assert operator.permission and gate.allows(operator.permission)
    assert not gate.allows(None) and not gate.allows("a guessed token")
    assert gate.unlock(KeyAttempts(), KEY).permission != operator.permission  # one per session
    gate.revoke(operator.permission)
    assert not gate.allows(operator.permission)


def test_without_a_key_every_session_steers():
    gate = OperatorGate(None)
    assert not gate.key_configured and gate.allows(None)
    assert GuardedRunManager(Recorder(), gate, None).can_steer


def test_five_wrong_keys_lock_the_session_out_for_a_minute_even_for_the_right_key():
    clock = Clock()
    gate, attempts = OperatorGate(KEY, clock=clock), KeyAttempts()
    messages = [gate.unlock(attempts, f"guess {n}").message for n in range(MAX_WRONG_KEYS)]
    assert messages[0] == "Wrong operator key (4 tries left)."
    assert messages[-1].startswith(f"Too many wrong operator keys: this session is locked out for {LOCKOUT_SECONDS:.0f} s")
    clock.now += LOCKOUT_SECONDS - 1
    locked = gate.unlock(attempts, KEY)
    assert locked.permission is None and "locked out for 1 s more" in locked.message
    assert gate.unlock(KeyAttempts(), KEY).permission  # another session is not locked out
    clock.now += 1
    assert gate.unlock(attempts, KEY).permission  # after the minute, the right key works


def test_an_empty_entry_is_not_a_try():
    gate, attempts = OperatorGate(KEY), KeyAttempts()
    assert gate.unlock(attempts, "").message == "Enter the operator key."
    assert attempts.wrong == 0


@given(entered=st.text() | st.none() | st.integers() | st.binary())
def test_no_other_entry_unlocks_and_no_message_shows_the_key(entered):
    gate = OperatorGate(KEY)
    result = gate.unlock(KeyAttempts(), entered)
    assert result.permission is None
    assert KEY not in result.message


def test_a_viewer_is_refused_every_command_before_it_reaches_the_manager():
    gate, manager = OperatorGate(KEY), Recorder()
    viewer = GuardedRunManager(manager, gate, None)
    assert viewer.snapshot() == "a snapshot" and viewer.state == "running"  # reading works
    for command in (lambda: viewer.set_clip_threshold(0.5), viewer.some_new_command):
        with pytest.raises(ViewOnlyError, match="needs the operator"):
            command()
    assert manager.calls == ["snapshot"]  # nothing else ran, a new command included
    operator = GuardedRunManager(manager, gate, gate.unlock(KeyAttempts(), KEY).permission)
    operator.set_clip_threshold(0.5)
    assert manager.calls[-1] == ("set_clip_threshold", 0.5) and operator.can_steer and not viewer.can_steer


def test_a_viewer_cannot_start_a_real_run_manager_nor_reach_its_parts(tmp_path):
    from dashboard.live_run import RunSettings
    from dashboard.run_manager import RunManager

    manager = RunManager(database_path=tmp_path / "runs.db")
    viewer = GuardedRunManager(manager, OperatorGate(KEY), None)
    with pytest.raises(ViewOnlyError, match="start needs the operator"):
        viewer.start(RunSettings())
    for part in ("live", "race", "library"):
        with pytest.raises(ViewOnlyError):
            getattr(viewer, part)
    with pytest.raises(ViewOnlyError):
        viewer.set_database_path(str(tmp_path / "other.db"))
    assert manager.trainer is None and viewer.list_runs().empty and viewer.state == "idle"
    assert manager.database_status().path == str(tmp_path / "runs.db")
