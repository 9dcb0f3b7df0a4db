"""The metrics store: every step of a recent window, plus a bucketed summary of the whole run.

The training thread appends one chunk of steps at a time; any thread reads snapshots (copies).
Memory is bounded however long a run goes:

* a ring of the last `window` steps at full resolution, as columnar numpy arrays that grow in
  blocks up to the window and then wrap;
* a summary of the whole run in at most `max_buckets` buckets (min, mean and max of each norm,
  mean loss, clip count, non-finite count, per-layer max); when it fills, neighbours merge and
  the bucket width doubles.

`view(max_points)` reduces all of it to a bounded number of rows for drawing: recent steps raw,
older steps bucketed keeping each bucket's max so spikes stay visible. Its cost depends on
`max_points`, not on the run's length. `view_range(first, last, max_points)` does the same for
one range of steps (a chart's zoom), as finely as the ring and the summary hold it.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Mapping

import numpy as np
import pandas as pd

# Per-step columns, in the order of `metrics()`; `policy` is stored as a small integer code.
STEP_COLUMNS: dict[str, np.dtype] = {
    "step": np.dtype(np.int64),
    "time_s": np.dtype(np.float64),
    "loss": np.dtype(np.float32),
    "grad_norm": np.dtype(np.float32),
    "clipped_grad_norm": np.dtype(np.float32),
    "clip_threshold": np.dtype(np.float32),
    "clipped": np.dtype(np.bool_),
    "finite": np.dtype(np.bool_),
    "learning_rate": np.dtype(np.float32),
    "policy": np.dtype(np.int8),
}
EVENT_COLUMNS = ("step", "time_s", "kind", "old", "new")
# The columns of `view()`'s metrics frame, one row per point of a chart.
VIEW_COLUMNS = (
    "step", "steps", "loss", "grad_norm", "grad_norm_min", "grad_norm_mean",
    "clipped_grad_norm", "clipped_grad_norm_mean", "clip_threshold", "clipped",
    "nonfinite", "learning_rate", "policy",
)  # fmt: skip
FOLD_STEPS = 4096  # fold new steps into the summary in batches of about this many

# How each summary field combines when buckets merge.
_BUCKET_FIELDS: dict[str, str] = {
    "step": "first",
    "last_step": "last",
    "steps": "sum",
    "finite_steps": "sum",
    "loss_sum": "sum",
    "grad_norm_min": "min",
    "grad_norm_max": "max",
    "grad_norm_sum": "sum",
    "clipped_grad_norm_max": "max",
    "clipped_grad_norm_sum": "sum",
    "clip_threshold": "last",
    "clipped": "sum",
    "learning_rate": "last",
    "policy": "last",
    "layer_max": "max",
}
_REDUCERS = {
    "sum": np.add.reduceat,
    "min": np.fmin.reduceat,  # fmin/fmax skip NaN (a non-finite step's norms)
    "max": np.fmax.reduceat,
}


def _merge(buckets: Mapping[str, np.ndarray], starts: np.ndarray) -> dict[str, np.ndarray]:
    """Merge consecutive buckets into groups that begin at the indices `starts`."""
    ends = np.append(starts[1:], len(buckets["step"])) - 1
    merged = {}
    for name, how in _BUCKET_FIELDS.items():
        values = buckets[name]
        if how == "first":
            merged[name] = values[starts]
        elif how == "last":
            merged[name] = values[ends]
        else:
            merged[name] = _REDUCERS[how](values, starts, axis=0)
    return merged


def _rows_as_buckets(rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each step as a bucket of one; a non-finite step's norms and loss become NaN."""
    finite = rows["finite"]

    def masked(name):
        return np.where(finite, rows[name], np.nan).astype(np.float64)

    grad_norm, clipped_norm = masked("grad_norm"), masked("clipped_grad_norm")
    return {
        "step": rows["step"],
        "last_step": rows["step"],
        "steps": np.ones(len(finite), np.int64),
        "finite_steps": finite.astype(np.int64),
        "loss_sum": np.nan_to_num(masked("loss")),
        "grad_norm_min": grad_norm,
        "grad_norm_max": grad_norm,
        "grad_norm_sum": np.nan_to_num(grad_norm),
        "clipped_grad_norm_max": clipped_norm,
        "clipped_grad_norm_sum": np.nan_to_num(clipped_norm),
        "clip_threshold": rows["clip_threshold"],
        "clipped": rows["clipped"].astype(np.int64),
        "learning_rate": rows["learning_rate"],
        "policy": rows["policy"],
        "layer_max": np.where(finite[:, None], rows["layer_norms"], np.nan),
    }


def _group_starts(steps: np.ndarray, width: int) -> np.ndarray:
    """Indices where a new group of `width` steps begins (steps ascending)."""
    group = steps // width
    return np.flatnonzero(np.diff(group, prepend=group[:1] - 1))


def _concat(parts) -> dict[str, np.ndarray]:
    parts = [part for part in parts if part and len(part["step"])]
    if not parts:
        return {}
    return {name: np.concatenate([part[name] for part in parts]) for name in _BUCKET_FIELDS}


class MetricsStore:
    """Thread-safe, bounded, columnar store of one run's per-step metrics."""

    def __init__(
        self,
        variable_names: list[str],
        policy_names: tuple[str, ...],
        window: int = 100_000,
        max_buckets: int = 2048,
        block: int = 4096,
    ):
        if window < 1 or max_buckets < 2:
            raise ValueError(
                f"window must be >= 1 and max_buckets >= 2. Received: window={window}, "
                f"max_buckets={max_buckets}"
            )
        self.variable_names = list(variable_names)
        self.policy_names = tuple(policy_names)
        self.window = window
        self.max_buckets = max_buckets
        self._block = block
        self._lock = threading.Lock()
        self._capacity = 0
        self._start = 0  # ring index of the oldest row
        self._size = 0
        self._columns: dict[str, np.ndarray] = {}
        self._layer_norms = np.zeros((0, len(self.variable_names)), np.float32)
        self._allocate(min(block, window))
        self._buckets: dict[str, np.ndarray] = {}  # preallocated; the first _bucket_count count
        self._bucket_count = 0
        self._unfolded = 0  # newest ring rows not yet folded into the summary
        self._bucket_width = 1
        self._total_steps = 0
        self._events: list[tuple] = []

    # --- writing (the training thread) ---------------------------------------------------------

    def _allocate(self, capacity: int) -> None:
        ordered = self._ordered_indices()
        self._columns = {
            name: np.concatenate(
                [self._columns[name][ordered], np.zeros(capacity - self._size, dtype)]
            )
            if self._columns
            else np.zeros(capacity, dtype)
            for name, dtype in STEP_COLUMNS.items()
        }
        layer = np.zeros((capacity, len(self.variable_names)), np.float32)
        layer[: self._size] = self._layer_norms[ordered]
        self._layer_norms = layer
        self._capacity, self._start = capacity, 0

    def _ordered_indices(self) -> np.ndarray:
        return (self._start + np.arange(self._size)) % max(self._capacity, 1)

    def append(self, rows: Mapping[str, np.ndarray]) -> None:
        """Append one chunk: every STEP_COLUMNS column, plus `layer_norms` [n, variables]."""
        count = len(rows["step"])
        if count == 0:
            return
        with self._lock:
            if self._size + count > self._capacity and self._capacity < self.window:
                grown = self._capacity + self._block * math.ceil(count / self._block)
                self._allocate(min(self.window, max(grown, self._capacity * 2)))
            # The summary is folded from the ring in batches (small chunks would otherwise pay
            # its fixed cost every time); fold first whatever this chunk would overwrite.
            folded_directly = False
            if self._unfolded + count > self._capacity:
                self._fold_pending()
                if count > self._capacity:  # larger than the whole window: fold it directly
                    self._fold_into_summary(rows)
                    folded_directly = True
            keep = slice(max(0, count - self._capacity), count)
            kept = count - keep.start
            positions = (self._start + self._size + np.arange(kept)) % self._capacity
            for name in STEP_COLUMNS:
                self._columns[name][positions] = rows[name][keep]
            self._layer_norms[positions] = rows["layer_norms"][keep]
            overflow = max(0, self._size + kept - self._capacity)
            self._start = (self._start + overflow) % self._capacity
            self._size = min(self._capacity, self._size + kept)
            if not folded_directly:
                self._unfolded += count
            if self._unfolded >= FOLD_STEPS:
                self._fold_pending()
            self._total_steps += count

    def _fold_pending(self) -> None:
        """Fold the newest rows not yet in the summary (they are all still in the ring)."""
        if self._unfolded > 0:
            index = self._ordered_indices()[-self._unfolded :]
            rows = {name: self._columns[name][index] for name in STEP_COLUMNS}
            rows["layer_norms"] = self._layer_norms[index]
            self._fold_into_summary(rows)
        self._unfolded = 0

    def _fold_into_summary(self, rows) -> None:
        # Only the last bucket can take new steps, so merge the chunk with it alone: the cost
        # per chunk does not grow with the summary.
        incoming = _rows_as_buckets(rows)
        count = self._bucket_count
        if count:
            count -= 1
            tail = {name: values[count : count + 1] for name, values in self._buckets.items()}
            incoming = _concat([tail, incoming])
        incoming = _merge(incoming, _group_starts(incoming["step"], self._bucket_width))
        added = len(incoming["step"])
        capacity = len(self._buckets["step"]) if self._buckets else 0
        if count + added > capacity:
            kept = {name: values[:count] for name, values in self._buckets.items()}
            combined = _concat([kept, incoming])
            capacity = max(2 * self.max_buckets, len(combined["step"]))
            self._buckets = {
                name: np.resize(values, (capacity, *values.shape[1:]))
                for name, values in combined.items()
            }
        else:
            for name, values in incoming.items():
                self._buckets[name][count : count + added] = values
        self._bucket_count = count + added
        while self._bucket_count > self.max_buckets:
            self._bucket_width *= 2
            current = {name: values[: self._bucket_count] for name, values in self._buckets.items()}
            merged = _merge(current, _group_starts(current["step"], self._bucket_width))
            self._bucket_count = len(merged["step"])
            for name, values in merged.items():
                self._buckets[name][: self._bucket_count] = values

    def record_event(self, step: int, kind: str, old, new) -> tuple:
        """Record a command; returns the event row (step, time_s, kind, old, new)."""
        event = (int(step), time.time(), kind, _text(old), _text(new))
        with self._lock:
            self._events.append(event)
        return event

    # --- reading (any thread) ------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        return self._total_steps

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring and the summary."""
        with self._lock:
            ring = sum(column.nbytes for column in self._columns.values())
            summary = sum(values.nbytes for values in self._buckets.values())
            return ring + self._layer_norms.nbytes + summary

    def _rows_since(self, since: int | None, last: int | None = None) -> np.ndarray:
        """Ring indices, oldest first, of the rows with step > since (the last `last` if set)."""
        ordered = self._ordered_indices()
        if since is not None and self._size:
            steps = self._columns["step"][ordered]
            ordered = ordered[np.searchsorted(steps, since, side="right") :]
        if last is not None:
            ordered = ordered[-last:] if last else ordered[:0]
        return ordered

    def metrics(self, since: int | None = None, last: int | None = None) -> pd.DataFrame:
        """One row per step in the window (with step > since; only the newest `last` if set)."""
        with self._lock:
            index = self._rows_since(since, last)
            frame = pd.DataFrame({name: self._columns[name][index] for name in STEP_COLUMNS})
        frame["policy"] = pd.Categorical.from_codes(
            frame["policy"].astype(np.int64), categories=list(self.policy_names)
        )
        return frame

    def layer_norms(self, since: int | None = None, last: int | None = None) -> pd.DataFrame:
        """One row per step in the window, one column per trainable variable (pre-clip norm)."""
        with self._lock:
            index = self._rows_since(since, last)
            frame = pd.DataFrame(self._layer_norms[index], columns=self.variable_names)
            frame.insert(0, "step", self._columns["step"][index])
        return frame

    def events(self) -> pd.DataFrame:
        with self._lock:
            return pd.DataFrame(self._events, columns=list(EVENT_COLUMNS))

    def summary(self) -> dict[str, np.ndarray]:
        """The whole-run buckets (copies)."""
        with self._lock:
            self._fold_pending()
            return {name: values[: self._bucket_count].copy() for name, values in self._buckets.items()}

    def view(self, max_points: int = 2000) -> tuple[pd.DataFrame, pd.DataFrame]:
        """At most about `max_points` rows covering the whole run, for drawing.

        Returns (metrics, layer_norms). The newest half of the budget is raw steps; older steps
        come from the summary, merged so each row keeps its bucket's max (spikes stay visible).
        Columns of metrics: step (first step of the row), steps (how many it stands for), loss
        (mean), grad_norm (max), grad_norm_min, grad_norm_mean, clipped_grad_norm (max),
        clipped_grad_norm_mean, clip_threshold (last), clipped (count), nonfinite (count),
        learning_rate (last), policy (last). layer_norms: step, then one column per variable.
        """
        raw_budget = max(1, max_points // 2)
        older_budget = max(1, max_points - raw_budget - max_points // 10)
        gap_budget = max(1, max_points // 10)
        with self._lock:
            self._fold_pending()
            raw_index = self._rows_since(None, raw_budget)
            raw = self._take(raw_index)
            raw_first = raw["step"][0] if len(raw_index) else None
            older = {}
            if self._bucket_count and raw_first is not None:
                buckets = {
                    name: values[: self._bucket_count] for name, values in self._buckets.items()
                }
                complete = buckets["last_step"] < raw_first
                summary = {name: values[complete] for name, values in buckets.items()}
                count = len(summary["step"])
                if count:
                    group = math.ceil(count / older_budget)
                    older = _merge(summary, np.arange(0, count, group))
                summary_end = summary["last_step"][-1] if count else None
                gap_index = self._rows_since(summary_end)
                gap_index = gap_index[: max(0, len(gap_index) - len(raw_index))]
                if len(gap_index):
                    gap = self._take(gap_index)
                    width = max(1, math.ceil(len(gap_index) / gap_budget))
                    older = _concat([older, _merge(gap, _group_starts(gap["step"], width))])
        return self._frames(_concat([older, raw]))

    def view_range(self, first: int, last: int, max_points: int = 2000) -> tuple[pd.DataFrame, pd.DataFrame]:
        """`view()` over steps `first`..`last` only, at the finest resolution the store holds.

        Every step of the range the ring still holds is its own row; older steps come from the
        summary's buckets that overlap the range (a bucket that straddles the ring's oldest step
        stands for its steps, which the ring's rows then leave out). More rows than
        `max_points` merge into neighbours, keeping each merged row's max. A zoom on a spike
        therefore shows every step around it while the spike is in the ring.
        """
        if not (_is_whole(first) and _is_whole(last)) or last < first:
            raise ValueError(f"view_range needs integer steps first <= last. Received: first={first!r}, last={last!r}")
        if not _is_whole(max_points) or max_points < 1:
            raise ValueError(f"max_points must be an integer >= 1. Received: max_points={max_points!r}")
        with self._lock:
            self._fold_pending()
            ordered = self._ordered_indices()
            steps = self._columns["step"][ordered]
            older = {}
            if self._bucket_count and (not len(steps) or steps[0] > first):
                buckets = {name: values[: self._bucket_count] for name, values in self._buckets.items()}
                # Buckets that hold steps the ring no longer has, and that overlap the range.
                before_ring = buckets["step"] < steps[0] if len(steps) else np.ones(self._bucket_count, bool)
                keep = before_ring & (buckets["last_step"] >= first) & (buckets["step"] <= last)
                older = {name: values[keep] for name, values in buckets.items()}
            covered = int(older["last_step"][-1]) if older and len(older["step"]) else first - 1
            low = np.searchsorted(steps, max(first, covered + 1), side="left")
            high = np.searchsorted(steps, last, side="right")
            raw = self._take(ordered[low:high]) if high > low else {}
        rows = _concat([older, raw])
        count = len(rows["step"]) if rows else 0
        if count > max_points:
            rows = _merge(rows, np.arange(0, count, math.ceil(count / max_points)))
        return self._frames(rows)

    def _take(self, index: np.ndarray) -> dict[str, np.ndarray]:
        rows = {name: self._columns[name][index] for name in STEP_COLUMNS}
        rows["layer_norms"] = self._layer_norms[index]
        return _rows_as_buckets(rows)

    def _frames(self, buckets) -> tuple[pd.DataFrame, pd.DataFrame]:
        if not buckets:
            return pd.DataFrame(columns=list(VIEW_COLUMNS)), pd.DataFrame(
                columns=["step", *self.variable_names]
            )
        finite = np.maximum(buckets["finite_steps"], 1)
        metrics = pd.DataFrame(
            {
                "step": buckets["step"],
                "steps": buckets["steps"],
                "loss": np.where(buckets["finite_steps"] > 0, buckets["loss_sum"] / finite, np.nan),
                "grad_norm": buckets["grad_norm_max"],
                "grad_norm_min": buckets["grad_norm_min"],
                "grad_norm_mean": buckets["grad_norm_sum"] / finite,
                "clipped_grad_norm": buckets["clipped_grad_norm_max"],
                "clipped_grad_norm_mean": buckets["clipped_grad_norm_sum"] / finite,
                "clip_threshold": buckets["clip_threshold"].astype(np.float64),
                "clipped": buckets["clipped"],
                "nonfinite": buckets["steps"] - buckets["finite_steps"],
                "learning_rate": buckets["learning_rate"].astype(np.float64),
                "policy": pd.Categorical.from_codes(
                    buckets["policy"].astype(np.int64), categories=list(self.policy_names)
                ),
            }
        )
        layers = pd.DataFrame(buckets["layer_max"], columns=self.variable_names)
        layers.insert(0, "step", buckets["step"])
        return metrics, layers


def _is_whole(value) -> bool:
    """An integer (Python's or numpy's), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
