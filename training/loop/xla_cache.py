"""TensorFlow's persistent XLA compilation cache, kept in the user's cache folder.

`configure()` must run before TensorFlow is imported (`training/__init__.py` calls it first): it
adds `--tf_xla_persistent_cache_directory` to `TF_XLA_FLAGS`. TensorFlow then saves each XLA
executable it compiles and loads it again in a later process whose traced function has the same
name and shapes (measured: seed's full chunk, 2.9 s -> 1.6 s for the second trainer of a second
process; tracing still runs). The folder is
`$XDG_CACHE_HOME/clipwatch/xla/tf-<TensorFlow version>-<machine>/` (`~/.cache/...` when
XDG_CACHE_HOME is unset), so an entry from another TensorFlow build is never looked up, and
the working folder gets nothing but the run database: a run refused for its arguments, or one
with `--no-db`, leaves no `runs/` folder behind.

A corrupt entry (a crash mid-write, a racing writer) makes TensorFlow's compile fail with
`DataLossError` or `OutOfRangeError`. `recover()` deletes the cache's entries: a step forced to
XLA retries with a fresh trace (training/step_compiler.py); a step that only tries XLA falls
back to the plain graph for that run (training/xla_fallback.py) and the next run compiles
afresh. A bad entry costs a compile, never a run.

Environment:
    CLIPWATCH_XLA_CACHE: the cache folder, or "off" (default: as above).
    XDG_CACHE_HOME: the user's cache folder (an absolute path; default ~/.cache).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

ENV = "CLIPWATCH_XLA_CACHE"
FLAG = "--tf_xla_persistent_cache_directory"
ENTRY_GLOB = "xla_compile_cache__*"
_active: Path | None = None
recoveries = 0  # how many times `recover()` cleared the cache in this process (each costs a retrace)


def user_cache_folder(environ=os.environ) -> Path:
    """The user's cache folder: $XDG_CACHE_HOME if it is an absolute path (the XDG rule for a
    relative one: ignore it), else ~/.cache. RuntimeError if there is no home folder either."""
    setting = environ.get("XDG_CACHE_HOME", "")
    if setting and Path(setting).is_absolute():
        return Path(setting)
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".cache"


def _default_folder(environ) -> Path:
    try:
        version = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return user_cache_folder(environ) / "clipwatch" / "xla" / f"tf-{version}-{platform.machine()}"


def configure(environ=os.environ) -> Path | None:
    """Point TensorFlow's persistent XLA cache at its folder; return the folder (None: off).

    Leaves an explicit `--tf_xla_persistent_cache_directory` in `TF_XLA_FLAGS` as it is. Never
    raises: a folder that cannot be created just means no persistent cache.
    """
    global _active
    flags = environ.get("TF_XLA_FLAGS", "")
    if FLAG in flags:
        value = flags.split(FLAG + "=", 1)[-1].split()[0] if FLAG + "=" in flags else ""
        _active = Path(value) if value else None
        return _active
    setting = environ.get(ENV, "")
    if setting.lower() == "off":
        return None
    try:
        folder = Path(setting) if setting else _default_folder(environ)
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # RuntimeError: no home folder to find ~/.cache in
        return None
    environ["TF_XLA_FLAGS"] = f"{flags} {FLAG}={folder}".strip()
    _active = folder
    return folder


def active_folder() -> Path | None:
    return _active


def recover(error: BaseException | None = None) -> bool:
    """After a failed XLA compile (`error`, if known): if a persistent cache is in use, delete its
    entries (one of them may be corrupt) and return True, meaning "retry with a fresh trace"."""
    global recoveries
    if _active is None:
        return False
    removed = False
    for entry in _active.glob(ENTRY_GLOB):
        try:
            entry.unlink()
            removed = True
        except OSError:
            pass
    recoveries += removed
    return removed
