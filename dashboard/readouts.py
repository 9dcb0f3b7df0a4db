"""The numbers printed beside the charts: the header's headline, the what-if, the suggestion.

Pure functions of recent raw rows (`store.metrics(last=N)`) and evaluation rows; nothing here
imports Streamlit, TensorFlow or Altair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dashboard.chart_frames import CLIP_RATE_WINDOW, finite


def latest_validation(evaluations: pd.DataFrame | None) -> dict[str, float]:
    """The last evaluation's values by name (`val_loss`, `val_<metric>`); empty without any."""
    if evaluations is None or len(evaluations) == 0:
        return {}
    last = evaluations[evaluations["step"] == evaluations["step"].iloc[-1]]
    return {str(name): float(value) for name, value in zip(last["name"], last["value"])}


def recent_norms(recent: pd.DataFrame) -> np.ndarray:
    """The finite pre-clip gradient norms of recent raw rows."""
    if len(recent) == 0:
        return np.zeros(0)
    norms = finite(recent["grad_norm"])
    return norms[np.isfinite(norms)]


@dataclass(frozen=True)
class WhatIf:
    """At `clip_threshold`, `clipped_share` of the last `steps` steps would have been clipped."""

    clip_threshold: float
    steps: int
    clipped_steps: int

    @property
    def clipped_share(self) -> float:
        return self.clipped_steps / self.steps if self.steps else 0.0

    def sentence(self) -> str:
        return (
            f"At threshold {self.clip_threshold:g}, {self.clipped_share:.1%} of the last "
            f"{self.steps:,} steps would have been clipped."
        )


def what_if(norms: np.ndarray, clip_threshold: float) -> WhatIf:
    """How many of `norms` a global-norm clip at `clip_threshold` would have scaled down."""
    norms = np.asarray(norms, dtype=np.float64)
    norms = norms[np.isfinite(norms)]
    return WhatIf(float(clip_threshold), len(norms), int((norms > clip_threshold).sum()))


def suggest_threshold(norms: np.ndarray, percentile: float = 90.0) -> float | None:
    """The `percentile` of recent norms: clipping there trims the top (100 - p)% of steps.

    None if there is nothing to go on (no finite, positive norm).
    """
    if not 0 < percentile < 100:
        raise ValueError(
            f"`percentile` must be between 0 and 100 (exclusive). Received: percentile={percentile!r}"
        )
    norms = np.asarray(norms, dtype=np.float64)
    norms = norms[np.isfinite(norms) & (norms > 0)]
    if len(norms) == 0:
        return None
    return float(f"{np.percentile(norms, percentile):.3g}")  # 3 significant digits reads well


@dataclass(frozen=True)
class Headline:
    """The header numbers, from the newest raw rows."""

    loss: float | None
    grad_norm: float | None
    clip_rate: float | None  # over the last `window` steps
    window: int


def headline(recent: pd.DataFrame, window: int = CLIP_RATE_WINDOW) -> Headline:
    if len(recent) == 0:
        return Headline(None, None, None, 0)
    last = recent.tail(window)
    finite_rows = recent[recent["finite"].astype(bool)] if "finite" in recent else recent
    loss = float(finite_rows["loss"].iloc[-1]) if len(finite_rows) else None
    grad_norm = float(finite_rows["grad_norm"].iloc[-1]) if len(finite_rows) else None
    clip_rate = float(last["clipped"].astype(bool).mean())
    return Headline(loss, grad_norm, clip_rate, len(last))
