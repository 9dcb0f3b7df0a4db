"""Moved to `training.attach.live_clipping`; this name keeps working (it is the same module)."""

import sys

from .attach import live_clipping as moved

sys.modules[__name__] = moved
