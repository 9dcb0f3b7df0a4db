"""Moved to `training.tasks.streaming`; this name keeps working (it is the same module)."""

import sys

from .tasks import streaming as moved

sys.modules[__name__] = moved
