"""A run's commands (the events table: step, time_s, kind, old, new) as the page shows them.

The table under the charts, newest first, and the rules and labels the loss chart draws at
each command's step. Pure functions of `store.events()`; no Streamlit, TensorFlow or Altair.
"""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd

MAX_EVENT_RULES = 60  # the newest events drawn as rules on the loss chart
_EVENT_NAMES = {
    "clip_threshold": "threshold",
    "learning_rate": "learning rate",
    "max_steps_per_second": "speed",
    "spike": "spike",
}


def event_group(kind: str) -> str:
    if kind == "clip_threshold":
        return "Threshold"
    if kind == "spike":
        return "Spike"
    if kind == "learning_rate":
        return "Learning rate"
    if kind == "policy" or "." in kind:
        return "Policy"
    return "Run"


def event_label(kind: str, old: str, new: str) -> str:
    """A short label for a rule: 'threshold 1 -> 0.5', 'spike x100', 'pause'."""
    name = _EVENT_NAMES.get(kind, kind)
    if kind == "spike":
        return f"spike ×{new}"
    if kind == "max_steps_per_second":
        old, new = old or "full", new or "full"
    if old and new:
        return f"{name} {old} → {new}"
    if new and kind not in ("start", "failed", "finished"):
        return f"{name} {new}"
    return name


def events_table(events: pd.DataFrame) -> pd.DataFrame:
    """Every command, newest first: Step, Time, Command, Old, New."""
    columns = ["Step", "Time", "Command", "Old", "New"]
    if len(events) == 0:
        return pd.DataFrame({column: pd.Series(dtype=object) for column in columns})
    ordered = events.iloc[::-1]
    times = [
        datetime.datetime.fromtimestamp(float(t)).strftime("%H:%M:%S") for t in ordered["time_s"]
    ]
    return pd.DataFrame(
        {
            "Step": ordered["step"].astype(np.int64).to_numpy(),
            "Time": times,
            "Command": ordered["kind"].astype(str).to_numpy(),
            "Old": ordered["old"].astype(str).to_numpy(),
            "New": ordered["new"].astype(str).to_numpy(),
        }
    )


def event_rules_frame(events: pd.DataFrame, limit: int = MAX_EVENT_RULES) -> pd.DataFrame:
    """Events to draw as rules: the newest `limit`, without the run's own start."""
    if len(events) == 0:
        return pd.DataFrame({"step": [], "kind": [], "old": [], "new": [], "group": [], "label": []})
    shown = events[events["kind"] != "start"].tail(limit)
    return pd.DataFrame(
        {
            "step": shown["step"].astype(np.int64).to_numpy(),
            "kind": shown["kind"].astype(str).to_numpy(),
            "old": shown["old"].astype(str).to_numpy(),
            "new": shown["new"].astype(str).to_numpy(),
            "group": [event_group(kind) for kind in shown["kind"]],
            "label": [
                event_label(kind, old, new)
                for kind, old, new in zip(shown["kind"], shown["old"], shown["new"])
            ],
        }
    )


def event_labels_frame(rules: pd.DataFrame) -> pd.DataFrame:
    """One label per step: commands taken at the same step (pause, resume) share it."""
    return rules.groupby("step", sort=True).agg(
        label=("label", " · ".join), group=("group", "last")
    ).reset_index()
