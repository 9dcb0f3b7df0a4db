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
before the database or the CSV is opened. A failed run exits with status 1. Ctrl-C and SIGTERM
(what `kill`, systemd, Docker and CI runners send) stop the run the same way: every step trained
is flushed to the CSV and the database, the run is marked "stopped", the summary is printed and
the exit status is 0.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import numpy as np

from .interpreter_lock import switch_threads_often
from .clipping.policies import POLICY_NAMES, POLICY_PARAMETERS
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
        "--task", default="seed",
        help=f"a built-in task ({', '.join(TASK_NAMES)}), or a plug-in: path/to/my_task.py, "
        "my_package.my_task or my_package.my_task:OTHER_NAME",
    )  # fmt: skip
    parser.add_argument("--policy", default="global_norm", choices=POLICY_NAMES)
    parser.add_argument("--clip-threshold", type=float, default=1.0, help="c (zclip: the cap)")
    parser.add_argument("--steps", type=int, default=2000, help="steps to train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the task's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the task's")
    parser.add_argument("--csv", default=None, help="write every step to this CSV file")
    parser.add_argument(
        "--db", default=None,
        help="record the run in this SQLite file (default: $CLIPWATCH_DB or runs/clipwatch.db)",
    )  # fmt: skip
    parser.add_argument("--no-db", action="store_true", help="do not record the run")
    parser.add_argument("--name", default=None, help="the run's name in the database")
    parser.add_argument(
        "--max-nonfinite-steps", type=int, default=50,
        help="fail after this many consecutive non-finite steps",
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

    def close(self) -> None:
        if self.csv_file is not None:
            self.csv_file.close()


def prepare(argv: list[str] | None = None) -> PreparedRun:
    """Parse and check the arguments, open the database and the CSV, and build the `Trainer`.

    Bad arguments exit (SystemExit 2) with a message naming the value, before anything runs.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
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
    for flag, path in (("--csv", args.csv), ("--db", args.db)):
        if path is not None and not path.strip():
            parser.error(f"{flag} needs a file path, not empty text. Received: {flag} {path!r}")

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
    from .loop.trainer import trainer_from_settings  # imports TensorFlow: after the arguments are good

    settings = dict(
        task=task,
        policy=args.policy,
        clip_threshold=args.clip_threshold,
        learning_rate=args.learning_rate,
        seed=args.seed,
        policy_params=policy_params,
        batch_size=args.batch_size,
        max_steps=args.steps,
        max_nonfinite_steps=args.max_nonfinite_steps,
        run_name=args.name,
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

    sinks = ()
    if csv_file is not None:
        if csv_file.seekable():  # a file, not a pipe or a terminal
            csv_file.truncate(0)
        sinks = (CsvSink(csv_file),)
    try:
        trainer = trainer_from_settings(**settings, sinks=sinks, database=database)
    except ValueError as error:
        if csv_file is not None:
            csv_file.close()
        parser.error(str(error))
    return PreparedRun(trainer, database, csv_file)


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
    try:
        show_progress = sys.stderr.isatty()
        started = time.perf_counter()
        trainer.start()
        try:
            while trainer.status.state in ("idle", "running"):
                time.sleep(0.1)
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
        "steps_per_second": status.step / elapsed if elapsed > 0 else None,
        "state": status.state,
    }
    if status.run_id is not None:
        summary["run_id"] = status.run_id
        summary["db"] = str(database.path)
    evaluations = trainer.evaluations()
    if len(evaluations):  # the last evaluation's val_loss and val_<metric>
        last = evaluations[evaluations.step == evaluations.step.iloc[-1]]
        summary.update({name: float(value) for name, value in zip(last.name, last.value)})
    if status.error:
        summary["error"] = status.error
    print(json.dumps({key: _json_number(value) for key, value in summary.items()}, allow_nan=False))
    return 1 if status.state == "failed" else 0
