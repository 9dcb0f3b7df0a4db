"""Moved to `training.runs.database`; this name keeps working (it is the same module)."""

import sys

from .runs import database as moved

sys.modules[__name__] = moved
