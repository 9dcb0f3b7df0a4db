"""Keeps Streamlit's after-each-run clean-up off the training threads that share the process.

After every script run, fragment reruns included, Streamlit does two things meant for scripts
that build a Keras model per run: a full `gc.collect(2)` (`runner.postScriptGC`, switched off in
`.streamlit/config.toml`) and `keras.backend.clear_session()`. In a process that already holds
TensorFlow, Keras and a trainer, each one holds the GIL for a full collection (measured: 300 ms
and 250 ms with ~460,000 live objects), so with a timed view redrawing every 0.5-1 s the script
thread kept the GIL almost all the time. A trainer tracing its step (thousands of short calls
that each give the GIL back) then waited on it after every call: the first step of a run took
minutes, and a browser test timed out on "Building the models…". `clear_session()` also swaps
Keras' global state and clears TensorFlow's kernel cache under a model being built on another
thread. Clipwatch never builds a model on the script thread, so there is nothing for it to clear.
"""

from __future__ import annotations

import logging

_LOGGER = logging.getLogger(__name__)


def _clean_nothing() -> None:
    """Streamlit's post-run clean-up, for a page that builds no model on its script thread."""


def keep_training_state_across_reruns() -> bool:
    """Stop Streamlit clearing Keras' session after each script run (idempotent).

    Returns whether the clean-up is off. Streamlit's hook is private: if a Streamlit release
    renames it, this logs a warning and the page still works (more slowly while a step traces).
    """
    try:
        from streamlit.runtime.scriptrunner import script_runner
    except ImportError:  # pragma: no cover - a Streamlit without the module
        script_runner = None
    if script_runner is None or not hasattr(script_runner, "_clean_problem_modules"):
        _LOGGER.warning("Streamlit has no _clean_problem_modules: it may clear Keras' session after each run")
        return False
    script_runner._clean_problem_modules = _clean_nothing
    return True
