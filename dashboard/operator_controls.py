"""The sidebar's "Operator key" field, the view-only note, and the open-server warning.

`session_run_manager()` is how every part of the page reaches the shared run: the
`RunManager` behind this session's permission (see `dashboard.access`). The page draws
`operator_sidebar()` once per run of its script; controls that change something are disabled
when `can_steer` is false, and the manager refuses them anyway.
"""

from __future__ import annotations

import streamlit as st

from dashboard.access import (
    VIEW_ONLY_NOTE,
    GuardedRunManager,
    KeyAttempts,
    OperatorGate,
    configured_operator_key,
    server_is_local,
)
from dashboard.run_manager import get_run_manager

PERMISSION_STATE = "operator_permission"
ATTEMPTS_STATE = "operator_key_attempts"
MESSAGE_STATE = "operator_key_message"
KEY_WIDGET = "operator_key"
OPEN_SERVER_WARNING = (
    "Anyone who can open this page can steer the run: the server listens beyond this machine "
    "({address}) and no operator key is set. Set CLIPWATCH_OPERATOR_KEY (README: Sharing the "
    "page) and restart the server."
)


@st.cache_resource
def operator_gate() -> OperatorGate:
    """One gate per server, with the key configured when it started."""
    return OperatorGate(configured_operator_key())


def session_run_manager() -> GuardedRunManager:
    """The shared run manager, as this session may use it."""
    return GuardedRunManager(get_run_manager(), operator_gate(), st.session_state.get(PERMISSION_STATE))


def _on_key_entered() -> None:
    entered = st.session_state.get(KEY_WIDGET, "")
    st.session_state[KEY_WIDGET] = ""  # the key never stays in the page, not even masked
    attempts = st.session_state.setdefault(ATTEMPTS_STATE, KeyAttempts())
    result = operator_gate().unlock(attempts, entered)
    if result.permission is not None:
        st.session_state[PERMISSION_STATE] = result.permission
    st.session_state[MESSAGE_STATE] = (result.permission is not None, result.message)


def _on_lock() -> None:
    operator_gate().revoke(st.session_state.pop(PERMISSION_STATE, None))


def open_server_warning() -> None:
    """In the main area: with no key, a server reachable from other machines is open to all."""
    if not operator_gate().key_configured and not server_is_local():
        address = st.get_option("server.address") or "every address"
        st.warning(OPEN_SERVER_WARNING.format(address=address), icon=":material/lock_open:")


def operator_sidebar(manager: GuardedRunManager) -> None:
    """With a key: the view-only note and the "Operator key" field, or the operator's Lock."""
    if not operator_gate().key_configured:
        return
    with st.sidebar:
        if manager.can_steer:
            st.caption("Operator: this session steers the run.")
            st.button("Lock", key="operator_lock", on_click=_on_lock, help="Back to view only")
        else:
            st.info(VIEW_ONLY_NOTE, icon=":material/visibility:")
            st.text_input("Operator key", key=KEY_WIDGET, type="password", on_change=_on_key_entered)
        outcome = st.session_state.pop(MESSAGE_STATE, None)
        locked_out = operator_gate().lockout_message(st.session_state.get(ATTEMPTS_STATE, KeyAttempts()))
        if outcome is not None:
            unlocked, message = outcome
            (st.success if unlocked else st.error)(message)
        elif locked_out:  # stays up for the whole minute, through every refresh
            st.error(locked_out)
