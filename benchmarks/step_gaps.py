"""Step gaps (issue #20): does a new run stall while its full step is traced, compiled and swapped in?

A run starts on the quick step and swaps in the full step (every policy, XLA) once the compile
thread has it ready (training/loop/steps.py, training/loop/step_compiler.py). Each measurement
is a fresh Python process (one-off costs are real) with an empty persistent XLA cache, Python's
switch interval as the page and the CLI set it, and TensorFlow imported before Start (as on a
server that has loaded it). It starts one run recording into a temporary SQLite run database
and, for `seconds` after Start (or, with `until_swapped`, until AFTER_SWAP_SECONDS after the
swap), times:

* `first_step_s`: Start -> the first step is counted (`status.step > 0`);
* `worst_gap_s`: the worst gap between consecutive steps' recorded times (`time_s`, what the
  charts and the database plot) after the first step, with the step after it, its time since
  Start and where it fell (inside the first chunk, whose steps share the quick step's compile;
  at the first chunk's end, where the full step's preparation starts; while the full step
  compiled; at the swap; after it);
* `full_step_s`: Start -> the run trains on its full step (`status.compiling` off);
* `worst_database_gap_s`: the worst gap between two batches appearing in the run database
  (polled every POLL_SECONDS, so to within that).

Cases: seed and exploding_rnn at full speed and at the page's default pace (300 steps/s), and
seed at that pace beside a thread running pure Python, as the page's script thread does while
it draws charts (the issue's 2.71 s freeze was measured on the page). Variants: the full step
traced on the compile thread (issue #20), and traced on the training thread between two chunks,
as before (`BackgroundCompile.trace_on_caller`). Rounds are interleaved, rotating the variants'
order, so a noisy neighbour hits both alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, NamedTuple

PAGE_PACE = 300.0  # the page's default max_steps_per_second


class Case(NamedTuple):
    task: str
    pace: float | None  # None: full speed
    busy: bool = False  # beside a thread running pure Python

    @property
    def name(self) -> str:
        speed = "full speed" if self.pace is None else f"{self.pace:g} steps/s"
        return f"{self.task}, {speed}" + (", busy Python beside" if self.busy else "")


CASES = (Case("seed", None), Case("seed", PAGE_PACE), Case("seed", PAGE_PACE, busy=True),
         Case("exploding_rnn", None), Case("exploding_rnn", PAGE_PACE))  # fmt: skip
AFTER, BEFORE = "traced on the compile thread (#20)", "traced on the training thread (before #20)"
VARIANTS = {AFTER: False, BEFORE: True}  # label -> trace on the training thread
MAX_STEP_GAP_SECONDS = 0.5  # issue #20, after the first step
MAX_DATABASE_GAP_SECONDS = 1.5
POLL_SECONDS = 0.01
SWAP_MARGIN_SECONDS = 0.1  # a gap this close to the observed swap is "at the swap"
AFTER_SWAP_SECONDS = 2.0  # `until_swapped`: run on this long on the full step
Log = Callable[[str], None]


class GapSink:
    """A trainer's sink (recorder thread): each chunk's first and last step and their times, and
    the widest spacing inside it (a chunk's steps share its wall time evenly)."""

    def __init__(self):
        self.chunks: list[tuple[int, int, float, float, float]] = []

    def __call__(self, rows) -> None:
        times = rows["time_s"]
        inner = float((times[1:] - times[:-1]).max()) if len(times) > 1 else 0.0
        self.chunks.append((int(rows["step"][0]), int(rows["step"][-1]), float(times[0]), float(times[-1]), inner))

    def worst_gap(self) -> tuple[float, int, float, float]:
        """(gap, the step after it, the times of the steps either side) over every pair of
        consecutive steps after the first."""
        worst = (0.0, 0, 0.0, 0.0)
        previous = None
        for first, last, first_time, last_time, inner in self.chunks:
            if previous is not None and first_time - previous[1] > worst[0]:
                worst = (first_time - previous[1], first, previous[1], first_time)
            if inner > worst[0]:  # an even spread: the chunk's first pair stands for every pair
                worst = (inner, first + 1, first_time, first_time + inner)
            previous = (last, last_time)
        return worst


def where(gap_step: int, gap_times: tuple[float, float], first_chunk_steps: int, swap_time: float | None) -> str:
    """Where a gap between consecutive steps fell, relative to the full step's preparation."""
    before, after = gap_times
    if gap_step <= first_chunk_steps:
        return "inside the first chunk"
    if gap_step == first_chunk_steps + 1:
        return "at the first chunk's end"
    if swap_time is not None and before <= swap_time + SWAP_MARGIN_SECONDS and after >= swap_time - SWAP_MARGIN_SECONDS:
        return "at the swap"
    if swap_time is None or after < swap_time:
        return "while the full step compiled"
    return "after the swap"


class Watch:
    """Polls a started trainer and its database from this thread: Start -> first step, Start ->
    full step (and the step it came at), and when each database batch appeared."""

    def __init__(self, trainer, database_path: str):
        import sqlite3

        self.trainer, self.reader = trainer, sqlite3.connect(database_path)
        self.started, self.started_wall = time.perf_counter(), time.time()  # Start
        self.first_step_s = self.full_step_s = self.swap_step = None
        self.batch_times: list[float] = []

    def poll(self) -> float:
        """One look; returns the seconds since Start."""
        now, status = time.perf_counter() - self.started, self.trainer.status
        if status.state == "failed":
            raise RuntimeError(f"the run failed: {status.error}")
        if self.first_step_s is None and status.step > 0:
            self.first_step_s = now
        if self.first_step_s is not None and self.full_step_s is None and not status.compiling:
            self.full_step_s, self.swap_step = now, status.step
        batches = self.reader.execute("SELECT count(*) FROM step_chunks").fetchone()[0]
        if batches != len(self.batch_times):
            self.batch_times.append(now)
        return now


def measure(case: Case, seconds: float, trace_on_training_thread: bool, folder: str, until_swapped: bool = False) -> dict:
    """One run of `case` in this process (a fresh one: `child`), its database in `folder`."""
    from benchmarks.switch_interval import BusyPython
    from training import Trainer
    from training.loop.step_compiler import BackgroundCompile
    from training.runs.database import RunDatabase

    BackgroundCompile.trace_on_caller = trace_on_training_thread
    database_path = os.path.join(folder, "runs.db")
    sink = GapSink()
    trainer = Trainer(task=case.task, database=RunDatabase(database_path), sinks=(sink,))
    if case.pace is not None:
        trainer.set_max_steps_per_second(case.pace)
    with BusyPython() if case.busy else contextlib.nullcontext():
        watch = Watch(trainer, database_path)
        trainer.start()
        try:
            while (now := watch.poll()) < seconds:
                if until_swapped and watch.full_step_s is not None and now - watch.full_step_s >= AFTER_SWAP_SECONDS:
                    break
                time.sleep(POLL_SECONDS)
        finally:
            trainer.stop(timeout=60.0)  # joined: every chunk reached the sink
            trainer.wait_until_compiled()  # a compile left running aborts the process at exit
            watch.reader.close()
    gap, gap_step, *around = sink.worst_gap()
    around = tuple(moment - watch.started_wall for moment in around)
    database_gaps = [later - earlier for earlier, later in zip(watch.batch_times, watch.batch_times[1:])]
    return {
        "case": case.name,
        "seconds": round(time.perf_counter() - watch.started, 3),
        "first_step_s": watch.first_step_s,
        "full_step_s": watch.full_step_s,
        "swap_step": watch.swap_step,
        "steps": trainer.status.step,
        "worst_gap_s": gap,
        "worst_gap_step": gap_step,
        "worst_gap_at_s": around[1],
        "worst_gap_where": where(gap_step, around, sink.chunks[0][1] if sink.chunks else 0, watch.full_step_s),
        "database_batches": len(watch.batch_times),
        "worst_database_gap_s": max(database_gaps, default=None),
    }


def child(case: Case, seconds: float, trace_on_training_thread: bool, until_swapped: bool) -> dict:
    """One fresh process's measurement (`python -m benchmarks.step_gaps TASK PACE BUSY SECONDS OLD UNTIL`)."""
    from training.interpreter_lock import switch_threads_often

    switch_threads_often()  # as the page and the CLI do
    started = time.perf_counter()
    import tensorflow  # noqa: F401  (loaded before Start, as on a server that has warmed up)

    import_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="clipwatch-step-gaps-") as folder:
        result = measure(case, seconds, trace_on_training_thread, folder, until_swapped)
    return {**result, "import_s": import_s, "load_average_1min": os.getloadavg()[0]}


def measure_in_a_fresh_process(case: Case, seconds: float, trace_on_training_thread: bool = False,
                               until_swapped: bool = False) -> dict:  # fmt: skip
    """`child` in a fresh Python process with an empty persistent XLA cache of its own."""
    with tempfile.TemporaryDirectory(prefix="clipwatch-step-gaps-") as folder:
        environment = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "CLIPWATCH_XLA_CACHE": os.path.join(folder, "xla-cache"),  # empty: a fresh machine
            "CLIPWATCH_DB": os.path.join(folder, "clipwatch.db"),
        }
        arguments = (case.task, case.pace or 0, int(case.busy), seconds, int(trace_on_training_thread), int(until_swapped))
        command = [sys.executable, "-m", "benchmarks.step_gaps", *map(str, arguments)]
        done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=seconds + 600, cwd=_root())
    if done.returncode != 0:
        raise RuntimeError(f"step gaps child {case.name} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_step_gaps(repeats: int, seconds: float, log: Log, cases=CASES, variants=tuple(VARIANTS)) -> dict:
    """Every case in every variant, `repeats` interleaved rounds; medians per case and variant."""
    samples: dict = {case.name: {variant: [] for variant in variants} for case in cases}
    for round_index in range(repeats):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            for case in cases:
                result = measure_in_a_fresh_process(case, seconds, VARIANTS[variant])
                samples[case.name][variant].append(result)
                database_gap = result["worst_database_gap_s"]
                log(
                    f"  step gaps {case.name} / {variant}: worst gap {result['worst_gap_s']:.2f} s at step "
                    f"{result['worst_gap_step']} ({result['worst_gap_where']}), database "
                    f"{'-' if database_gap is None else f'{database_gap:.2f} s'}, first step "
                    f"{result['first_step_s']:.2f} s, load {result['load_average_1min']:.1f}"
                )
    rows = {
        case: {variant: _summary(results) for variant, results in by_variant.items()}
        for case, by_variant in samples.items()
    }
    return {"repeats": repeats, "seconds": seconds, "variants": list(variants), "rows": rows}


def _summary(results: list[dict]) -> dict:
    def median(key: str):
        values = [result[key] for result in results if result[key] is not None]
        return statistics.median(values) if values else None

    return {
        **{key: median(key) for key in ("first_step_s", "full_step_s", "worst_gap_s", "worst_database_gap_s")},
        "max_worst_gap_s": max(result["worst_gap_s"] for result in results),
        "where": statistics.mode(result["worst_gap_where"] for result in results),  # the commonest
        "swapped": sum(result["full_step_s"] is not None for result in results),
        "load_average_1min": median("load_average_1min"),
        "samples": results,
    }


def targets(section: dict) -> list[dict]:
    """Issue #20's targets, on the variant with the trace on the compile thread: the worst case's
    median must keep to the limit."""
    from benchmarks.targets import at_most

    rows = [variants[AFTER] for variants in section["rows"].values() if AFTER in variants]
    found = []
    for name, key, limit in (
        (f"a new run's worst gap between steps <= {MAX_STEP_GAP_SECONDS:g} s (every case)", "worst_gap_s",
         MAX_STEP_GAP_SECONDS),
        (f"a new run's worst gap between database batches <= {MAX_DATABASE_GAP_SECONDS:g} s (every case)",
         "worst_database_gap_s", MAX_DATABASE_GAP_SECONDS),
    ):  # fmt: skip
        values = [row[key] for row in rows if row[key] is not None]
        if values:
            found.append(at_most(name, max(values), limit, extra=f" (cases' medians {min(values):.2f}..{max(values):.2f} s)"))
    return found


def lines(section: dict, table) -> list[str]:
    def seconds(value) -> str:
        return "-" if value is None else f"{value:.2f}"

    header = ["case", "full step", "first step s", "worst gap s", "(max)", "database gap s", "full step in s",
              "load", "where (commonest)"]  # fmt: skip
    rows = [
        [case, variant, seconds(row["first_step_s"]), seconds(row["worst_gap_s"]), seconds(row["max_worst_gap_s"]),
         seconds(row["worst_database_gap_s"]), seconds(row["full_step_s"]), f"{row['load_average_1min']:.1f}",
         row["where"]]
        for case, variants in section["rows"].items()
        for variant, row in variants.items()
    ]  # fmt: skip
    return [
        f"Step gaps (issue #20): a new run's first {section['seconds']:g} s in a fresh process (medians of "
        f"{section['repeats']} interleaved rounds; the worst gap between consecutive steps' times after the first step)",
        *table(header, rows, right={2, 3, 4, 5, 6, 7}),
    ]


if __name__ == "__main__":
    task_name, pace_text, busy_text, seconds_text, old_text, until_text = sys.argv[1:7]
    run_case = Case(task_name, float(pace_text) or None, busy_text == "1")
    print(json.dumps(child(run_case, float(seconds_text), old_text == "1", until_text == "1")))
