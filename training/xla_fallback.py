"""Moved to `training.loop.xla_fallback`; this name keeps working (it is the same module)."""

import sys

from .loop import xla_fallback as moved

sys.modules[__name__] = moved
