"""The page's entry point: the sidebar, a header, and four tabs: Live, A/B race, History and Compare.

The tabs are lazy (only the open one runs), so a hidden tab costs nothing and keeps no timer.
The sidebar is `controls`, the Live tab `live_view`, the A/B race tab `race_view`, History and
Compare `history_view`.
"""

from __future__ import annotations

import streamlit as st

from dashboard import controls, history_view, live_view, race_view
from dashboard.operator_controls import open_server_warning, operator_sidebar, session_run_manager
from dashboard.run_manager import warm_up_after_drawing

TITLE = "Clipwatch"
SUBTITLE = (
    "Watch gradient clipping act on a live training run, step by step, and tune the threshold "
    "while the model trains."
)
SECTION = "section"  # the tabs' key: the open tab's label
TABS = ("Live", "A/B race", "History", "Compare")


def render() -> None:
    """Draw the whole page for this session (call after st.set_page_config)."""
    manager = session_run_manager()  # the shared run, as this session may steer it
    st.session_state[controls.FINGERPRINT] = manager.fingerprint()
    operator_sidebar(manager)
    controls.sidebar(manager)
    st.title(TITLE, anchor=False)
    st.markdown(SUBTITLE)
    with st.container():  # one slot, whatever it holds (the header cards keep their place: live_view._live_view)
        open_server_warning()
        controls.database_messages(manager)
    views = (live_view.render, race_view.render, history_view.render_history, history_view.render_compare)
    for tab, view in zip(st.tabs(TABS, key=SECTION, on_change="rerun"), views):
        if tab.open:
            with tab:
                view(manager)
    warm_up_after_drawing()
