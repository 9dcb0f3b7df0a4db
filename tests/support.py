"""Small helpers shared by the tests: the one wait helper and the import check."""

import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def assert_imports_neither_streamlit_nor_tensorflow(*modules: str) -> None:
    """Import `modules` in a fresh interpreter and fail if that loaded Streamlit or TensorFlow."""
    code = (
        f"import sys, {', '.join(modules)}; "
        "bad = [name for name in ('streamlit', 'tensorflow') if name in sys.modules]; "
        "print(*bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"importing {', '.join(modules)} imported: {result.stdout} {result.stderr}"
