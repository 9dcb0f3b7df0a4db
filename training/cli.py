"""Headless runs: `python -m training --task seed --policy global_norm --steps 2000 --csv out.csv`.

`--task` takes a built-in task's name or a plug-in: `path/to/my_task.py`, `my_package.my_task`
or `my_package.my_task:OTHER_NAME` (see `training.plugins`). A plug-in that cannot be used
(it does not import, has no TASK, a field of the wrong kind, data that does not fit the model)
exits with status 2 and one message naming its file.

Writes every step to the CSV (streamed chunk by chunk from the training thread), shows a progress
bar on stderr when stderr is a terminal, and prints a one-line JSON summary last: its
`final_loss` is the last step's loss and its `clip_rate` covers the whole run (as the CSV and
the run database do). The summary is strict JSON: a NaN or infinite number is written as null.

Bad arguments exit with status 2 and a message, and write nothing: every setting is checked
before the database or the CSV is opened. A failed run exits with status 1, saying why on stderr. Ctrl-C and SIGTERM
(what `kill`, systemd, Docker and CI runners send) stop the run the same way: every step trained
is flushed to the CSV and the database, the run is marked "stopped", the summary is printed and
the exit status is 0. A run recorded in a database is steered through it like an attached script
(`RunDatabase.send_command` from another process or machine; a `stop` ends it as Ctrl-C does).

`--sweep 0.1,0.3,1,3 --sweep-steps 500` trains `--steps` steps, then forks the run at its last
step into one branch per threshold (and the baseline and noise branches) for 500 steps each, on
the same batches (training/loop/forking.py); the summary gains `sweep` (per threshold:
`clip_threshold, run_id, final_loss, mean_loss, clip_rate`), `best_clip_threshold` and
`noise_floor`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import signal
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from .interpreter_lock import switch_threads_often
from .clipping.knobs import KNOB
from .clipping.policies import POLICY_NAMES, POLICY_PARAMETERS, refuse_a_threshold_sweep
from .loop.sweeps import DEFAULT_SWEEP_STEPS, validate_sweep_thresholds
from .runs.command_relay import CommandRelay
from .runs.store import STEP_COLUMNS
from .tasks import TASK_NAMES

if TYPE_CHECKING:
    from .runs.database import RunDatabase
    from .loop.trainer import Trainer

# How long a stopped run (Ctrl-C, SIGTERM) may take to flush its last steps before the summary.
STOP_SECONDS = 60.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training", description="Train a task headless with gradient clipping."
    )
    parser.add_argument(
        "--task", default=None,
        help=f"a built-in task ({', '.join(TASK_NAMES)}), or a plug-in: path/to/my_task.py, "
        "my_package.my_task or my_package.my_task:OTHER_NAME",
    )  # fmt: skip
    parser.add_argument("--policy", default=None, choices=POLICY_NAMES, help="default: global_norm")
    parser.add_argument("--clip-threshold", type=float, default=None, help="c (zclip: the cap; default 1.0)")
    parser.add_argument("--steps", type=int, default=2000, help="steps to train (after --fork-from: after the fork)")
    parser.add_argument("--seed", type=int, default=None, help="default: 0")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the task's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the task's")
    parser.add_argument("--csv", default=None, help="write every step to this CSV file")
    parser.add_argument(
        "--db", default=None,
        help="record the run in this SQLite file, or a PostgreSQL database "
        "(postgresql://user@host:port/dbname; default: $CLIPWATCH_DB or runs/clipwatch.db)",
    )  # fmt: skip
    parser.add_argument("--no-db", action="store_true", help="do not record the run")
    parser.add_argument("--name", default=None, help="the run's name in the database")
    parser.add_argument(
        "--max-nonfinite-steps", type=int, default=50,
        help="fail after this many consecutive non-finite steps",
    )  # fmt: skip
    parser.add_argument(
        "--snapshot-every", type=int, default=None, metavar="N",
        help="write snapshots of the training state beside the run database, to fork the run later: at the "
        "first chunk end at or past each multiple of N steps (a chunk is up to 2,048 steps), at most four a second",
    )  # fmt: skip
    parser.add_argument(
        "--snapshot-folder", default=None,
        help="where snapshot files go (default: snapshots/DATABASE_FILE_NAME/ beside the SQLite file; needed with a server)",
    )  # fmt: skip
    parser.add_argument("--fork-from", type=int, default=None, metavar="RUN_ID",
                        help="continue this recorded run from its nearest saved snapshot, as a new branch")  # fmt: skip
    parser.add_argument("--at-step", type=int, default=None, metavar="S",
                        help="with --fork-from: the snapshot at or before this step (default: the latest)")  # fmt: skip
    parser.add_argument(
        "--sweep", default=None, metavar="C1,C2,...",
        help="after --steps, sweep these clip thresholds from the last step (comma-separated)",
    )  # fmt: skip
    parser.add_argument(
        "--sweep-steps", type=int, default=None,
        help=f"steps each swept threshold trains (default {DEFAULT_SWEEP_STEPS})",
    )  # fmt: skip
    seen = set()
    for policy, parameters in POLICY_PARAMETERS.items():
        for name, parameter in parameters.items():
            if name in seen:
                continue
            seen.add(name)
            users = [p for p, params in POLICY_PARAMETERS.items() if name in params]
            parser.add_argument(
                "--" + name.replace("_", "-"),
                type=parameter.kind,
                default=None,
                help=f"{', '.join(users)}: {parameter.allowed()} (default {parameter.default:g})",
            )
    return parser


class CsvSink:
    """Streams every chunk's rows to a CSV file (on the trainer's recorder thread, off the training one)."""

    COLUMNS = list(STEP_COLUMNS)

    def __init__(self, stream: IO[str]):
        self._stream = stream
        csv.writer(stream).writerow(self.COLUMNS)
        self._policy_names = np.array(POLICY_NAMES)

    def __call__(self, rows: dict[str, np.ndarray]) -> None:
        # The same text csv.writer writes (no value needs quoting), joined here: formatting
        # columns with numpy and joining lines cost half of csv.writer.writerows (13 vs 26 us per
        # row under load), most of what is left being float32's shortest round-trip text.
        columns = []
        for name in self.COLUMNS:
            values = rows[name]
            if name == "policy":
                text = self._policy_names[values].tolist()
            elif values.dtype == np.bool_:
                text = np.where(values, "True", "False").tolist()
            elif values.dtype == np.float64:
                text = [repr(value) for value in values.tolist()]  # as csv.writer: repr
            else:
                text = values.astype(str).tolist()  # float32: shortest round-trip, not noise
            columns.append(text)
        self._stream.write("".join(line + "\r\n" for line in map(",".join, zip(*columns))))
        self._stream.flush()


def _progress(step: int, total: int, speed: float) -> None:
    width = 30
    filled = int(width * step / max(total, 1))
    bar = "#" * filled + "-" * (width - filled)
    sys.stderr.write(f"\r[{bar}] {step}/{total} steps  {speed:,.0f} steps/s")
    sys.stderr.flush()


@dataclass
class PreparedRun:
    """A run built from the command line, not started yet."""

    trainer: Trainer
    database: RunDatabase | None
    csv_file: IO[str] | None
    sweep_id: int | None = None
    start_step: int | None = None  # a fork's: the step of the snapshot it starts from (None: not a fork)

    def close(self) -> None:
        if self.csv_file is not None:
            self.csv_file.close()


def prepare(argv: list[str] | None = None) -> PreparedRun:
    """Parse and check the arguments, open the database and the CSV, and build the `Trainer`.

    Bad arguments exit (SystemExit 2) with a message naming the value, before anything runs.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    # An option that only means something beside another would be dropped without a word.
    if args.at_step is not None and args.fork_from is None:
        parser.error(f"--at-step picks the snapshot a fork starts from: it needs --fork-from RUN_ID. Received: --at-step {args.at_step}")
    if args.snapshot_folder is not None and args.snapshot_every is None and args.fork_from is None:
        parser.error("--snapshot-folder is where --snapshot-every writes (or --fork-from reads): give one of them. "
                     f"Received: --snapshot-folder {args.snapshot_folder!r}")  # fmt: skip
    if args.snapshot_every is not None and args.snapshot_every < 1:  # checked before any file opens
        parser.error(f"--snapshot-every must be an integer >= 1. Received: {args.snapshot_every}")
    if args.snapshot_every is not None and args.no_db:
        parser.error("--snapshot-every writes beside the run database: drop --no-db.")
    start_from = _settings_of_fork(parser, args) if args.fork_from is not None else None
    for name, default in (("task", "seed"), ("policy", "global_norm"), ("clip_threshold", 1.0), ("seed", 0)):
        if getattr(args, name) is None:
            setattr(args, name, default)
    policy_params = {
        name: getattr(args, name)
        for name in POLICY_PARAMETERS[args.policy]
        if getattr(args, name) is not None
    }
    stray = [
        name
        for parameters in POLICY_PARAMETERS.values()
        for name in parameters
        if getattr(args, name) is not None and name not in POLICY_PARAMETERS[args.policy]
    ]
    if stray:
        parser.error(
            f"--{stray[0].replace('_', '-')} does not apply to policy {args.policy!r}; "
            f"it takes: {', '.join(POLICY_PARAMETERS[args.policy]) or 'only --clip-threshold'}"
        )
    if args.steps < 1:
        parser.error(f"--steps must be an integer >= 1. Received: {args.steps}")
    sweep = _sweep_thresholds(parser, args)
    if sweep is not None:
        try:
            refuse_a_threshold_sweep(args.policy)
        except ValueError as error:
            parser.error(f"--sweep: {error}")
    for flag, path in (("--csv", args.csv), ("--db", args.db)):
        if path is not None and not path.strip():
            parser.error(f"{flag} needs a file path, not empty text. Received: {flag} {path!r}")
    if args.csv is not None and args.csv.startswith("~"):  # as --db's: '~' quoted reaches us unexpanded
        from .runs.locations import home_expanded

        try:
            args.csv = str(home_expanded(args.csv))
        except ValueError as error:
            parser.error(f"cannot write --csv {args.csv!r}: {error}")

    task = args.task
    if task not in TASK_NAMES:
        from .tasks.plugins import PluginError, PluginNotFound, load_task

        try:
            task = load_task(args.task)
        except PluginNotFound as error:  # perhaps a mistyped built-in name: list them
            parser.error(f"--task {args.task!r} is not a built-in task ({', '.join(TASK_NAMES)}). {error}")
        except PluginError as error:  # a plug-in that was found but is broken: its message says why
            parser.error(f"--task {args.task!r}: {error}")

    from .runs.database import DatabaseError, RunDatabase, default_path

    _refuse_one_file_for_both(parser, args, None if args.no_db else (args.db or default_path()))
    if args.snapshot_every is not None and args.snapshot_folder is not None:
        _check_snapshot_folder(parser, args.snapshot_folder)
    from .loop.trainer import trainer_from_settings  # imports TensorFlow: after the arguments are good

    settings = dict(
        task=task,
        policy=args.policy,
        clip_threshold=args.clip_threshold,
        learning_rate=args.learning_rate,
        seed=args.seed,
        policy_params=policy_params,
        batch_size=args.batch_size,
        max_steps=args.steps if start_from is None else start_from[0]["step"] + args.steps,
        max_nonfinite_steps=args.max_nonfinite_steps,
        run_name=args.name,
        start_from=start_from,
    )
    try:
        # A trainer checks every setting and writes nothing until it starts: build one without
        # files first, so a refused setting leaves no database or CSV behind.
        trainer_from_settings(**settings)
    except ValueError as error:
        parser.error(str(error))

    # The CSV opens first, without truncating it: if the database is then refused, a CSV that
    # was there is left as it was and a new one is removed, so a refused run writes nothing.
    csv_file, csv_is_new = None, False
    if args.csv is not None:
        try:
            csv_is_new = not os.path.lexists(args.csv)
            csv_file = open(args.csv, "a", newline="")
        except (OSError, ValueError) as error:  # ValueError: a NUL in the path
            parser.error(f"cannot write --csv {args.csv!r}: {getattr(error, 'strerror', None) or error}")

    database = None
    if not args.no_db:
        try:
            database = RunDatabase(args.db or default_path())
        except DatabaseError as error:
            if csv_file is not None:
                csv_file.close()
                if csv_is_new:
                    with contextlib.suppress(OSError):
                        os.unlink(args.csv)
            parser.error(str(error))

    if args.snapshot_every is not None:
        settings.update(_snapshot_files(parser, args, database))
    sinks = ()
    if csv_file is not None:
        if stat.S_ISREG(os.fstat(csv_file.fileno()).st_mode):  # not a pipe, a terminal or /dev/null
            csv_file.truncate(0)
        sinks = (CsvSink(csv_file),)
    try:
        trainer = trainer_from_settings(**settings, sinks=sinks, database=database)
    except ValueError as error:
        if csv_file is not None:
            csv_file.close()
        parser.error(str(error))
    sweep_id = None
    start_step = start_from[0]["step"] if start_from else None
    if sweep is not None:  # after --steps of this run: a fork's steps count from its snapshot's
        sweep_id = trainer.sweep(sweep, steps=args.sweep_steps or DEFAULT_SWEEP_STEPS, at_step=(start_step or 0) + args.steps)
    return PreparedRun(trainer, database, csv_file, sweep_id, start_step)


def _settings_of_fork(parser: argparse.ArgumentParser, args) -> tuple[dict, int]:
    """`--fork-from RUN_ID [--at-step S]`: the parent's settings fill every flag not given, and
    its nearest saved snapshot is where the branch starts. Exits 2 naming what is missing."""
    from .runs.database import DatabaseError, RunDatabase, default_path
    from .runs.locations import missing_database_file
    from .runs.snapshot_files import SnapshotFileError, nearest_snapshot, read_snapshot

    location = args.db or default_path()
    if args.no_db:
        parser.error("--fork-from reads the parent run from the run database: drop --no-db.")
    if missing_database_file(location):
        parser.error(f"--fork-from {args.fork_from}: there is no run database at {str(location)!r}.")
    try:
        database = RunDatabase(location)
        info = database.run_info(args.fork_from)
        folder = args.snapshot_folder or _default_snapshot_folder(parser, database)
        path = nearest_snapshot(folder, args.fork_from, args.at_step)
        snapshot = read_snapshot(path)
    except (DatabaseError, SnapshotFileError, ValueError) as error:
        parser.error(f"--fork-from {args.fork_from}: {error}")
    if snapshot["run_created_at"] not in (None, info["created_at"]):  # None: a file without it (older)
        parser.error(f"--fork-from {args.fork_from}: {str(path)!r} was saved by another run {args.fork_from}, not this "
                     f"database's: another database keeps its snapshots in {folder!r} too. Name this one's folder "
                     "with --snapshot-folder.")  # fmt: skip
    config = info["config"]
    if args.task is None and config["task"] not in TASK_NAMES:
        parser.error(f"--fork-from {args.fork_from}: its task {config['task']!r} is a plug-in; name its file with --task.")
    # The settings in force at the snapshot, not the run's first ones (its config): a run steered
    # mid-run was forked with its starting threshold and learning rate, and the branch did not
    # reproduce it. The policy, its parameters and the threshold are the snapshot's own; the
    # learning rate is in its file's header (older files: the run's first one).
    in_force = {
        "task": config["task"], "batch_size": config["batch_size"], "seed": config["seed"],
        "policy": snapshot["policy"], "clip_threshold": float(str(snapshot["knob_values"][KNOB["clip_threshold"]])),
        "learning_rate": config["learning_rate"] if snapshot["learning_rate"] is None else snapshot["learning_rate"],
    }  # fmt: skip
    for name, value in in_force.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name, value in snapshot["policy_params"].get(args.policy, {}).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.at_step is not None and snapshot["step"] != args.at_step:
        print(f"--fork-from {args.fork_from} --at-step {args.at_step}: no snapshot was saved at that step; "
              f"forking from the nearest one before it, step {snapshot['step']:,}.", file=sys.stderr)  # fmt: skip
    return snapshot, args.fork_from


def _default_snapshot_folder(parser: argparse.ArgumentParser, database) -> str:
    if database.path is None:
        parser.error("With a database server, name where snapshot files go: --snapshot-folder DIR.")
    # One folder per database file: two databases in one folder both have a run 1, and shared
    # run-1 folders mixed (and pruned) each other's files.
    return str(Path(database.path).parent / "snapshots" / Path(database.path).name)


def _refuse_one_file_for_both(parser: argparse.ArgumentParser, args, database_location) -> None:
    """--csv naming the run database's own file would overwrite every run in it with a CSV."""
    from .runs.locations import same_database_file

    if args.csv is None or database_location is None:
        return
    if same_database_file(args.csv, database_location):
        parser.error(
            f"--csv and the run database name the same file ({str(database_location)!r}): the CSV would "
            f"overwrite the runs in it. Give the CSV another path. Received: --csv {args.csv!r}"
        )


def _check_snapshot_folder(parser: argparse.ArgumentParser, folder: str) -> None:
    """--snapshot-folder must be a folder (or a path one can be made at), checked before any file is written."""
    path = Path(os.path.expanduser(folder))
    existing = next((parent for parent in (path, *path.parents) if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        parser.error(f"--snapshot-folder must be a folder; {str(existing)!r} is a file. Received: --snapshot-folder {folder!r}")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"--snapshot-folder: cannot write in {str(existing)!r}. Received: --snapshot-folder {folder!r}")


def _snapshot_files(parser: argparse.ArgumentParser, args, database) -> dict:
    folder = args.snapshot_folder or _default_snapshot_folder(parser, database)
    return {"snapshot_folder": folder, "persist_every": args.snapshot_every}


def _sweep_thresholds(parser: argparse.ArgumentParser, args) -> tuple[float, ...] | None:
    if args.sweep is None:
        if args.sweep_steps is not None:
            parser.error(f"--sweep-steps needs --sweep (the thresholds). Received: --sweep-steps {args.sweep_steps}")
        return None
    if args.sweep_steps is not None and args.sweep_steps < 1:
        parser.error(f"--sweep-steps must be an integer >= 1. Received: {args.sweep_steps}")
    try:
        return validate_sweep_thresholds(float(part) for part in args.sweep.split(","))
    except ValueError as error:
        parser.error(f"--sweep takes comma-separated clip thresholds such as 0.1,0.3,1. Received: "
                     f"--sweep {args.sweep!r} ({error})")  # fmt: skip


def _interrupt(signal_number, frame) -> None:
    """SIGTERM stops the run as Ctrl-C does; a second SIGTERM ends the process at once."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt


def _clip_rate(trainer: Trainer) -> float | None:
    """The share of clipped steps over the whole run (the store's summary: every step, not
    only the newest `store_window` that `metrics()` returns)."""
    store = trainer.store
    summary = store.summary() if store is not None else {}
    steps = int(summary["steps"].sum()) if summary else 0
    return int(summary["clipped"].sum()) / steps if steps else None


def _json_number(value):
    """A float for strict JSON: NaN and infinities become None (null); JSON has no literal for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def main(argv: list[str] | None = None) -> int:
    switch_threads_often()  # the recorder's CSV text must not hold up the training thread
    run = prepare(argv)
    trainer, database = run.trainer, run.database
    steps = trainer.config.max_steps
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    # Commands sent to the run through its database (another process, another machine) are
    # applied here too; a `stop` among them ends the run as Ctrl-C does.
    relay = CommandRelay(database) if database is not None else None
    try:
        show_progress = sys.stderr.isatty()
        started = time.perf_counter()
        trainer.start()
        try:
            while trainer.status.state in ("idle", "running", "paused"):
                if relay is None:
                    time.sleep(0.1)
                elif relay.follow(trainer):  # waits up to 0.1 s for a command; True: `stop`
                    trainer.stop(timeout=STOP_SECONDS)  # flushes every step, as for Ctrl-C
                    break
                if show_progress:
                    _progress(trainer.status.step, steps, trainer.status.steps_per_second)
        except KeyboardInterrupt:
            # Wait for the thread: it flushes every step to the CSV and the database and marks
            # the run stopped (the default 2 s can end inside a trace, before the flush).
            trainer.stop(timeout=STOP_SECONDS)
        elapsed = time.perf_counter() - started
        if show_progress:
            sys.stderr.write("\n")
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        if relay is not None:
            with contextlib.suppress(*database.errors):
                relay.write_acknowledgements()  # of commands applied in the last chunks
        run.close()

    status = trainer.status
    from .tasks.plugins import PluginError

    plugin_failure = f"{PluginError.__name__}: "
    if status.state == "failed" and (status.error or "").startswith(plugin_failure):
        build_parser().error(status.error[len(plugin_failure):])  # the plug-in's data does not fit its model
    metrics = trainer.metrics()
    summary = {
        "steps": status.step,
        "final_loss": float(metrics["loss"].iloc[-1]) if len(metrics) else None,
        "clip_rate": _clip_rate(trainer),
        "nonfinite_steps": status.nonfinite_steps,
        # The steps trained here: a fork's count starts at its snapshot's step, trained elsewhere.
        "steps_per_second": (status.step - (run.start_step or 0)) / elapsed if elapsed > 0 else None,
        "state": status.state,
    }
    if run.start_step is not None:  # a fork from step 0 too (it was left out)
        summary["fork_step"] = run.start_step
    if status.run_id is not None:
        summary["run_id"] = status.run_id
        summary["db"] = database.location  # a password in a URL is not shown
    evaluations = trainer.evaluations()
    if len(evaluations):  # the last evaluation's val_loss and val_<metric>
        last = evaluations[evaluations.step == evaluations.step.iloc[-1]]
        summary.update({name: float(value) for name, value in zip(last.name, last.value)})
    if run.sweep_id is not None:
        result = trainer.sweep_result(run.sweep_id)
        keys = ("clip_threshold", "run_id", "final_loss", "mean_loss", "clip_rate")
        summary["sweep"] = [{key: _json_number(row[key]) for key in keys} for row in result["sweep"]]
        summary["best_clip_threshold"] = result["best_clip_threshold"]
        summary["noise_floor"] = result["noise_floor"]
    if status.error:
        summary["error"] = status.error
    print(json.dumps({key: _json_number(value) for key, value in summary.items()}, allow_nan=False))
    if status.state == "failed":  # said where a person reads it, not only in the summary
        print(f"python -m training: the run failed: {status.error}", file=sys.stderr)
        return 1
    return 0
