"""Moved to `training.loop.warmup`; this name keeps working (it is the same module)."""

import sys

from .loop import warmup as moved

sys.modules[__name__] = moved
