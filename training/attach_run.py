"""Moved to `training.attach.run`; this name keeps working (it is the same module)."""

import sys

from .attach import run as moved

sys.modules[__name__] = moved
