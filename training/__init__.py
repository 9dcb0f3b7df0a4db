"""Clipwatch's training side: clipping policies, tasks, the background trainer and its store.

No Streamlit here: this package runs headless (see `python -m training --help`).
"""

import os

# TensorFlow's C++ start-up chatter (no CUDA driver, CPU flags) is noise here; its real errors
# still arrive as Python exceptions. Set TF_CPP_MIN_LOG_LEVEL yourself to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Before TensorFlow loads: XLA executables persist under the runs folder (training/xla_cache.py).
from training import xla_cache  # noqa: E402

xla_cache.configure()

from training.policies import POLICY_NAMES  # noqa: E402
from training.tasks import TASK_NAMES  # noqa: E402
from training.trainer import Trainer, TrainerStatus  # noqa: E402

__all__ = ["Trainer", "TrainerStatus", "POLICY_NAMES", "TASK_NAMES"]
