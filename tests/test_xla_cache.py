"""The persistent XLA cache: where it goes, and a corrupt entry never breaks a run."""

import json
import os
import subprocess
import sys
from pathlib import Path

from training import xla_cache

ROOT = Path(__file__).resolve().parent.parent

# A run that trains until its full (XLA) step is in use, in a fresh process: the cache flag is
# read when TensorFlow loads, so only a new process sees a changed cache folder. Paced, as the
# page's runs are: at full speed its quick step trained a core flat out beside the compiles
# (the test's two processes: 30.4-38.0 s of CPU at full speed, 24.7-27.6 s paced; 3 runs each).
RUN_TO_THE_FULL_STEP = """
import json
from training import Trainer, xla_cache
trainer = Trainer(task="seed")
trainer.set_max_steps_per_second(1000)
trainer.start()
compiled = trainer.wait_until_compiled(timeout=300)
trainer.stop()
status = trainer.status
print(json.dumps({"compiled": compiled, "state": status.state, "error": status.error,
                  "compiling": status.compiling, "folder": str(xla_cache.active_folder())}))
"""


def run_in_a_fresh_process(cache_folder: Path, tmp_path: Path) -> dict:
    environment = {
        **os.environ,
        "CLIPWATCH_XLA_CACHE": str(cache_folder),
        "CLIPWATCH_DB": str(tmp_path / "clipwatch.db"),
    }
    environment.pop("TF_XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, "-c", RUN_TO_THE_FULL_STEP], cwd=ROOT, env=environment,
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_configure_points_tensorflow_at_the_folder_and_keeps_an_explicit_flag(tmp_path, monkeypatch):
    monkeypatch.setattr(xla_cache, "_active", xla_cache.active_folder())  # this process's stays
    environ = {"CLIPWATCH_XLA_CACHE": str(tmp_path / "cache")}
    assert xla_cache.configure(environ) == tmp_path / "cache"
    assert environ["TF_XLA_FLAGS"] == f"--tf_xla_persistent_cache_directory={tmp_path / 'cache'}"
    assert (tmp_path / "cache").is_dir()

    explicit = {"TF_XLA_FLAGS": f"--tf_xla_persistent_cache_directory={tmp_path / 'mine'} --other", "CLIPWATCH_XLA_CACHE": "x"}
    assert xla_cache.configure(explicit) == tmp_path / "mine"
    assert explicit["TF_XLA_FLAGS"] == f"--tf_xla_persistent_cache_directory={tmp_path / 'mine'} --other"

    off = {"CLIPWATCH_XLA_CACHE": "off"}
    assert xla_cache.configure(off) is None and "TF_XLA_FLAGS" not in off


def test_the_default_folder_is_in_the_users_cache_folder_and_names_the_tensorflow_build(tmp_path, monkeypatch):
    # Not next to the run database: a run refused for its arguments, or one with --no-db, must
    # leave no runs/ folder behind (issue #22).
    monkeypatch.setattr(xla_cache, "_active", xla_cache.active_folder())
    environ = {"CLIPWATCH_DB": str(tmp_path / "runs" / "clipwatch.db"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    folder = xla_cache.configure(environ)
    assert folder.parent == tmp_path / "cache" / "clipwatch" / "xla"
    assert folder.name.startswith("tf-") and folder.is_dir()
    assert not (tmp_path / "runs").exists()

    home = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": "relative/ignored"}  # the XDG rule
    assert xla_cache.configure(home).parent == tmp_path / "home" / ".cache" / "clipwatch" / "xla"


def test_a_corrupt_cache_entry_costs_a_compile_never_the_run(tmp_path):
    cache = tmp_path / "xla-cache"
    first = run_in_a_fresh_process(cache, tmp_path)
    assert first["compiled"] and first["state"] == "stopped" and not first["compiling"], first
    entries = sorted(cache.glob(xla_cache.ENTRY_GLOB))
    assert entries, "the first process saved no XLA executable"
    for entry in entries:  # a crash mid-write, or another program's bytes
        entry.write_bytes(entry.read_bytes()[:100] + b"\x00garbage")
    second = run_in_a_fresh_process(cache, tmp_path)
    assert second["compiled"] and second["state"] == "stopped" and not second["compiling"], second
    assert second["error"] is None
    # The corrupt entries were replaced by good ones (a third process would load them).
    for entry in cache.glob(xla_cache.ENTRY_GLOB):
        assert not entry.read_bytes().endswith(b"\x00garbage")
