"""Moved to `training.attach.callbacks`; this name keeps working (it is the same module)."""

import sys

from .attach import callbacks as moved

sys.modules[__name__] = moved
