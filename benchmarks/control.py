"""Control: how fast a live command reaches the recorded steps, and whether it retraces.

Both run on one trainer with full monitoring, warmed up first. A command is queued at once and
applied by the training thread between chunks, so the steps still on the old value after a call
should be at most the chunk in flight; the first new step is visible when the next chunk is.
"""

from __future__ import annotations

import collections
import statistics
import time
from typing import Callable

import numpy as np

from benchmarks.throughput import POLL_SECONDS, TrainerRun

# Thresholds visited in turn (each differs from the one before); exact in float32.
LATENCY_THRESHOLDS = (0.5, 2.0, 0.75, 1.5, 1.25, 0.625)
Log = Callable[[str], None]

# Live changes after warm-up: none of these may retrace the compiled chunk. Switching to another
# policy name is live too (every policy is a branch of the one compiled chunk).
LIVE_CHANGES: tuple[tuple[str, Callable], ...] = (
    ("set_clip_threshold(0.5)", lambda trainer: trainer.set_clip_threshold(0.5)),
    ('set_policy("autoclip", percentile=20)', lambda trainer: trainer.set_policy("autoclip", percentile=20)),
    ('set_policy("autoclip", percentile=30)', lambda trainer: trainer.set_policy("autoclip", percentile=30)),
    ('set_policy("zclip", z_threshold=3.0)', lambda trainer: trainer.set_policy("zclip", z_threshold=3.0)),
    ('set_policy("zclip", z_threshold=2.0)', lambda trainer: trainer.set_policy("zclip", z_threshold=2.0)),
    ('set_policy("agc", clip_factor=0.02)', lambda trainer: trainer.set_policy("agc", clip_factor=0.02)),
    ("set_learning_rate(0.005)", lambda trainer: trainer.set_learning_rate(0.005)),
    ('set_policy("global_norm")', lambda trainer: trainer.set_policy("global_norm")),
    ("set_clip_threshold(1.0)", lambda trainer: trainer.set_clip_threshold(1.0)),
)
# A structural parameter (the size of AutoClip's history buffer) rebuilds the chunk: by design.
STRUCTURAL_CHANGE = (
    'set_policy("autoclip", window=500)',
    lambda trainer: trainer.set_policy("autoclip", window=500),
)


class ChunkLog:
    """A trainer sink: when each chunk reached the store, its steps and its clip threshold.

    It runs in the training thread right after the chunk is appended to the store, so its
    timestamps are when a chunk became visible, and its boundaries are exact (no polling).
    """

    def __init__(self):
        self.chunks: collections.deque = collections.deque(maxlen=100_000)

    def __call__(self, rows: dict[str, np.ndarray]) -> None:
        self.chunks.append(
            (time.perf_counter(), int(rows["step"][0]), int(rows["step"][-1]), float(rows["clip_threshold"][-1]))
        )

    def since(self, moment: float) -> list[tuple]:
        return [chunk for chunk in list(self.chunks) if chunk[0] > moment]


def measure_latency(run: TrainerRun, chunk_log: ChunkLog, trials: int, seed: int = 0, timeout: float = 60.0) -> dict:
    """Time, steps and chunks from `set_clip_threshold` to the first recorded step that uses it.

    A chunk in flight when the call is made finishes on the old value; the command is applied
    before the next chunk. So "chunks on the old value" (finished after the call, still old) is
    1 when the command lands mid-chunk, 0 when it lands between chunks, and never more.
    """
    trainer = run.trainer
    rng = np.random.default_rng(seed)
    results = []
    for trial in range(trials):
        value = LATENCY_THRESHOLDS[trial % len(LATENCY_THRESHOLDS)]
        time.sleep(rng.uniform(0.02, 0.06))  # land anywhere inside a chunk
        wall_at_call = time.time()
        called = time.perf_counter()
        trainer.set_clip_threshold(value)
        while True:
            after_call = chunk_log.since(called)
            new = [chunk for chunk in after_call if chunk[3] == np.float32(value)]
            if new:
                break
            if time.perf_counter() - called > timeout:
                raise TimeoutError(f"clip_threshold={value} not recorded within {timeout:g} s")
            time.sleep(POLL_SECONDS)
        visible, first_new_step = new[0][0], new[0][1]
        old = [chunk for chunk in after_call if chunk[2] < first_new_step]
        events = trainer.events()
        event = events[events["kind"] == "clip_threshold"].iloc[-1]
        results.append(
            {
                "clip_threshold": value,
                "visible_ms": (visible - called) * 1000,
                "applied_ms": (float(event["time_s"]) - wall_at_call) * 1000,
                "chunks_on_old_value": len(old),
                "steps_on_old_value": sum(last - first + 1 for _, first, last, _ in old),
                "first_new_chunk_steps": new[0][2] - new[0][1] + 1,
                "event_step_plus_one_is_first_new_step": int(event["step"]) + 1 == first_new_step,
            }
        )

    def spread(key):
        values = [trial[key] for trial in results]
        return {"median": statistics.median(values), "max": max(values)}

    return {
        "trials": results,
        "visible_ms": spread("visible_ms"),
        "applied_ms": spread("applied_ms"),
        "steps_on_old_value": spread("steps_on_old_value"),
        "chunks_on_old_value": spread("chunks_on_old_value"),
        "first_new_chunk_steps": spread("first_new_chunk_steps"),
    }


def _after_two_chunks(run: TrainerRun, timeout: float) -> None:
    # The first boundary may close the chunk in flight; the second chunk ran after the command.
    run.next_chunk_boundary(timeout)
    run.next_chunk_boundary(timeout)


def measure_retraces(run: TrainerRun, timeout: float = 600.0) -> dict:
    """trace_count before and after each live change, then after one structural change."""
    trainer = run.trainer
    warm_up_traces = trainer.trace_count
    changes = []
    for description, change in LIVE_CHANGES:
        before = trainer.trace_count
        change(trainer)
        _after_two_chunks(run, timeout)
        changes.append({"change": description, "before": before, "after": trainer.trace_count})
    description, change = STRUCTURAL_CHANGE
    before = trainer.trace_count
    change(trainer)
    _after_two_chunks(run, timeout)
    structural = {"change": description, "before": before, "after": trainer.trace_count}
    return {
        "trace_count_after_warm_up": warm_up_traces,
        "live_changes": changes,
        "retraces_after_warm_up": sum(change["after"] - change["before"] for change in changes),
        "structural_change": structural,
        "structural_retraces": structural["after"] - structural["before"],
    }


def run_control(trials: int, warm_up_seconds: float, log: Log, task_name: str = "seed", seed: int = 0) -> dict:
    chunk_log = ChunkLog()
    run = TrainerRun("control", task_name, None, seed, sinks=(chunk_log,))
    try:
        run.start()
        run.warm_up(warm_up_seconds, timeout=600.0)
        run.trainer.resume()
        _after_two_chunks(run, 600.0)
        latency = measure_latency(run, chunk_log, trials, seed)
        log(
            f"  latency: visible median {latency['visible_ms']['median']:.1f} ms, "
            f"max {latency['visible_ms']['max']:.1f} ms"
        )
        traces = measure_retraces(run)
        log(
            f"  retraces after warm-up: {traces['retraces_after_warm_up']}; "
            f"structural change: {traces['structural_retraces']}"
        )
    finally:
        run.close()
    return {"task": task_name, "latency": latency, "traces": traces}
