"""Moved to `training.loop.xla_cache`; this name keeps working (it is the same module)."""

import sys

from .loop import xla_cache as moved

sys.modules[__name__] = moved
