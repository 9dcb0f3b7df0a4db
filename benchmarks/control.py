"""Control: how fast a live command reaches the recorded steps, and whether it retraces.

Both run on one trainer with full monitoring, warmed up first. A command is queued at once and
applied by the training thread between chunks, so the steps still on the old value after a call
are at most the chunk in flight; the first new step is then visible one chunk later.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

from benchmarks.throughput import TrainerRun

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


def measure_latency(run: TrainerRun, trials: int, seed: int = 0, timeout: float = 60.0) -> dict:
    """Time and steps from `set_clip_threshold` to the first recorded step that uses the value."""
    trainer, store = run.trainer, run.trainer.store
    rng = np.random.default_rng(seed)
    results = []
    for trial in range(trials):
        value = LATENCY_THRESHOLDS[trial % len(LATENCY_THRESHOLDS)]
        time.sleep(rng.uniform(0.02, 0.06))  # land anywhere inside a chunk
        status = trainer.status
        step_at_call, chunk_at_call = status.step, status.chunk_steps
        wall_at_call = time.time()
        called = time.perf_counter()
        trainer.set_clip_threshold(value)
        first_new_step = None
        while first_new_step is None:
            if time.perf_counter() - called > timeout:
                raise TimeoutError(f"clip_threshold={value} not recorded within {timeout:g} s")
            # Status moves after the chunk is in the store: query the store only then.
            _, step = run.next_chunk_boundary(timeout)
            recent = store.metrics(since=step_at_call)
            hits = recent["step"][recent["clip_threshold"] == np.float32(value)]
            if len(hits):
                first_new_step = int(hits.iloc[0])
        visible = time.perf_counter()
        events = trainer.events()
        event = events[events["kind"] == "clip_threshold"].iloc[-1]
        results.append(
            {
                "clip_threshold": value,
                "visible_ms": (visible - called) * 1000,
                "applied_ms": (float(event["time_s"]) - wall_at_call) * 1000,
                "steps_on_old_value": first_new_step - step_at_call - 1,
                "chunk_steps": max(chunk_at_call, trainer.status.chunk_steps),
                "event_step_plus_one_is_first_new_step": int(event["step"]) + 1 == first_new_step,
            }
        )
    visible_ms = [trial["visible_ms"] for trial in results]
    applied_ms = [trial["applied_ms"] for trial in results]
    old_steps = [trial["steps_on_old_value"] for trial in results]
    chunks = [trial["steps_on_old_value"] / max(trial["chunk_steps"], 1) for trial in results]
    return {
        "trials": results,
        "visible_ms": {"median": statistics.median(visible_ms), "max": max(visible_ms)},
        "applied_ms": {"median": statistics.median(applied_ms), "max": max(applied_ms)},
        "steps_on_old_value": {"median": statistics.median(old_steps), "max": max(old_steps)},
        "chunks_on_old_value": {"median": statistics.median(chunks), "max": max(chunks)},
        "chunk_steps_median": statistics.median(trial["chunk_steps"] for trial in results),
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
    run = TrainerRun("control", task_name, None, seed)
    try:
        run.start()
        run.warm_up(warm_up_seconds, timeout=600.0)
        run.trainer.resume()
        _after_two_chunks(run, 600.0)
        latency = measure_latency(run, trials, seed)
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
