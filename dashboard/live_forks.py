"""Forks of the live run: branches and threshold sweeps, sent to its trainer and read back as plain data.

`LiveForks` is the run manager's part for issue #21's page side. Commands (`fork`, `sweep`,
`discard_branch`, `adopt_branch`) go to the live run's trainer, which checks them where they
enter and raises ValueError naming the value; `fork_snapshot()` reads every branch, the metrics
of the branches the charts draw and the newest sweep's table into one `ForkSnapshot`, shared by
tabs until a branch moves on. Thread-safe: every browser tab's script thread calls it.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from dashboard import fork_charts
from dashboard.live_run import ACTIVE_STATES, LiveRun
from training.loop.branches import LIVE_BRANCH_STATES, MAX_BRANCHES, BranchStatus
from training.policies import validate_policy_params

DRAWN = ("running", "finished")  # a fork in these states is drawn on the live charts


@dataclass(frozen=True)
class ForkSnapshot:
    """What the page draws of the live run's forks, read at one moment. Plain data."""

    run_number: int
    refusal: str | None  # why the run cannot fork now (None: it can)
    snapshot_steps: tuple[int, ...] = ()
    branches: tuple[BranchStatus, ...] = ()
    fork_metrics: dict[int, pd.DataFrame] = field(default_factory=dict)  # drawn forks' bounded views
    sweep: dict | None = None  # the newest sweep's `Trainer.sweep_result`, or None
    sweep_metrics: dict[int, pd.DataFrame] = field(default_factory=dict)  # its branches' rows

    @property
    def forks(self) -> tuple[BranchStatus, ...]:
        """The branches started with Fork (a sweep's are shown apart)."""
        return tuple(branch for branch in self.branches if branch.role == "fork")

    @property
    def alive_forks(self) -> int:
        return sum(branch.state in LIVE_BRANCH_STATES for branch in self.forks)

    @property
    def drawn_forks(self) -> tuple[BranchStatus, ...]:
        return tuple(branch for branch in self.forks if branch.state in DRAWN and branch.branch_id in self.fork_metrics)


class LiveForks:
    """Forks of `live`'s current run (see the module docstring)."""

    def __init__(self, live: LiveRun):
        self._live = live
        self._lock = threading.Lock()
        self._snapshot: ForkSnapshot | None = None
        self._snapshot_key: tuple | None = None
        self._views: dict[tuple[int, int], pd.DataFrame] = {}  # (run, branch) -> its bounded view
        self._overrides: dict[tuple[int, int], dict] = {}  # (run, branch) -> the policy parameters asked for

    # --- commands --------------------------------------------------------------------------------

    def fork(self, at_step: int | None = None, *, clip_threshold: Any = None, policy: str | None = None,
             learning_rate: Any = None, **policy_params: Any) -> int:  # fmt: skip
        """Start a branch of the live run (until discarded or adopted); returns its id."""
        trainer = self._live.active_trainer("fork")
        branch_id = trainer.fork(at_step, clip_threshold=clip_threshold, policy=policy,
                                 learning_rate=learning_rate, **policy_params)  # fmt: skip
        self._overrides[(self._live.run_number, branch_id)] = dict(policy_params)
        return branch_id

    def sweep(self, thresholds: Any = None, steps: Any = 500, at_step: int | None = None) -> int:
        """Start a threshold sweep of the live run from one snapshot; returns its id."""
        return self._live.active_trainer("threshold sweep").sweep(thresholds, steps=steps, at_step=at_step)

    def discard_branch(self, branch_id: int) -> None:
        self._live.active_trainer("discard").discard(branch_id)

    def adopt_branch(self, branch_id: int) -> None:
        """The run continues from the branch's state and settings; the controls show them at once."""
        live = self._live
        trainer = live.active_trainer("adopt")
        status = next((branch for branch in trainer.branches() if branch.branch_id == branch_id), None)
        trainer.adopt(branch_id)  # raises, naming the branch, if it cannot be adopted
        settings = live.settings
        if status is None or settings is None:
            return
        policy = status.policy or settings.policy
        known = dict(settings.policy_params) if policy == settings.policy else trainer.config.policy_params[policy]
        asked = self._overrides.get((live.run_number, branch_id), {})
        live.change_settings(
            policy=policy,
            policy_params=validate_policy_params(policy, {**known, **asked}),
            clip_threshold=_asked(status.clip_threshold, settings.clip_threshold),
            learning_rate=_asked(status.learning_rate, settings.learning_rate),
        )

    # --- reading ---------------------------------------------------------------------------------

    def _view(self, run_number: int, trainer, branch: BranchStatus) -> pd.DataFrame:
        """The branch's bounded view, grown by the rows it trained since the last read."""
        key = (run_number, branch.branch_id)
        with self._lock:
            view = self._views.get(key)
            since = None if view is None or not len(view) else int(view["step"].iloc[-1])
            rows = trainer.branch_metrics(branch.branch_id, since=since)
            if len(rows) or view is None:
                view = self._views[key] = fork_charts.grown_view(view, rows)
            for old in [old for old in self._views if old[0] != run_number]:
                del self._views[old]  # an earlier run's branches
            return view

    def fork_snapshot(self) -> ForkSnapshot:
        """The live run's branches and newest sweep as plain data; shared until a branch moves on."""
        live = self._live
        trainer, run_number = live.trainer, live.run_number
        refusal = _refusal(trainer, run_number)
        if trainer is None or trainer.store is None:
            return ForkSnapshot(run_number, refusal)
        branches = tuple(trainer.branches())
        key = (run_number, refusal, trainer.snapshot_steps, branches)
        with self._lock:
            if key == self._snapshot_key and self._snapshot is not None:
                return self._snapshot
        drawn = {b.branch_id: self._view(run_number, trainer, b) for b in branches if b.role == "fork" and b.state in DRAWN}
        sweep, sweep_metrics = _newest_sweep(trainer, branches)
        snapshot = ForkSnapshot(run_number, refusal, trainer.snapshot_steps, branches, drawn, sweep, sweep_metrics)
        with self._lock:
            self._snapshot, self._snapshot_key = snapshot, key
        return snapshot


def _asked(branch_value: float | None, run_value: float) -> float:
    """The branch's value, or the run's where they differ only by the float32 rounding the
    trainer's variables hold (a branch that kept the run's learning rate reports it rounded)."""
    if branch_value is None or math.isclose(branch_value, run_value, rel_tol=1e-6):
        return run_value
    return float(branch_value)


def _refusal(trainer, run_number: int) -> str | None:
    """Why the live run cannot fork now, in one line (None: it can)."""
    if trainer is None:
        return "Forking needs a run: press Start, and fork it once it trains."
    state = trainer.status.state
    if state not in ACTIVE_STATES:
        return f"Run {run_number} is {state}: forking needs a run that is training. Press Start for a new run."
    if trainer.store is None or trainer.status.step == 0:
        return "Forking opens once the run has taken its first step."
    return trainer.fork_refusal


def _newest_sweep(trainer, branches: tuple[BranchStatus, ...]) -> tuple[dict | None, dict[int, pd.DataFrame]]:
    """The newest sweep's result and its branches' per-step rows (None while its branches start).

    A sweep's branches wait for the training thread to start them, and until every one has
    its settings the trainer's `sweep_result` cannot summarize them: the page shows progress 0.
    """
    sweep_ids = [branch.sweep_id for branch in branches if branch.sweep_id is not None]
    if not sweep_ids:
        return None, {}
    sweep_id = max(sweep_ids)
    members = [branch for branch in branches if branch.sweep_id == sweep_id]
    if any(branch.state == "waiting" for branch in members):
        return {"sweep_id": sweep_id, "done": False, "progress": 0.0, "sweep": []}, {}
    try:
        result = trainer.sweep_result(sweep_id)
    except (TypeError, ValueError):  # a branch still starting (its threshold not known yet)
        return {"sweep_id": sweep_id, "done": False, "progress": 0.0, "sweep": []}, {}
    if not result["done"]:  # the curves are drawn once the sweep is done
        return result, {}
    return result, {branch.branch_id: trainer.branch_metrics(branch.branch_id) for branch in members}


__all__ = ["DRAWN", "MAX_BRANCHES", "ForkSnapshot", "LiveForks"]
