"""Training-state snapshots on disk, so a finished, stopped or killed run can be forked later.

One file per snapshot, `<folder>/run-<id>/step-<step>.npz`: numpy's zip of arrays (no pickle:
reading one never runs code), holding every tracked variable (`v0`, `v1`, ...), the knob vector
and a JSON header (`MAGIC`, `VERSION`, step, policy and parameters, variable count). A file is
written to a temporary name in the same folder, flushed to disk and renamed over its final
name, so a writer killed midway leaves the previous snapshots readable and no half file under a
snapshot's name. A file that is not a Clipwatch snapshot, a newer version or a torn file is
refused with a message naming it. Size: the model plus optimizer plus policy state, as in
memory (seed: 8.5 KiB a snapshot).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = "clipwatch-snapshot"
VERSION = 1
_FILE = re.compile(r"^step-(\d+)\.npz$")


class SnapshotFileError(ValueError):
    """A snapshot file that cannot be used (its message names the file and why)."""


def run_folder(folder: str | os.PathLike, run_id: int) -> Path:
    return Path(folder) / f"run-{int(run_id)}"


def write_snapshot(folder: str | os.PathLike, run_id: int, snapshot: dict[str, Any], kept: int | None = None) -> Path:
    """Write `snapshot` (as `TrainingState.snapshot()` returns it) atomically; keep the newest
    `kept` files of the run (None: all). Returns the file's path."""
    target_folder = run_folder(folder, run_id)
    target_folder.mkdir(parents=True, exist_ok=True)
    header = {
        "magic": MAGIC, "version": VERSION, "step": int(snapshot["step"]), "policy": snapshot["policy"],
        "policy_params": snapshot["policy_params"], "variables": len(snapshot["values"]),
        "learning_rate": snapshot.get("learning_rate"),  # in force at the step (None: not known)
        "run_created_at": snapshot.get("run_created_at"),  # the run's identity in its database
    }  # fmt: skip
    arrays = {f"v{index}": np.asarray(value) for index, value in enumerate(snapshot["values"])}
    path = target_folder / f"step-{int(snapshot['step'])}.npz"
    handle, temporary = tempfile.mkstemp(prefix=".writing-", suffix=".npz", dir=target_folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, header=np.array(json.dumps(header)), knob_values=snapshot["knob_values"], **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if kept is not None:
        for step in saved_steps(folder, run_id)[:-kept]:
            with contextlib.suppress(OSError):
                (target_folder / f"step-{step}.npz").unlink()
    return path


def refuse_another_runs_files(folder: str | os.PathLike, run_id: int) -> None:
    """Before a new run writes its first file: SnapshotFileError if its folder already holds
    snapshot files. Run ids are never reused in a database, so they are another run's (run
    `run_id` of another database given the same folder, or of one deleted since), and this run
    would overwrite and prune them."""
    steps = saved_steps(folder, run_id)
    if steps:
        shown = ", ".join(map(str, steps[:5])) + (", ..." if len(steps) > 5 else "")
        raise SnapshotFileError(
            f"{run_folder(folder, run_id)} already holds snapshot files (steps {shown}) of another run {run_id}: "
            "another run database keeps its snapshots in this folder too (or one deleted since), and this "
            "run would overwrite and prune them. Give this database its own snapshot folder "
            "(CLI --snapshot-folder, Python snapshot_folder=), or move those files away."
        )


def saved_steps(folder: str | os.PathLike, run_id: int) -> list[int]:
    """The steps of a run's snapshot files, oldest first (none: [])."""
    target_folder = run_folder(folder, run_id)
    if not target_folder.is_dir():
        return []
    return sorted(int(match.group(1)) for name in os.listdir(target_folder) if (match := _FILE.match(name)))


def nearest_snapshot(folder: str | os.PathLike, run_id: int, step: int | None) -> Path:
    """The run's latest snapshot file at or before `step` (None: the latest of all)."""
    steps = saved_steps(folder, run_id)
    usable = [saved for saved in steps if step is None or saved <= step]
    if not usable:
        where = run_folder(folder, run_id)
        when = "" if step is None else f" at or before step {step}"  # None: any step (was "step None")
        raise SnapshotFileError(
            f"Run {run_id} has no saved snapshot{when} in {where} "
            f"(saved: {', '.join(map(str, steps)) or 'none'}). Record it with --snapshot-every N."
        )
    return run_folder(folder, run_id) / f"step-{usable[-1]}.npz"


def read_snapshot(path: str | os.PathLike) -> dict[str, Any]:
    """A snapshot as `TrainingState.restore()` takes it; SnapshotFileError naming `path` otherwise."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "header" not in archive.files:
                raise SnapshotFileError(f"{path} is not a Clipwatch snapshot (it has no header).")
            header = json.loads(str(archive["header"]))
            if not isinstance(header, dict) or header.get("magic") != MAGIC:
                raise SnapshotFileError(f"{path} is not a Clipwatch snapshot (its header is not Clipwatch's).")
            if header.get("version") != VERSION:
                raise SnapshotFileError(
                    f"{path} is a version {header.get('version')!r} snapshot; this Clipwatch reads version {VERSION}."
                )
            values = [archive[f"v{index}"] for index in range(int(header["variables"]))]
            # Inside the `try`: a header without "policy", or a step that is not a number, is a
            # file that cannot be read, named as such (it was a bare KeyError or int() message).
            return {
                "step": int(header["step"]), "values": values, "policy": header["policy"],
                "policy_params": header["policy_params"], "knob_values": archive["knob_values"].astype(np.float32),
                "learning_rate": header.get("learning_rate"), "run_created_at": header.get("run_created_at"),
            }  # fmt: skip
    except SnapshotFileError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise SnapshotFileError(f"{path} cannot be read as a Clipwatch snapshot: {type(error).__name__}: {error}") from None

