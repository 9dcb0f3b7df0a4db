"""The page's first paint needs no TensorFlow; the run's own thread imports it (issue #20).

Importing TensorFlow takes 5-13 s on 2 cores. The dashboard's modules, the settings checks and a
`Trainer` object load without it, so the sidebar and Start come at once; the first attribute
read of `training.lazy_import.tf` (on the training or warm-up thread) imports it.
"""

import subprocess
import sys
import textwrap
import threading

import pytest
from support import REPO

from training.lazy_import import LazyModule, is_imported


def run_fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_the_page_and_a_trainer_load_without_tensorflow_and_the_run_imports_it_on_its_own_thread():
    result = run_fresh(
        """
        import sys, threading
        import dashboard.page, dashboard.runtime, training.interpreter_lock  # what app.py imports
        from training import Trainer
        from training.clipping.policies import validate_clip_threshold
        from training.lazy_import import tensorflow_ready
        validate_clip_threshold(0.5)
        trainer = Trainer(task="seed", max_steps=40)
        print("before start:", "tensorflow" in sys.modules, tensorflow_ready())
        trainer.start()
        import time
        deadline = time.monotonic() + 280
        while trainer.status.state not in ("stopped", "failed") and time.monotonic() < deadline:
            time.sleep(0.05)
        print("after run:", trainer.status.state, trainer.status.step, tensorflow_ready(), trainer.status.error)
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "before start: False False" in lines, result.stdout
    assert "after run: stopped 40 True None" in lines, result.stdout


def test_a_lazy_module_imports_at_its_first_attribute(tmp_path, monkeypatch):
    (tmp_path / "clipwatch_probe_module.py").write_text("ANSWER = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "clipwatch_probe_module", raising=False)
    lazy = LazyModule("clipwatch_probe_module")
    assert "clipwatch_probe_module" not in sys.modules
    assert lazy.ANSWER == 42
    assert sys.modules["clipwatch_probe_module"].ANSWER == 42
    with pytest.raises(AttributeError, match="QUESTION"):
        lazy.QUESTION


def test_a_module_still_importing_on_another_thread_is_not_imported(tmp_path, monkeypatch):
    """`is_imported` tells a finished import from one in progress (a module is in sys.modules
    from the start of its import): the page says "Loading TensorFlow" until it has finished."""
    (tmp_path / "clipwatch_slow_module.py").write_text(
        "import clipwatch_gate\nclipwatch_gate.entered.set()\nclipwatch_gate.release.wait(60)\n"
    )
    gate = type(sys)("clipwatch_gate")
    gate.entered, gate.release = threading.Event(), threading.Event()
    monkeypatch.setitem(sys.modules, "clipwatch_gate", gate)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "clipwatch_slow_module", raising=False)
    assert not is_imported("clipwatch_slow_module")
    importer = threading.Thread(target=__import__, args=("clipwatch_slow_module",))
    importer.start()
    try:
        assert gate.entered.wait(60)
        assert "clipwatch_slow_module" in sys.modules and not is_imported("clipwatch_slow_module")
    finally:
        gate.release.set()
        importer.join(60)
    assert is_imported("clipwatch_slow_module")
    monkeypatch.delitem(sys.modules, "clipwatch_slow_module")
