"""Moved to `training.attach.commands`; this name keeps working (it is the same module)."""

import sys

from .attach import commands as moved

sys.modules[__name__] = moved
