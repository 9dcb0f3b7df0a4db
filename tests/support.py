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


def wait_until(predicate, timeout=60.0, what="condition", interval=0.05):
    """Poll `predicate` until it returns something truthy and return that; raise AssertionError
    naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"Timed out after {timeout:g}s waiting for {what}")
