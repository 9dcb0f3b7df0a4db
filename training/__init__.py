"""Clipwatch's training side: clipping policies, tasks, the background trainer and its store.

No Streamlit here: this package runs headless (see `python -m training --help`). Installed, it
is imported as `clipwatch` (`import clipwatch`, `from clipwatch.keras import LiveClipping`); from
the checkout, `training` and `clipwatch` name the same modules (training/import_name.py).

    clipping/  the policies, the compiled clipping core both drivers call, the commands
    loop/      Clipwatch's own trainer: its thread, compiled chunk, XLA swap and warm-up
    runs/      a run's records: the store, the recorder, the run database
    tasks/     the built-in tasks and the plug-in loader
    attach/    LiveClipping: Clipwatch inside a user's own Keras script (tf.distribute too)
    cli.py     `python -m clipwatch` / `python -m training`: headless runs
"""

import os

from .import_name import alias

alias(__name__)  # `import clipwatch` from the checkout: these same modules

# TensorFlow's C++ start-up chatter (no CUDA driver, CPU flags) is noise here; its real errors
# still arrive as Python exceptions. Set TF_CPP_MIN_LOG_LEVEL yourself to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Before TensorFlow loads: XLA executables persist under the runs folder (training/xla_cache.py).
from .loop import xla_cache  # noqa: E402

xla_cache.configure()

# The names below load on first use (PEP 562), not with the package: the dashboard's first paint
# imports parts of this package that need no TensorFlow (run records, task names, settings
# checks), and TensorFlow alone takes 5-13 s to import on 2 cores.
_LAZY = {
    "Trainer": ".loop.trainer",
    "TrainerStatus": ".loop.trainer",
    "POLICY_NAMES": ".clipping.policies",
    "TASK_NAMES": ".tasks",
}
__all__ = ["Trainer", "TrainerStatus", "POLICY_NAMES", "TASK_NAMES"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
