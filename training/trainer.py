"""Moved to `training.loop.trainer`; this name keeps working (it is the same module)."""

import sys

from .loop import trainer as moved

sys.modules[__name__] = moved
