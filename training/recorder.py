"""Moved to `training.runs.recorder`; this name keeps working (it is the same module)."""

import sys

from .runs import recorder as moved

sys.modules[__name__] = moved
