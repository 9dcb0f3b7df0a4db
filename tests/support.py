"""Small helpers shared by the tests."""

import time


def wait_for(predicate, timeout=60.0, interval=0.01):
    """Poll `predicate` until it is true (returns True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
