"""Moved to `training.loop.step_compiler`; this name keeps working (it is the same module)."""

import sys

from .loop import step_compiler as moved

sys.modules[__name__] = moved
