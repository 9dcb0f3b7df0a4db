"""Clipwatch: watch and steer gradient clipping live. Run with `streamlit run app.py`."""

import streamlit as st

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
