"""Python's switch interval, its 5 ms default vs Clipwatch's 0.5 ms (training/interpreter_lock.py).

A thread running pure Python (as the page's script thread does while it draws charts) sits
beside a new seed run. At each interval, in alternating order, one round measures:
- the run's Start -> first step (the quick step's trace and first chunk);
- Start -> full step (its trace, on the training thread, then the XLA compile in the background);
- the run's steps per second once on the full step;
- the busy thread's own loops per second over the same window (what a shorter interval costs it).
All rounds run in this process, and the process's interval is restored at the end.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

from benchmarks.startup import start_and_time
from benchmarks.throughput import paired_ratio, summarize
from training.interpreter_lock import SWITCH_INTERVAL_SECONDS

PYTHON_DEFAULT_SECONDS = 0.005
LABELS = {PYTHON_DEFAULT_SECONDS: "5 ms (Python's default)", SWITCH_INTERVAL_SECONDS: "0.5 ms (Clipwatch)"}
MIN_RATE_GAIN = 1.3  # seed steps/s beside a busy thread, 0.5 ms vs 5 ms
MIN_BUSY_SHARE = 0.9  # the busy thread keeps at least 90% of its work at 0.5 ms


class BusyPython:
    """A daemon thread looping in pure Python until closed; counts its loops."""

    def __init__(self):
        self.loops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="busy-python", daemon=True)

    def __enter__(self) -> "BusyPython":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _spin(self) -> None:
        while not self._stop.is_set():
            sum(index * index for index in range(2_000))
            self.loops += 1


def measure_round(interval: float, window_seconds: float) -> dict:
    """One new seed run beside a busy Python thread, at `interval`."""
    from training import Trainer

    sys.setswitchinterval(interval)
    with BusyPython() as busy:
        trainer = Trainer("seed", database=None)
        try:
            times = start_and_time([trainer])  # the startup section's clock: Start -> first, full step
            if trainer.status.state == "failed":
                raise RuntimeError(f"the seed run failed: {trainer.status.error}")
            if "full_step_s" not in times:
                raise TimeoutError(f"the seed run reached only {sorted(times)} in 300 s")
            steps, loops, opened = trainer.status.step, busy.loops, time.perf_counter()
            time.sleep(window_seconds)
            elapsed = time.perf_counter() - opened
            rate = (trainer.status.step - steps) / elapsed
            busy_rate = (busy.loops - loops) / elapsed
        finally:
            trainer.stop()
    return {"first_step_s": times["first_step_s"], "full_step_s": times["full_step_s"], "steps_per_second": rate, "busy_loops_per_second": busy_rate}


def run_switch_interval(repeats: int, window_seconds: float, log: Callable[[str], None]) -> dict:
    intervals = (PYTHON_DEFAULT_SECONDS, SWITCH_INTERVAL_SECONDS)
    samples: dict[float, list[dict]] = {interval: [] for interval in intervals}
    before = sys.getswitchinterval()
    try:
        for repeat in range(repeats):
            order = intervals if repeat % 2 == 0 else intervals[::-1]
            for interval in order:
                samples[interval].append(measure_round(interval, window_seconds))
            log(
                f"  repeat {repeat + 1}/{repeats}: "
                + ", ".join(
                    f"{LABELS[interval]} full step {rounds[-1]['full_step_s']:.2f} s, "
                    f"{rounds[-1]['steps_per_second']:,.0f} steps/s"
                    for interval, rounds in samples.items()
                )
            )
    finally:
        sys.setswitchinterval(before)
    rows = {}
    for interval, rounds in samples.items():
        rows[LABELS[interval]] = {
            key: summarize([measured[key] for measured in rounds]) for key in rounds[0]
        }
    short, default = samples[SWITCH_INTERVAL_SECONDS], samples[PYTHON_DEFAULT_SECONDS]

    def ratio(key: str, inverse: bool = False) -> dict:
        values = [measured[key] for measured in short]
        references = [measured[key] for measured in default]
        return paired_ratio(references, values) if inverse else paired_ratio(values, references)

    return {
        "repeats": repeats,
        "window_seconds": window_seconds,
        "rows": rows,
        # 0.5 ms vs 5 ms, each pair measured back to back
        "rate_gain": ratio("steps_per_second"),
        "busy_share": ratio("busy_loops_per_second"),
        "full_step_speedup": ratio("full_step_s", inverse=True),
        "first_step_speedup": ratio("first_step_s", inverse=True),
    }


def targets(section: dict, at_least) -> list[dict]:
    return [
        at_least("seed beside a busy Python thread: 0.5 ms vs 5 ms switch >= 1.3x steps/s",
                 section["rate_gain"]["median"], MIN_RATE_GAIN),
        at_least("the busy Python thread keeps >= 90% of its work at 0.5 ms",
                 section["busy_share"]["median"], MIN_BUSY_SHARE),
    ]  # fmt: skip


def lines(section: dict, table) -> list[str]:
    header = ["switch interval", "first step s", "full step in s", "steps/s", "busy loops/s"]
    rows = [
        [label, f"{row['first_step_s']['median']:.2f}", f"{row['full_step_s']['median']:.2f}",
         f"{row['steps_per_second']['median']:,.0f}", f"{row['busy_loops_per_second']['median']:,.0f}"]
        for label, row in section["rows"].items()
    ]  # fmt: skip

    def paired(name: str, key: str) -> str:
        ratio = section[key]
        return f"{name} x{ratio['median']:.2f} (repeats {ratio['min']:.2f}..{ratio['max']:.2f})"

    return [
        f"Switch interval: a new seed run beside a thread running pure Python (medians of "
        f"{section['repeats']} alternating rounds, {section['window_seconds']:g} s windows)",
        *table(header, rows, right={1, 2, 3, 4}),
        "0.5 ms vs 5 ms, paired: " + "; ".join([
            paired("steps/s", "rate_gain"), paired("busy loops/s", "busy_share"),
            paired("full step in sooner", "full_step_speedup"), paired("first step sooner", "first_step_speedup"),
        ]),  # fmt: skip
    ]
