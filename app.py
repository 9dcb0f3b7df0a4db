"""Clipwatch: watch and steer gradient clipping live. Run with `streamlit run app.py`.

This file is read twice. `streamlit run` finds `app` below and serves it: its start-up imports
the page's modules (pandas, Altair, the dashboard: ~0.45 s) before the server answers, so the
first tab's first script run does not (open -> Start clickable: 2.43-2.50 s -> 1.95-2.15 s, three
opens each of a fresh server). Each browser session then runs it as its script (`__main__`),
which draws the page.
"""

import contextlib

import streamlit as st


@contextlib.asynccontextmanager
async def import_the_page_first(_app):
    """The server's start-up: the page's modules, not TensorFlow (its warm-up starts once a page
    is drawn: dashboard/run_manager.py)."""
    import dashboard.page  # noqa: F401

    yield


app = st.App(__file__, lifespan=import_the_page_first)

if __name__ == "__main__":
    st.set_page_config(
        page_title="Clipwatch",
        page_icon=":material/content_cut:",
        layout="wide",
        initial_sidebar_state="expanded",
    )

    from dashboard.page import render  # noqa: E402  (page config comes first)
    from dashboard.runtime import keep_training_state_across_reruns  # noqa: E402
    from training.interpreter_lock import switch_threads_often  # noqa: E402

    keep_training_state_across_reruns()  # no Keras clean-up after each run (dashboard/runtime.py)
    switch_threads_often()  # charts drawn here must not hold up a tracing trainer (interpreter_lock.py)
    render()
