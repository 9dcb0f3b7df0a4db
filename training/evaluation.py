"""Moved to `training.runs.evaluation`; this name keeps working (it is the same module)."""

import sys

from .runs import evaluation as moved

sys.modules[__name__] = moved
