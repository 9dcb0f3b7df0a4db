"""Viewers and an operator on the page (AppTest), with a real RunManager and Trainer.

With an operator key every session starts as a viewer: every control that changes something is
disabled, and a command the session sends anyway (AppTest can click a disabled button and set a
disabled input) is refused by the guarded run manager, with nothing changed. The key unlocks
one session and not another; five wrong keys lock a session out. Without a key, a server
listening beyond localhost shows a warning.
"""

from __future__ import annotations

import os

import pytest
import streamlit as st
from streamlit import config as streamlit_config
from streamlit.testing.v1 import AppTest

from dashboard.access import OPERATOR_KEY_VARIABLE
from dashboard.operator_controls import PERMISSION_STATE, operator_gate
from dashboard.run_manager import RunManager, get_run_manager
from support import wait_until

APP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "app.py")
KEY = "an AppTest operator key"
REFUSED = "needs the operator"
# What a viewer may still use: they change only this session's view, never the run.
VIEWING_CONTROLS = ("Operator key", "Log-scale y axes", "What-if threshold", "Suggest at percentile")


@pytest.fixture
def manager(monkeypatch) -> RunManager:
    monkeypatch.setenv(OPERATOR_KEY_VARIABLE, KEY)
    st.cache_resource.clear()  # a fresh shared run, and a gate that reads the key
    manager = get_run_manager()
    yield manager
    manager.stop_all()
    st.cache_resource.clear()


def session() -> AppTest:
    return AppTest.from_file(APP, default_timeout=60).run()


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def unlock(at: AppTest, key: str = KEY) -> AppTest:
    return at.sidebar.text_input(key="operator_key").input(key).run()


def forged(widget):
    """The widget as a client that ignores `disabled` would use it (AppTest, like a browser,
    refuses to touch a disabled widget; a hand-made websocket client would not)."""
    widget.proto.disabled = False
    return widget


def changing_widgets(at: AppTest) -> list:
    return [
        *at.sidebar.button, *at.sidebar.number_input, *at.sidebar.selectbox,
        *at.sidebar.select_slider, *at.sidebar.text_input,
    ]  # fmt: skip


def test_a_viewer_sees_the_page_with_every_control_disabled_and_a_note(manager):
    viewer = session()
    assert not viewer.exception
    assert any("View only" in text for text in texts(viewer.sidebar.info))
    steering = [w for w in changing_widgets(viewer) if w.label not in VIEWING_CONTROLS]
    assert steering and all(widget.disabled for widget in steering), [w.label for w in steering if not w.disabled]
    assert not viewer.sidebar.text_input(key="operator_key").disabled  # the way in


def test_a_forged_start_from_a_viewer_starts_nothing(manager):
    viewer = session()
    forged(viewer.button(key="start")).click().run()
    assert not viewer.exception
    assert manager.trainer is None and manager.run_number == 0


def test_the_key_unlocks_one_session_and_forged_commands_from_another_change_nothing(manager):
    operator = unlock(session())
    assert any("this session steers" in text for text in texts(operator.sidebar.caption) + texts(operator.success))
    operator.button(key="start").click().run()
    assert not operator.exception and not operator.error, texts(operator.error)
    wait_until(lambda: manager.trainer and manager.trainer.status.step > 20, what="the operator's run")
    trainer = manager.trainer

    viewer = session()
    assert viewer.button(key="stop").disabled and viewer.button(key="inject_spike").disabled
    for send in (
        lambda: forged(next(w for w in viewer.sidebar.text_input if w.label == "Clip threshold")).input("0.5"),
        lambda: forged(next(w for w in viewer.sidebar.text_input if w.label == "Learning rate")).input("0.5"),
        lambda: forged(next(w for w in viewer.sidebar.selectbox if w.label == "Policy")).select("value"),
        lambda: forged(viewer.button(key="inject_spike")).click(),
        lambda: forged(viewer.button(key="pause")).click(),
        lambda: forged(viewer.button(key="stop")).click(),
    ):
        send().run()
        assert not viewer.exception
    assert trainer.status.state == "running" and manager.trainer is trainer
    config = trainer.config
    assert (config.clip_threshold, config.policy) == (1.0, "global_norm") and config.learning_rate != 0.5
    assert trainer.events()["kind"].tolist() == ["start"]  # no command reached the run

    operator.button(key="stop").click().run()  # the operator's session still steers
    wait_until(lambda: trainer.status.state == "stopped", what="the operator's stop")


def test_a_command_from_a_session_that_lost_its_permission_is_refused_by_the_manager(manager):
    """The controls of the operator's last page are still enabled when its permission is
    withdrawn (another process could do it; here the gate does): the command reaches the
    guarded manager, which refuses it, and nothing changes."""
    operator = unlock(session())
    operator.button(key="start").click().run()
    wait_until(lambda: manager.trainer and manager.trainer.status.step > 20, what="the operator's run")
    trainer = manager.trainer
    operator_gate().revoke(operator.session_state[PERMISSION_STATE])
    threshold = next(w for w in operator.sidebar.text_input if w.label == "Clip threshold")
    assert not threshold.disabled  # as drawn while it was the operator
    threshold.input("0.5").run()
    assert not operator.exception
    assert any(REFUSED in text for text in texts(operator.error)), texts(operator.error)
    assert trainer.config.clip_threshold == 1.0 and trainer.events()["kind"].tolist() == ["start"]
    assert operator.button(key="stop").disabled  # and the page now shows it as a viewer


def test_five_wrong_keys_lock_the_session_out_and_the_key_never_shows(manager):
    viewer = session()
    for attempt in range(4):
        unlock(viewer, f"wrong {attempt}")
        assert texts(viewer.sidebar.error)[-1].startswith("Wrong operator key")
    unlock(viewer, "wrong 4")
    assert "locked out for 60 s" in texts(viewer.sidebar.error)[-1]
    unlock(viewer, KEY)  # the right key, during the lock-out
    assert "locked out for" in texts(viewer.sidebar.error)[-1]
    assert viewer.button(key="start").disabled
    assert viewer.sidebar.text_input(key="operator_key").value == ""  # never kept
    assert unlock(session()).button(key="start").disabled is False  # another session is not locked out
    shown = str([element.proto for element in viewer.main]) + str([element.proto for element in viewer.sidebar])
    assert KEY not in shown


def test_the_key_can_come_from_the_secrets_file(monkeypatch):
    monkeypatch.delenv(OPERATOR_KEY_VARIABLE, raising=False)
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(APP, default_timeout=60)
        at.secrets["operator_key"] = KEY
        at.run()
        assert at.button(key="start").disabled and any("View only" in t for t in texts(at.sidebar.info))
        unlock(at)
        assert not at.button(key="start").disabled
    finally:
        st.cache_resource.clear()


@pytest.fixture
def without_a_key_listening_on(monkeypatch):
    """No operator key, and the server's address set by the test (restored after)."""
    monkeypatch.delenv(OPERATOR_KEY_VARIABLE, raising=False)
    before = streamlit_config.get_option("server.address")
    st.cache_resource.clear()
    yield lambda address: streamlit_config.set_option("server.address", address)
    get_run_manager().stop_all()
    st.cache_resource.clear()
    streamlit_config.set_option("server.address", before)


@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.20", ""])
def test_no_key_and_an_open_server_shows_a_warning(without_a_key_listening_on, address):
    without_a_key_listening_on(address)
    at = session()
    assert any("Anyone who can open this page can steer the run" in t for t in texts(at.warning))
    assert not at.button(key="start").disabled  # and it still works as before


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost", "::1"])
def test_no_key_on_localhost_works_as_before_with_no_warning(without_a_key_listening_on, address):
    without_a_key_listening_on(address)
    at = session()
    assert not any("Anyone who can open" in t for t in texts(at.warning))
    assert not at.button(key="start").disabled and not at.sidebar.info
    assert not [w for w in changing_widgets(at) if w.label == "Operator key"]
