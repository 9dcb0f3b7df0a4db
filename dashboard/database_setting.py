"""The run database setting: the sidebar's Settings (the database path) and the page's warning.

Every new run (and both sides of an A/B race) is recorded in the SQLite file set here; when the
path cannot be used, the page says so above the tabs and new runs are kept in memory only. A
PostgreSQL server is the operator's to set (--db or CLIPWATCH_DB): the field then shows its URL
without the password and cannot be changed.
"""

from __future__ import annotations

import streamlit as st

from dashboard.control_commands import control_command
from dashboard.control_state import DATABASE_PATH, show_error, widget_key
from dashboard.run_manager import RunManager


def _on_database_path(manager: RunManager, key: str) -> None:
    # RuntimeError: a viewer (dashboard.access). The field shows the database in use.
    control_command(DATABASE_PATH, key, manager.set_database_path, current_key=_database_path_key(manager))


def _database_path_key(manager: RunManager) -> str:
    # A new widget whenever the path changes (from any tab) or a value is refused.
    return f"{widget_key(DATABASE_PATH)}.{manager.database_status().generation}"


def settings_controls(manager: RunManager) -> None:
    """The sidebar's Settings: the database path field, whether new runs are recorded there, its refusal."""
    status = manager.database_status()
    with st.expander("Settings", icon=":material/settings:", expanded=not status.available):
        key = _database_path_key(manager)
        st.text_input(
            "Database path",
            value=status.path,
            key=key,
            on_change=_on_database_path,
            args=(manager, key),
            help="The SQLite file every new run (and both sides of an A/B race) is recorded in, "
            "for History and Compare: a file in the runs folder. A run already going keeps "
            "writing where it started. A PostgreSQL server is set by the operator (--db or "
            "CLIPWATCH_DB), never here.",
            disabled=not manager.can_steer or status.server,
        )
        if status.server:
            st.caption("A PostgreSQL server, set by the operator: the page cannot change it.")
        if status.available:
            st.caption("New runs are recorded here.")
        else:
            st.caption("This path cannot be used: new runs are kept in memory only.")
        show_error(DATABASE_PATH)


def database_messages(manager: RunManager) -> None:
    """Above the tabs, while the database path cannot be used: why, and what that means for runs."""
    status = manager.database_status()
    if status.available:
        return
    st.error(status.error, icon=":material/database:")
    st.warning(
        "Runs are kept in memory only: new runs are not recorded, so they will not show in "
        "History or Compare and are gone when the server stops. Everything else works. Set "
        "another database path under **Settings** in the sidebar to record them again.",
        icon=":material/memory:",
    )
