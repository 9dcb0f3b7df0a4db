"""Forks of a live run: snapshots every N steps, branches trained from them on the same batches.

A branch is the parent's own compiled step run on another training state. The training thread
swaps the branch's values into the same variables (model, optimizer with its `iterations` and
learning rate, knobs, every policy's state, the data seed), runs a chunk, and copies them out
again: no second model, no retrace, so a fork's first step is one variable swap away. A branch
with the parent's settings therefore computes the parent's bits: the same compiled function, the
same values, the same batches (drawn by step, training/loop/trainer.py `_gather_batch`).

The parent keeps training while its branches run: it takes turns with them, a chunk each, on
the one training thread. Why: one thread owning the variables is what makes the swap safe; every
line advances at the same rate, so a branch and its parent are compared at equal steps; and on
two cores a second thread would only share the CPU.

`Forks` has two halves. Any thread asks (`request`, `discard`, `adopt`) and reads (`statuses`,
`metrics`); the training thread alone acts (`launch_due`, `run_round`, `take_snapshot`).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from ..clipping import policies
from ..clipping.commands import apply_command, check_command
from ..clipping.engine import KNOB, TrainingState
from ..runs.store import MetricsStore
from .steps import chunk_rows

DEFAULT_SNAPSHOT_EVERY = 2000
# With the default cadence, at most this often: at seed's full speed (60,000 steps/s) one every
# 2,000 steps took 4.4% of its training time (30 snapshots a second, 1.5 ms each with the
# recorder contending for the interpreter); a paced demo (300 steps/s) still gets every one.
DEFAULT_MIN_SNAPSHOT_SECONDS = 0.25
DEFAULT_SNAPSHOTS_KEPT = 10
MAX_BRANCHES = 4  # forks alive at once (a sweep's branches are counted apart)
BRANCH_STATES = ("waiting", "running", "finished", "failed", "discarded", "adopted")
LIVE_BRANCH_STATES = BRANCH_STATES[:2]  # not ended: waiting to start, or running


@dataclass(frozen=True)
class BranchSettings:
    """What a branch changes from its parent's settings at the fork step (None: the parent's)."""

    clip_threshold: float | None = None
    policy: str | None = None
    policy_params: dict = field(default_factory=dict)
    learning_rate: float | None = None
    data_seed: int | None = None  # another batch order (the sweep's noise branch)

    def commands(self, current_policy: str):
        """The checked commands that turn the parent's state into the branch's."""
        if self.policy is not None or self.policy_params:
            yield check_command("policy", self.policy or current_policy, self.policy_params)
        if self.clip_threshold is not None:
            yield check_command("clip_threshold", self.clip_threshold)
        if self.learning_rate is not None:
            yield check_command("learning_rate", self.learning_rate)


@dataclass(frozen=True)
class BranchStatus:
    """A branch as readers see it (published by the training thread)."""

    branch_id: int
    fork_step: int
    step: int
    state: str  # one of BRANCH_STATES
    label: str
    clip_threshold: float | None = None
    policy: str | None = None
    learning_rate: float | None = None
    data_seed: int | None = None
    max_steps: int | None = None  # the step it ends at (None: until discarded or adopted)
    sweep_id: int | None = None
    role: str = "fork"  # "fork", or a sweep's "threshold", "baseline", "noise"
    error: str | None = None
    run_id: int | None = None


@dataclass
class _Branch:
    status: BranchStatus
    settings: BranchSettings
    at_step: int | None  # the fork step asked for (None: the parent's step when launched)
    steps: int | None  # how many steps to train (None: until discarded or adopted)
    values: dict | None = None  # its training state, while the parent's is in the variables
    store: MetricsStore | None = None
    writer: Any = None


def validate_branch_policy_params(policy: str, params: dict, parent_params: dict) -> dict:
    """A branch shares its parent's compiled step: only live parameters may differ."""
    checked = policies.validate_policy_params(policy, {**parent_params, **params})
    spec = policies.POLICY_PARAMETERS[policy]
    for key in params:
        if not spec[key].live and checked[key] != parent_params[key]:
            raise ValueError(
                f"`{key}` of {policy!r} sets the size of the compiled step a branch shares with its "
                f"parent, so a branch cannot change it. Received: {key}={params[key]!r}; the run has "
                f"{parent_params[key]!r}. A branch may change: {', '.join(k for k in spec if spec[k].live) or 'none'}"
            )
    return {key: checked[key] for key in params}


class SnapshotRing:
    """The last `kept` snapshots: step 0's, then one at the first chunk end at or past each
    multiple of `every` (a chunk is not cut for a snapshot: measured, cutting seed's chunks at
    every multiple of 1,000 cost 13% of its steps/s), and at least `min_seconds` after the last."""

    def __init__(self, every: int, kept: int, min_seconds: float = 0.0):
        self.every, self.kept, self.min_seconds = every, kept, min_seconds
        self._snapshots: dict[int, dict] = {}
        self._last: int | None = None
        self._last_time = 0.0

    def due(self, step: int) -> bool:
        if self._last is None:
            return True
        return step // self.every > self._last // self.every and time.monotonic() - self._last_time >= self.min_seconds

    def add(self, snapshot: dict) -> None:
        self._last, self._last_time = int(snapshot["step"]), time.monotonic()
        self._snapshots[self._last] = snapshot
        while len(self._snapshots) > self.kept:
            del self._snapshots[min(self._snapshots)]

    def steps(self) -> tuple[int, ...]:
        return tuple(sorted(self._snapshots))

    def get(self, step: int) -> dict:
        if step not in self._snapshots:
            kept = ", ".join(map(str, self.steps())) or "none yet"
            raise ValueError(f"No snapshot is kept at step {step}. Kept: {kept} (one per {self.every} steps).")
        return self._snapshots[step]

    def nbytes(self) -> int:
        return sum(snapshot_bytes(snapshot) for snapshot in self._snapshots.values())


def snapshot_bytes(snapshot: dict) -> int:
    return int(sum(value.nbytes for value in snapshot["values"]))


class Forks:
    """A trainer's snapshots and branches (see the module docstring for who calls what)."""

    def __init__(self, every: int, kept: int, min_seconds: float = 0.0):
        self.ring = SnapshotRing(every, kept, min_seconds)
        self._lock = threading.Lock()
        self._branches: dict[int, _Branch] = {}
        self._ids = itertools.count(1)
        self._sweep_ids = itertools.count(1)
        self._discard: set[int] = set()
        self._adopt: list[int] = []
        self.snapshot_steps: tuple[int, ...] = ()  # published for readers
        self.snapshot_nbytes = 0
        self.snapshot_seconds = 0.0  # time the training thread spent taking (and filing) snapshots
        self.refusal: str | None = None  # why this run cannot fork (streamed data, no monitoring)
        self.ended: str | None = None  # the parent's final state once it has ended (nothing runs a branch)
        self.on_snapshot: Callable[[dict], None] | None = None

    # --- any thread ------------------------------------------------------------------------------

    def request(self, settings: BranchSettings, at_step: int | None, steps: int | None, label: str) -> int:
        """Queue one fork; returns its branch id."""
        if self.refusal is not None:
            raise ValueError(self.refusal)
        with self._lock:
            self._refuse_once_ended("fork")
            alive = [b for b in self._alive() if b.status.role == "fork"]
            if len(alive) >= MAX_BRANCHES:
                raise ValueError(
                    f"At most {MAX_BRANCHES} branches run at once; {len(alive)} are running "
                    f"({', '.join(str(b.status.branch_id) for b in alive)}). Discard or adopt one first."
                )
            return self._queue(settings, at_step, steps, label, None, "fork")

    def request_sweep(self, branches: list[tuple[BranchSettings, str, str]], at_step: int | None, steps: int) -> int:
        """Queue a sweep's branches ((settings, label, role) each) at once; returns the sweep's id.
        One sweep at a time (as the page offers it): a second, while one has branches left, is
        refused (found by probing: each call queued ten more branches, all training at once)."""
        if self.refusal is not None:
            raise ValueError(self.refusal)
        with self._lock:
            self._refuse_once_ended("sweep")
            left = [b for b in self._alive() if b.status.sweep_id is not None]
            if left:
                raise ValueError(
                    f"Sweep {left[0].status.sweep_id} is still running ({len(left)} of its branches left: "
                    f"{', '.join(str(b.status.branch_id) for b in left)}); one sweep runs at a time. Wait for "
                    "it (wait_for_branches) or discard its branches first."
                )
            sweep_id = next(self._sweep_ids)
            for settings, label, role in branches:
                self._queue(settings, at_step, steps, label, sweep_id, role)
        return sweep_id

    def _alive(self) -> list["_Branch"]:
        return [b for b in self._branches.values() if b.status.state in LIVE_BRANCH_STATES]

    def _queue(self, settings: BranchSettings, at_step: int | None, steps: int | None, label: str,
               sweep_id: int | None, role: str) -> int:  # fmt: skip
        """(Under the lock.) A waiting branch already shows what it was asked for (the run's own
        values when it starts)."""
        branch_id = next(self._ids)
        status = BranchStatus(branch_id, fork_step=-1 if at_step is None else at_step, step=-1, state="waiting",
                              label=label, clip_threshold=settings.clip_threshold, policy=settings.policy,
                              learning_rate=settings.learning_rate, data_seed=settings.data_seed,
                              sweep_id=sweep_id, role=role)  # fmt: skip
        self._branches[branch_id] = _Branch(status, settings, at_step, steps)
        return branch_id

    def discard(self, branch_id: int) -> None:
        self._branch(branch_id)
        with self._lock:
            self._discard.add(branch_id)

    def adopt(self, branch_id: int) -> None:
        branch = self._branch(branch_id)
        if branch.status.state not in ("running", "finished"):
            raise ValueError(f"Branch {branch_id} is {branch.status.state}; only a running or finished branch can be adopted.")
        with self._lock:
            self._refuse_once_ended("adopt a branch")
            self._adopt.append(branch_id)

    def request_allowed(self, what: str) -> None:
        with self._lock:
            self._refuse_once_ended(what)

    def _refuse_once_ended(self, what: str) -> None:
        """Found by probing: a fork, sweep or adopt asked of an ended run was taken and never
        served (its branches waited forever, an adopt did nothing)."""
        if self.ended is not None:
            raise RuntimeError(
                f"The run is {self.ended}: its training thread has ended, so it cannot {what}. Fork it from its "
                "saved snapshot files instead (python -m training --fork-from RUN_ID), if it wrote them."
            )

    def statuses(self) -> list[BranchStatus]:
        with self._lock:
            return [branch.status for branch in self._branches.values()]

    def status(self, branch_id: int) -> BranchStatus:
        return self._branch(branch_id).status

    def metrics(self, branch_id: int, since: int | None = None):
        store = self._branch(branch_id).store
        if store is None:
            import pandas as pd

            from ..runs.store import STEP_COLUMNS

            return pd.DataFrame(columns=list(STEP_COLUMNS))
        return store.metrics(since)

    def events(self, branch_id: int):
        store = self._branch(branch_id).store
        return None if store is None else store.events()

    def _branch(self, branch_id: Any) -> _Branch:
        with self._lock:
            branch = self._branches.get(branch_id)
        if branch is None:
            known = ", ".join(map(str, self._branches)) or "none"
            raise ValueError(f"No branch {branch_id!r} in this run. Branches: {known}")
        return branch

    # --- the training thread ---------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return any(branch.status.state == "running" for branch in self._branches.values())

    def waiting_steps(self) -> list[int]:
        """Fork steps asked for in the parent's future (its chunks end exactly there)."""
        return [b.at_step for b in self._branches.values() if b.status.state == "waiting" and b.at_step is not None]

    def busy(self, parent_step: int) -> bool:
        """Whether branches still need the thread (running, or waiting for a step already reached)."""
        return self.active or any(
            b.status.state == "waiting" and (b.at_step is None or b.at_step <= parent_step)
            for b in self._branches.values()
        )

    def take_snapshot(self, state: TrainingState) -> None:
        if self.ring.due(state.step):
            started = time.perf_counter()
            snapshot = state.snapshot()
            self.ring.add(snapshot)
            self.snapshot_steps, self.snapshot_nbytes = self.ring.steps(), self.ring.nbytes()
            if self.on_snapshot is not None:
                self.on_snapshot(snapshot)  # e.g. a snapshot file (training/runs/snapshot_files.py)
            self.snapshot_seconds += time.perf_counter() - started

    def launch_due(self, state: TrainingState, new_store: Callable[[], MetricsStore], open_writer: Callable[[BranchStatus, dict], Any],
                   parent_max_steps: int | None = None) -> list[BranchStatus]:  # fmt: skip
        """Start every waiting branch whose fork step is here or kept; returns the started ones.
        Leaves the parent's state in the variables. A branch without `steps` of a bounded parent
        ends where the parent ends (found by probing: it trained on, unpaced, and the parent,
        finished, showed as running until stopped)."""
        started = []
        for branch in list(self._branches.values()):
            if branch.status.state != "waiting" or (branch.at_step is not None and branch.at_step > state.step):
                continue
            if self.refusal is not None:  # asked for before the run was built and found out
                self._set(branch, state="failed", error=self.refusal)
                continue
            try:
                source = state.snapshot() if branch.at_step in (None, state.step) else self.ring.get(branch.at_step)
            except ValueError as error:
                self._set(branch, state="failed", error=str(error))
                continue
            parent = state.snapshot()
            try:
                state.restore(source)
                engine = state.engine
                for command in branch.settings.commands(engine.policy):
                    apply_command(engine, command, state.variables, optimizer=state.optimizer, structural_changes=False)
                if branch.settings.data_seed is not None:
                    state.data_seed.assign(branch.settings.data_seed)
                branch.values = state.snapshot()
                learning_rate = None if state.optimizer is None else _as_typed(state.optimizer.learning_rate.numpy())
                data_seed = None if state.data_seed is None else int(state.data_seed.numpy())
            except Exception as error:  # a refused override fails this branch only
                self._set(branch, state="failed", error=f"{type(error).__name__}: {error}")
                continue
            finally:
                state.restore(parent)
            fork_step = int(source["step"])
            status = replace(
                branch.status, fork_step=fork_step, step=fork_step, state="running",
                # the values as asked for (the variables hold their float32 roundings)
                clip_threshold=branch.settings.clip_threshold or _as_typed(branch.values["knob_values"][KNOB["clip_threshold"]]),
                policy=branch.values["policy"], learning_rate=branch.settings.learning_rate or learning_rate,
                data_seed=data_seed,
                max_steps=(fork_step + branch.steps if branch.steps is not None
                           else None if parent_max_steps is None else max(fork_step, parent_max_steps)),
            )  # fmt: skip
            branch.store = new_store()
            branch.store.record_event(fork_step, "fork", None, status.label)
            branch.writer = open_writer(status, branch.values["policy_params"])
            if branch.writer is not None:
                status = replace(status, run_id=branch.writer.run_id)
            self._set(branch, **{name: getattr(status, name) for name in status.__dataclass_fields__})
            started.append(branch.status)
        return started

    def run_round(self, state: TrainingState, run_chunk: Callable[[int, int], tuple[dict, int, float]],
                  chunk_steps: int, policy_codes: Callable[[str], int]) -> None:  # fmt: skip
        """One chunk of every running branch; the parent's state is back in the variables after."""
        with self._lock:
            discards, self._discard = self._discard, set()
        for branch_id in discards:
            branch = self._branches[branch_id]
            if branch.status.state in LIVE_BRANCH_STATES:
                self._finish(branch, "discarded")
        running = [branch for branch in self._branches.values() if branch.status.state == "running"]
        if not running:
            return
        parent = state.snapshot()
        try:
            for branch in running:
                self._run_branch_chunk(branch, state, run_chunk, chunk_steps, policy_codes)
        finally:
            state.restore(parent)

    def take_adoption(self) -> tuple[BranchStatus, dict] | None:
        """The next branch to adopt, with its state (ended, as 'adopted'), or None."""
        with self._lock:
            branch_id = self._adopt.pop(0) if self._adopt else None
        if branch_id is None:
            return None
        branch = self._branches[branch_id]
        if branch.values is None or branch.status.state not in ("running", "finished"):
            return None
        values = branch.values
        self._finish(branch, "adopted")
        return branch.status, values

    def invalidate(self, reason: str) -> None:
        """The compiled step was rebuilt with other variables: no kept state fits it any more."""
        self.ring = SnapshotRing(self.ring.every, self.ring.kept)
        self.snapshot_steps, self.snapshot_nbytes = (), 0
        for branch in self._branches.values():
            if branch.status.state in LIVE_BRANCH_STATES:
                self._finish(branch, "failed", f"Ended: {reason}, so its state no longer fits the compiled step.")

    def close(self, final_state: str = "stopped") -> None:
        """The parent ended: its branches end too (a waiting one never starts), and later
        requests are refused."""
        with self._lock:
            self.ended = final_state
        for branch in self._branches.values():
            if branch.status.state in LIVE_BRANCH_STATES:
                self._finish(branch, "discarded" if branch.status.state == "running" else "failed",
                             None if branch.status.state == "running" else "the parent run ended first")  # fmt: skip

    def _run_branch_chunk(self, branch: _Branch, state, run_chunk, chunk_steps: int, policy_codes) -> None:
        step = branch.status.step
        steps = chunk_steps if branch.status.max_steps is None else min(chunk_steps, branch.status.max_steps - step)
        state.restore(branch.values)
        out, steps_run, seconds = run_chunk(steps, step)
        engine = state.engine
        rows = chunk_rows(out, step, steps_run, _now(), seconds, branch.status.learning_rate or 0.0,
                          policy_codes(engine.policy))  # fmt: skip
        branch.store.append(rows)
        if branch.writer is not None:
            branch.writer.append(rows)
        if engine.knob_values[KNOB["spike"]] != 1.0:
            engine.set_knob("spike", 1.0)  # a spike hits one step (none is sent to a branch yet)
        state.step = step + steps_run
        branch.values = state.snapshot()
        self._set(branch, step=step + steps_run)
        if steps_run < steps:
            self._finish(branch, "failed", "Stopped at the limit of consecutive non-finite steps.")
        elif branch.status.max_steps is not None and branch.status.step >= branch.status.max_steps:
            self._finish(branch, "finished")

    def _finish(self, branch: _Branch, state: str, error: str | None = None) -> None:
        if branch.store is not None:
            branch.store.record_event(max(branch.status.step, 0), state, None, error)
        if branch.writer is not None:
            branch.writer.finish("failed" if state == "failed" else "stopped", error)
        self._set(branch, state=state, error=error)

    def _set(self, branch: _Branch, **changes: Any) -> None:
        with self._lock:
            branch.status = replace(branch.status, **changes)


def _now() -> float:
    return time.time()


def _as_typed(value) -> float:
    """A float32 variable's value as a person typed it (0.05, not 0.05000000074505806): the
    shortest decimal that rounds to the same float32."""
    return float(str(np.float32(value)))
