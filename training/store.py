"""Moved to `training.runs.store`; this name keeps working (it is the same module)."""

import sys

from .runs import store as moved

sys.modules[__name__] = moved
