"""Moved to `training.clipping.policies`; this name keeps working (it is the same module)."""

import sys

from .clipping import policies as moved

sys.modules[__name__] = moved
