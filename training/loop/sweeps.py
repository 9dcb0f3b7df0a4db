"""What a threshold sweep proposes and concludes: pure functions of numbers, no TensorFlow.

A sweep trains one branch per threshold from one snapshot on the parent's batches, plus two
branches with the parent's own settings: the baseline (the parent's batches) and the noise
branch (another batch order). The spread between those two is the run's own noise: a threshold
whose mean loss is closer than that to the baseline's is "within noise", not better or worse.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from ..clipping import policies

MAX_SWEEP_THRESHOLDS = 8
DEFAULT_SWEEP_STEPS = 500
TAIL_FRACTION = 0.25  # the mean loss is taken over the last quarter of a branch's steps


def validate_sweep_thresholds(thresholds: Iterable) -> tuple[float, ...]:
    """1..MAX_SWEEP_THRESHOLDS distinct clip thresholds, sorted; ValueError naming the value.

    Distinct as the compiled step holds them (float32): two numbers that round to one float32
    are one threshold, kept as the smaller one given (found by probing: 0.1 and 0.1 + 1e-9 made
    two branches, both "clip 0.1", training the same numbers)."""
    if isinstance(thresholds, (str, bytes)):
        raise ValueError(f"Sweep thresholds must be a list of numbers. Received: {thresholds!r}")
    try:
        checked = sorted(policies.validate_clip_threshold(value) for value in thresholds)
    except TypeError:
        raise ValueError(f"Sweep thresholds must be a list of numbers. Received: {thresholds!r}") from None
    by_float32: dict[np.float32, float] = {}
    for value in checked:
        by_float32.setdefault(np.float32(value), value)
    values = list(by_float32.values())
    if not 1 <= len(values) <= MAX_SWEEP_THRESHOLDS:
        raise ValueError(
            f"A sweep takes 1 to {MAX_SWEEP_THRESHOLDS} distinct thresholds. Received: "
            f"{len(values)} ({', '.join(f'{value:g}' for value in values) or 'none'})"
        )
    return tuple(values)


def default_sweep_thresholds(current: float, recent_norms: Sequence[float], count: int = 5) -> tuple[float, ...]:
    """`count` log-spaced thresholds spanning the current one and the recent norms' 10th-90th
    percentiles (a factor 2 beyond each end), rounded to two significant digits."""
    norms = np.asarray(recent_norms, dtype=np.float64)
    norms = norms[np.isfinite(norms) & (norms > 0)]
    low, high = current, current
    if len(norms):
        low, high = min(low, float(np.percentile(norms, 10))), max(high, float(np.percentile(norms, 90)))
    values = np.geomspace(low / 2, high * 2, count)
    rounded = {float(f"{value:.2g}") for value in values} | {float(current)}
    return validate_sweep_thresholds(sorted(rounded)[:MAX_SWEEP_THRESHOLDS])


def tail_mean(losses: Sequence[float]) -> float:
    """The mean of the finite losses over the last TAIL_FRACTION of the steps (NaN if none)."""
    values = np.asarray(losses, dtype=np.float64)
    tail = values[len(values) - max(1, math.ceil(len(values) * TAIL_FRACTION)):] if len(values) else values
    tail = tail[np.isfinite(tail)]
    return float(tail.mean()) if len(tail) else math.nan


def summarize_branch(clip_threshold: float, losses: Sequence[float], clipped: Sequence[bool],
                     run_id: int | None, branch_id: int) -> dict:  # fmt: skip
    """One row of a sweep's table (the CLI's JSON names these keys)."""
    losses = np.asarray(losses, dtype=np.float64)
    return {
        "clip_threshold": float(clip_threshold),
        "branch_id": branch_id,
        "run_id": run_id,
        "final_loss": float(losses[-1]) if len(losses) else math.nan,
        "mean_loss": tail_mean(losses),
        "clip_rate": float(np.mean(clipped)) if len(clipped) else math.nan,
    }


def conclude(rows: list[dict], baseline_mean: float, noise_mean: float) -> dict:
    """The sweep's verdict: its noise floor, the best threshold, and which are within noise."""
    noise_floor = abs(noise_mean - baseline_mean) if math.isfinite(noise_mean - baseline_mean) else math.nan
    finite = [row for row in rows if math.isfinite(row["mean_loss"])]
    best = min(finite, key=lambda row: row["mean_loss"]) if finite else None
    for row in rows:
        gap = abs(row["mean_loss"] - baseline_mean)
        row["within_noise"] = bool(math.isfinite(gap) and math.isfinite(noise_floor) and gap <= noise_floor)
    return {
        "sweep": rows,
        "best_clip_threshold": None if best is None else best["clip_threshold"],
        "noise_floor": noise_floor,
        "baseline_mean_loss": baseline_mean,
    }
