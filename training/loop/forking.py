"""How a `Trainer` is forked from any thread: branches and threshold sweeps from a snapshot.

Every request is checked where it enters (naming the value received) and handed to the training
thread, which starts the branch at its fork step (training/loop/branches.py). A branch shares
the parent's compiled step, so it may change what is a variable there: the clip threshold, the
policy in force and its live parameters, the learning rate, the batch order.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Iterable

import numpy as np

from ..clipping import policies
from ..clipping.commands import apply_command, check_command
from ..runs.snapshot_files import refuse_another_runs_files, write_snapshot
from ..runs.store import MetricsStore
from .branches import LIVE_BRANCH_STATES, BranchSettings, BranchStatus, validate_branch_policy_params
from .config import MAX_SEED, validate_count, validate_learning_rate
from .sweeps import DEFAULT_SWEEP_STEPS, conclude, default_sweep_thresholds, summarize_branch, tail_mean, validate_sweep_thresholds


class RunForking:
    """The forking half of `Trainer` (a mixin: the trainer owns `_forks`, `_config`, `_status`)."""

    def fork(self, at_step: int | None = None, *, clip_threshold: Any = None, policy: str | None = None,
             learning_rate: Any = None, steps: int | None = None, **policy_params: Any) -> int:  # fmt: skip
        """Start a branch from the snapshot at `at_step` (None: the parent's step when the training
        thread takes the request; a later step: when the parent reaches it) with these overrides,
        for `steps` steps (None: until discarded or adopted). Returns the branch's id."""
        settings = self._branch_settings(clip_threshold, policy, learning_rate, policy_params)
        at_step = self._checked_fork_step(at_step)
        steps = None if steps is None else validate_count("steps", steps)
        return self._forks.request(settings, at_step, steps, _label(settings))

    def sweep(self, thresholds: Iterable | None = None, steps: int = DEFAULT_SWEEP_STEPS, at_step: int | None = None) -> int:
        """Train one branch per threshold for `steps` steps from one snapshot on the parent's
        batches, plus the parent's settings on the same batches (the baseline) and on another
        batch order (the noise branch). Returns the sweep's id (`sweep_result`)."""
        if thresholds is None:
            store = self._store
            recent = [] if store is None else store.metrics(last=2000).grad_norm.to_numpy()
            thresholds = default_sweep_thresholds(self._config.clip_threshold, recent)
        thresholds = validate_sweep_thresholds(thresholds)
        self._forks.request_allowed("sweep")  # an ended run: refused before any branch is queued
        policies.refuse_a_threshold_sweep(self._config.policy)
        steps = validate_count("steps", steps)
        at_step = self._checked_fork_step(at_step)
        noise_seed = (self._config.seed + 1) % (MAX_SEED + 1)
        branches = [(BranchSettings(clip_threshold=threshold), f"clip {threshold:g}", "threshold") for threshold in thresholds]
        branches += [(BranchSettings(), "baseline (the run's settings)", "baseline"),
                     (BranchSettings(data_seed=noise_seed), f"noise (the run's settings, batch order {noise_seed})", "noise")]  # fmt: skip
        return self._forks.request_sweep(branches, at_step, steps)

    def discard(self, branch_id: int) -> None:
        self._forks.discard(branch_id)
        self._wake.set()

    def adopt(self, branch_id: int) -> None:
        """The parent continues from the branch's state and settings (recorded as an event)."""
        self._forks.adopt(branch_id)
        self._wake.set()

    def branches(self) -> list[BranchStatus]:
        return self._forks.statuses()

    def branch_metrics(self, branch_id: int, since: int | None = None):
        return self._forks.metrics(branch_id, since)

    def branch_events(self, branch_id: int):
        return self._forks.events(branch_id)

    @property
    def snapshot_steps(self) -> tuple[int, ...]:
        """The steps of the snapshots kept now (a branch can fork from any of them)."""
        return self._forks.snapshot_steps

    @property
    def snapshot_bytes(self) -> int:
        """The kept snapshots' size in bytes (model and optimizer size times their number)."""
        return self._forks.snapshot_nbytes

    @property
    def snapshot_seconds(self) -> float:
        """Seconds the training thread has spent taking snapshots (and writing snapshot files):
        their cost, measured where it is paid rather than read off a noisy step rate."""
        return self._forks.snapshot_seconds

    @property
    def fork_refusal(self) -> str | None:
        """Why this run cannot fork (None: it can), known once the run is built."""
        return self._forks.refusal

    def sweep_result(self, sweep_id: int) -> dict:
        """The sweep's table so far: `done`, `progress` (0-1), and per threshold `clip_threshold,
        branch_id, run_id, final_loss, mean_loss, clip_rate, within_noise`, with
        `best_clip_threshold` and `noise_floor` (the baseline-noise spread of mean losses)."""
        members = [status for status in self._forks.statuses() if status.sweep_id == sweep_id]
        if not members:
            raise ValueError(f"No sweep {sweep_id!r} in this run.")
        rows, means, progress = [], {}, []
        for status in members:
            frame = self._forks.metrics(status.branch_id)
            if status.state == "waiting":
                progress.append(0.0)
            elif status.max_steps is not None and status.max_steps > status.fork_step:
                progress.append(len(frame) / (status.max_steps - status.fork_step))
            if status.role == "threshold":
                rows.append(summarize_branch(status.clip_threshold, frame.loss.to_numpy(), frame.clipped.to_numpy(),
                                             status.run_id, status.branch_id))  # fmt: skip
            else:
                means[status.role] = tail_mean(frame.loss.to_numpy())
        done = all(status.state not in LIVE_BRANCH_STATES for status in members)
        result = conclude(sorted(rows, key=lambda row: row["clip_threshold"]), means.get("baseline", float("nan")),
                          means.get("noise", float("nan")))  # fmt: skip
        fork_steps = {status.fork_step for status in members}
        return {"sweep_id": sweep_id, "done": done, "progress": min(progress, default=0.0),
                "fork_step": min(fork_steps), **result}  # fmt: skip

    def wait_for_branches(self, timeout: float = 300.0) -> bool:
        """Wait until no branch is waiting or running (True), or `timeout` seconds (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(status.state not in LIVE_BRANCH_STATES for status in self._forks.statuses()):
                return True
            time.sleep(0.02)
        return False

    def _branch_settings(self, clip_threshold, policy, learning_rate, policy_params) -> BranchSettings:
        config = self._config
        name = config.policy if policy is None else policies.validate_policy_name(policy)
        params = validate_branch_policy_params(name, dict(policy_params), config.policy_params[name])
        return BranchSettings(
            clip_threshold=None if clip_threshold is None else policies.validate_clip_threshold(clip_threshold),
            policy=policy,
            policy_params=params,
            learning_rate=None if learning_rate is None else validate_learning_rate(learning_rate),
        )

    def _checked_fork_step(self, at_step: Any) -> int | None:
        if at_step is None:
            return None
        at_step = validate_count("at_step", at_step, minimum=0)
        max_steps = self._config.max_steps
        if max_steps is not None and at_step > max_steps:  # it was taken, and failed when the run ended
            raise ValueError(f"at_step={at_step} is past the run's last step (max_steps={max_steps}). Received: at_step={at_step}")
        kept = self._forks.snapshot_steps
        if at_step < self._status.step and at_step not in kept:
            raise ValueError(
                f"No snapshot is kept at step {at_step}. Kept: {', '.join(map(str, kept)) or 'none yet'} "
                f"(one per {self._forks.ring.every} steps, the last {self._forks.ring.kept})."
            )
        return at_step


def start_from_lineage(start_from: "tuple[dict, int] | None") -> tuple[int | None, int | None]:
    """(parent run id, fork step) of a trainer started from a snapshot; (None, None) otherwise."""
    if start_from is None:
        return None, None
    snapshot, parent_run_id = start_from
    return int(parent_run_id), int(snapshot["step"])


class ForkDriving:
    """The training thread's half of forking (a mixin of `Trainer`, called from its loop)."""

    @staticmethod
    def _checked_persisting(folder: Any, every: Any) -> tuple[str, int] | None:
        if folder is None and every is None:
            return None
        if folder is None or every is None:
            raise ValueError(
                "Snapshot files need both a folder and a cadence. Received: "
                f"snapshot_folder={folder!r}, persist_every={every!r}"
            )
        return str(folder), validate_count("persist_every", every)

    def _prepare_forking(self) -> None:
        """On the training thread, once the state is built: start from a snapshot if asked
        (then re-apply this run's own settings over the snapshot's knobs: a fork's overrides must
        win over the state it restores), and write snapshot files if asked."""
        state, config = self._state, self._config
        if self._start_from is not None:
            snapshot, _ = self._start_from
            state.restore(snapshot)
            self._steps_done = state.step
            engine = state.engine
            params = {key: value for key, value in config.policy_params[config.policy].items()
                      if policies.POLICY_PARAMETERS[config.policy][key].live}  # fmt: skip
            for command in (check_command("policy", config.policy, params), check_command("clip_threshold", config.clip_threshold),
                            check_command("learning_rate", config.learning_rate)):  # fmt: skip
                apply_command(engine, command, state.variables, optimizer=state.optimizer, structural_changes=False)
        if self._persisting is not None and self._writer is not None:
            folder, every = self._persisting
            run_id, kept = self._writer.run_id, self._forks.ring.kept
            # The run's identity in every file: a fork from the file checks it is this run's
            # (a run 1 of another database in the same folder is not).
            created_at = self._database.run_info(run_id)["created_at"]
            refuse_another_runs_files(folder, run_id)  # this run's own files only are overwritten and pruned
            last = {"bucket": None}

            def persist(snapshot: dict) -> None:
                bucket = snapshot["step"] // every
                if last["bucket"] != bucket:
                    last["bucket"] = bucket
                    # The learning rate in force (the file's header), so a fork from the file
                    # starts with it, not with the run's first one (it may have been changed).
                    learning_rate = float(np.asarray(state.optimizer.learning_rate))
                    identity = {"learning_rate": learning_rate, "run_created_at": created_at}
                    write_snapshot(folder, run_id, {**snapshot, **identity}, kept)

            self._forks.on_snapshot = persist

    def _run_branches(self, chunk_steps: int) -> None:
        """Start the branches due, then one chunk of each (they share the full step: it holds
        every policy, where the quick step holds only the parent's)."""
        state = self._state
        self._steps.finish_compiling(self._steps_done)
        launched = self._forks.launch_due(state, self._new_branch_store, self._open_branch_writer, self._config.max_steps)
        for started in launched:
            self._record("fork", None, f"branch {started.branch_id} from step {started.fork_step}: {started.label}")
        policy_names = state.engine.policy_names

        def run_chunk(steps: int, first_step: int):
            started = time.perf_counter()
            out = self._steps(steps, first_step)
            return out, int(out.pop("steps_run")), time.perf_counter() - started

        self._forks.run_round(state, run_chunk, max(1, chunk_steps), policy_names.index)

    def _open_branch_writer(self, status: BranchStatus, policy_params: dict):
        """A recorded parent's branch is a run of its own, with its lineage (None: not recorded).
        Its config is the branch's own: its policy parameters and its batch order (`seed`; found
        by probing: a branch at percentile 90 was recorded with the parent's 10, and the noise
        branch with the parent's seed)."""
        parent = self._writer
        if parent is None:
            return None
        config = replace(self._config, clip_threshold=status.clip_threshold, policy=status.policy, policy_params=policy_params,
                         learning_rate=status.learning_rate or self._config.learning_rate, max_steps=status.max_steps,
                         seed=self._config.seed if status.data_seed is None else status.data_seed)  # fmt: skip
        name = f"run {parent.run_id} branch {status.branch_id}: {status.label}"
        return self._database.start_run(config, self._variable_names, name, self._state.engine.policy_names,
                                        parent_run_id=parent.run_id, fork_step=status.fork_step)  # fmt: skip

    def _new_branch_store(self) -> MetricsStore:
        return MetricsStore(self._variable_names, self._state.engine.policy_names, window=self._store_window)

    def _adopt_branches(self) -> None:
        """The parent continues from an adopted branch's state and settings (its own step count
        goes on: the steps it trained after the fork stay in its record)."""
        while (adopted := self._forks.take_adoption()) is not None:
            status, values = adopted
            state, config = self._state, self._config
            old = f"clip {config.clip_threshold:g}, {config.policy}, lr {config.learning_rate:g}"
            state.restore(values)
            state.step = self._steps_done
            engine = state.engine
            self._config = replace(
                config, clip_threshold=status.clip_threshold, policy=engine.policy, policy_params=engine.policy_params,
                learning_rate=config.learning_rate if status.learning_rate is None else status.learning_rate,
            )  # fmt: skip
            self._steps.policy_switched()
            self._record("adopt", old, f"branch {status.branch_id} at its step {status.step}: {status.label}")
            self._set_status(config=self._config)


def _label(settings: BranchSettings) -> str:
    parts = []
    if settings.policy is not None:
        parts.append(settings.policy)
    parts += [f"{key} {value:g}" for key, value in settings.policy_params.items()]
    if settings.clip_threshold is not None:
        parts.append(f"clip {settings.clip_threshold:g}")
    if settings.learning_rate is not None:
        parts.append(f"lr {settings.learning_rate:g}")
    return ", ".join(parts) or "the run's settings"
