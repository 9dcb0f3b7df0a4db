"""Moved to `training.tasks.plugins`; this name keeps working (it is the same module)."""

import sys

from .tasks import plugins as moved

sys.modules[__name__] = moved
