"""Forks of a live run (issue #21): a branch from a snapshot trains on the parent's batches with the
parent's compiled step, so a branch with the parent's settings *is* the parent, step for step;
a branch at another threshold obeys its own; adopt, discard, sweeps, and the refusals."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from support import REPO, run_cli_in_process, wait_until

from dashboard import export, fork_charts
from training.policies import POLICY_NAMES

ENDED = ("stopped", "failed")


def finished(trainer, timeout=300):
    wait_until(lambda: trainer.status.state in ENDED, timeout=timeout, what="the run to end")
    assert trainer.status.state == "stopped", trainer.status.error


def parent_rows(trainer, first, last):
    metrics = trainer.metrics()
    return metrics[(metrics.step >= first) & (metrics.step <= last)].reset_index(drop=True)


@pytest.mark.parametrize(
    "task, policy",
    [("seed", policy) for policy in POLICY_NAMES] + [("digits", "zclip"), ("exploding_rnn", "global_norm")],
)
def test_a_branch_with_the_parents_settings_reproduces_the_parent(trainers, task, policy):
    """The test that proves a fork is a fork: from the snapshot at step 200 (Adam's slots and
    `iterations`, the policy's history, the data seed), every later step's loss and pre-clip norm
    equal the parent's (to 1e-5 relative; they are in fact the same bits)."""
    trainer = trainers(task=task, policy=policy, clip_threshold=0.5, max_steps=450, snapshot_every=100)
    branch = trainer.fork(at_step=200, steps=200)
    trainer.start()
    finished(trainer)
    status = trainer.branches()[0]
    assert (status.branch_id, status.state, status.fork_step, status.step) == (branch, "finished", 200, 400)
    ours, parent = trainer.branch_metrics(branch), parent_rows(trainer, 201, 400)
    assert ours.step.tolist() == list(range(201, 401))  # the parent's numbering, from fork_step + 1
    for column in ("loss", "grad_norm", "clipped_grad_norm", "clip_threshold"):
        np.testing.assert_allclose(ours[column], parent[column], rtol=1e-5, err_msg=column)
    assert (ours.clipped == parent.clipped).all() and (ours.finite == parent.finite).all()


def test_branches_at_other_thresholds_obey_their_own_and_leave_the_parent_alone(trainers):
    trainer = trainers(task="seed", clip_threshold=1.0, max_steps=600, snapshot_every=100)
    low, high = trainer.fork(at_step=100, steps=300, clip_threshold=0.05), trainer.fork(at_step=100, steps=300, clip_threshold=5.0)
    trainer.start()
    finished(trainer)
    for branch, threshold in ((low, 0.05), (high, 5.0)):
        rows = trainer.branch_metrics(branch)
        assert len(rows) == 300 and (rows.clip_threshold == np.float32(threshold)).all()
        assert (rows.clipped_grad_norm <= threshold * (1 + 1e-5)).all()
        assert rows.clipped.equals(rows.grad_norm > threshold)
    assert trainer.branch_metrics(low).clipped.mean() > 0.5  # the low threshold did clip
    assert (trainer.metrics().clip_threshold == 1.0).all()
    assert not np.array_equal(trainer.branch_metrics(low).loss, parent_rows(trainer, 101, 400).loss)


def test_a_branch_forks_from_a_kept_snapshot_in_the_past_while_the_parent_is_paused(trainers):
    trainer = trainers(task="seed", snapshot_every=100, snapshots_kept=4)
    trainer.start()
    # Four snapshots kept (under load a chunk can span a thousand steps: step 500 alone was seen
    # with three), and step 500, then pause.
    wait_until(lambda: trainer.status.step >= 500 and len(trainer.snapshot_steps) >= 4, what="step 500, four snapshots")
    trainer.pause()
    wait_until(lambda: trainer.status.state == "paused", what="the pause")
    kept = trainer.snapshot_steps
    assert len(kept) == 4 and trainer.snapshot_bytes > 0
    assert len({step // 100 for step in kept}) == 4  # one per hundred steps, at a chunk's end
    missing = next(step for step in range(1, 500) if step not in kept)
    with pytest.raises(ValueError, match=rf"No snapshot is kept at step {missing}\. Kept: {', '.join(map(str, kept))} "):
        trainer.fork(at_step=missing)
    branch = trainer.fork(at_step=kept[0], steps=50)
    assert trainer.wait_for_branches(120)
    paused_at = trainer.status.step
    assert trainer.status.state == "paused" and trainer.status.step == paused_at  # the branch ran alone
    np.testing.assert_array_equal(trainer.branch_metrics(branch).loss, parent_rows(trainer, kept[0] + 1, kept[0] + 50).loss)


def test_adopt_continues_the_parent_from_the_branch_and_discard_ends_one(trainers):
    trainer = trainers(task="seed", clip_threshold=1.0, snapshot_every=100)
    trainer.start()
    wait_until(lambda: trainer.status.step >= 200, what="step 200")
    kept, discarded = trainer.fork(clip_threshold=0.05, learning_rate=0.02), trainer.fork(clip_threshold=3.0)

    def branch(branch_id):
        return next(status for status in trainer.branches() if status.branch_id == branch_id)

    wait_until(lambda: all(branch(b).state == "running" and branch(b).step - branch(b).fork_step >= 100 for b in (kept, discarded)),
               what="both branches 100 steps in", state=trainer.branches)  # fmt: skip
    trainer.discard(discarded)
    wait_until(lambda: branch(discarded).state == "discarded", what="the discard")
    stopped_at = branch(discarded).step
    trainer.adopt(kept)
    wait_until(lambda: trainer.config.clip_threshold == 0.05, what="the adoption")
    adopted_at = trainer.status.step
    wait_until(lambda: trainer.status.step > adopted_at + 100, what="steps after the adoption")
    after = parent_rows(trainer, adopted_at + 1, adopted_at + 100)
    assert (after.clip_threshold == np.float32(0.05)).all() and (after.learning_rate == np.float32(0.02)).all()
    assert trainer.config.learning_rate == pytest.approx(0.02)
    events = trainer.events()
    adoption = events[events.kind == "adopt"]
    assert len(adoption) == 1 and f"branch {kept}" in adoption.new.iloc[0]
    assert branch(kept).state == "adopted" and branch(discarded).state == "discarded"
    assert branch(discarded).step == stopped_at  # it trains no more
    with pytest.raises(ValueError, match="is adopted; only a running or finished branch"):
        trainer.adopt(kept)


def test_a_sweep_trains_each_threshold_from_one_snapshot_and_measures_its_noise(trainers):
    trainer = trainers(task="seed", clip_threshold=1.0, max_steps=300, snapshot_every=100)
    sweep = trainer.sweep([0.02, 0.2, 2.0], steps=200, at_step=300)
    trainer.start()
    finished(trainer)
    result = trainer.sweep_result(sweep)
    assert result["done"] and result["progress"] == 1.0 and result["fork_step"] == 300
    assert [row["clip_threshold"] for row in result["sweep"]] == [0.02, 0.2, 2.0]
    assert result["best_clip_threshold"] in (0.02, 0.2, 2.0)
    assert np.isfinite(result["noise_floor"]) and result["noise_floor"] > 0
    roles = {status.role: status for status in trainer.branches()}
    assert roles["noise"].data_seed != trainer.config.seed and roles["baseline"].data_seed == trainer.config.seed
    for row in result["sweep"]:
        rows = trainer.branch_metrics(row["branch_id"])
        assert rows.step.tolist() == list(range(301, 501))
        assert row["mean_loss"] == pytest.approx(rows.loss.iloc[-50:].mean(), rel=1e-6)
        assert row["clip_rate"] == pytest.approx(rows.clipped.mean())
        assert (rows.clipped_grad_norm <= row["clip_threshold"] * (1 + 1e-5)).all()
    baseline = trainer.branch_metrics(roles["baseline"].branch_id)
    noise = trainer.branch_metrics(roles["noise"].branch_id)
    assert not np.array_equal(baseline.loss, noise.loss)  # another batch order
    gaps = {row["clip_threshold"]: abs(row["mean_loss"] - result["baseline_mean_loss"]) for row in result["sweep"]}
    assert all(row["within_noise"] == (gaps[row["clip_threshold"]] <= result["noise_floor"]) for row in result["sweep"])
    # The page's "Sweep table (CSV)" download reads back as the same table.
    table = pd.read_csv(io.BytesIO(export.sweep_csv(result)))
    assert tuple(table.columns) == export.SWEEP_COLUMNS
    assert table.clip_threshold.tolist() == [0.02, 0.2, 2.0] and (table.fork_step == 300).all()
    for column in ("branch_id", "final_loss", "mean_loss", "clip_rate", "within_noise"):
        assert table[column].tolist() == [row[column] for row in result["sweep"]], column
    assert table.best.tolist() == [row["clip_threshold"] == result["best_clip_threshold"] for row in result["sweep"]]
    assert (table.noise_floor == result["noise_floor"]).all()
    # ... and its "Loss by clip threshold" chart as PNG and SVG.
    chart = fork_charts.sweep_loss_chart(result)
    assert export.chart_png(chart).startswith(b"\x89PNG\r\n\x1a\n")
    assert "Clip threshold (log scale)" in export.chart_svg(chart)


def test_a_sweep_still_waiting_reads_as_a_table_of_its_thresholds_at_progress_zero(trainers):
    trainer = trainers(task="seed", clip_threshold=1.0, learning_rate=0.05, snapshot_every=100)
    sweep = trainer.sweep([0.1, 1.0], steps=100, at_step=10**9)  # a step the run never reaches
    result = trainer.sweep_result(sweep)
    assert not result["done"] and result["progress"] == 0.0
    assert [row["clip_threshold"] for row in result["sweep"]] == [0.1, 1.0]
    assert all(np.isnan(row["mean_loss"]) for row in result["sweep"])
    with pytest.raises(ValueError, match=r"sweep 1 is not finished \(done=False, 2 thresholds\)"):
        export.sweep_csv(result)
    # Found by probing: each sweep() queued ten more branches, all training at once (the page
    # offers one sweep at a time); a second is refused until the first's branches have ended.
    with pytest.raises(ValueError, match=r"Sweep 1 is still running \(4 of its branches left: 1, 2, 3, 4\); one sweep runs at a time"):
        trainer.sweep([0.2, 0.4], steps=100)
    branch = trainer.fork(clip_threshold=0.3)
    trainer.start()
    wait_until(lambda: trainer.branches()[-1].state == "running", what="the fork to start")
    status = trainer.branches()[-1]
    assert (status.branch_id, status.clip_threshold, status.learning_rate) == (branch, 0.3, 0.05)  # as typed
    for waiting in trainer.branches():
        if waiting.sweep_id == sweep:
            trainer.discard(waiting.branch_id)
    wait_until(lambda: all(b.state == "discarded" for b in trainer.branches() if b.sweep_id == sweep),
               what="the waiting sweep's branches discarded")  # fmt: skip
    # 0.2 and 0.2 + 1e-9 are one float32 threshold: one branch, not two training the same numbers.
    second = trainer.sweep([0.2, 0.2 + 1e-9], steps=10)
    assert second == 2
    assert [(b.role, b.clip_threshold) for b in trainer.branches() if b.sweep_id == second][0] == ("threshold", 0.2)
    assert [b.role for b in trainer.branches() if b.sweep_id == second] == ["threshold", "baseline", "noise"]


def test_a_branch_of_a_paced_run_keeps_the_parents_pace(trainers):
    """Both lines advance together: at 50 steps/s, a branch does not run ahead of its parent."""
    trainer = trainers(task="seed", snapshot_every=100)
    trainer.set_max_steps_per_second(50)
    trainer.start()
    wait_until(lambda: trainer.status.step >= 20, what="step 20")
    branch = trainer.fork(clip_threshold=0.1)
    wait_until(lambda: trainer.branches()[0].state == "running", what="the fork to start")
    fork_step = trainer.branches()[0].fork_step
    for target in (40, 80):
        wait_until(lambda: trainer.status.step >= fork_step + target, what=f"{target} parent steps past the fork")
        parent_ahead, branch_ahead = trainer.status.step - fork_step, trainer.branches()[0].step - fork_step
        assert abs(branch_ahead - parent_ahead) <= 10, (branch, parent_ahead, branch_ahead)


def test_a_streamed_plugin_is_refused_with_the_reason(trainers):
    trainer = trainers(task="seed", data="stream", max_steps=400)
    trainer.start()
    assert trainer.wait_until_ready()
    with pytest.raises(ValueError, match="Forking needs replayable data: task 'seed' streams a tf.data pipeline"):
        trainer.fork()
    early = trainers(task="seed", data="stream", max_steps=300)
    branch = early.fork(at_step=100)  # asked for before the run knew
    early.start()
    finished(early)
    status = early.branches()[0]
    assert status.branch_id == branch and status.state == "failed" and "replayable data" in status.error
    assert early.branch_metrics(branch).empty  # it never trained on other batches


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clip_threshold": 0}, "clip_threshold=0"),
        ({"learning_rate": -1}, "learning_rate=-1"),
        ({"policy": "clipall"}, "clipall"),
        ({"policy": "autoclip", "window": 10}, r"`window` of 'autoclip' sets the size of the compiled step"),
        ({"at_step": -3}, "at_step"),
        ({"steps": 0}, "steps"),
    ],
)
def test_bad_fork_settings_are_refused_naming_the_value_and_start_nothing(trainers, kwargs, message):
    trainer = trainers(task="seed", max_steps=100)
    with pytest.raises(ValueError, match=message):
        trainer.fork(**kwargs)
    assert trainer.branches() == []


def test_at_most_four_forks_run_at_once_and_an_unknown_branch_is_named(trainers):
    trainer = trainers(task="seed", max_steps=100)
    for _ in range(4):
        trainer.fork(at_step=50)
    with pytest.raises(ValueError, match="At most 4 branches run at once; 4 are running"):
        trainer.fork(at_step=50)
    with pytest.raises(ValueError, match="No branch 99 in this run"):
        trainer.discard(99)
    with pytest.raises(ValueError, match=r"A sweep takes 1 to 8 distinct thresholds\. Received: 9"):
        trainer.sweep([0.1 * (i + 1) for i in range(9)])


def test_an_ended_run_refuses_a_fork_a_sweep_and_an_adopt_naming_its_state(trainers):
    """Found by probing: asked of a finished or failed run, each was taken: the branches waited
    forever (wait_for_branches gave False) and an adopt of a finished branch did nothing."""
    done = trainers(task="seed", max_steps=300)
    branch = done.fork(at_step=100, steps=50, clip_threshold=0.5)
    done.start()
    finished(done)
    assert done.wait_for_branches(60)
    broken = trainers(task="exploding_rnn", policy="none", max_nonfinite_steps=5)
    broken.start()
    wait_until(lambda: broken.status.state in ENDED, timeout=300, what="the run to fail")
    assert broken.status.state == "failed"
    for trainer, state in ((done, "stopped"), (broken, "failed")):
        ended = f"The run is {state}: its training thread has ended, so it cannot"
        with pytest.raises(RuntimeError, match=f"{ended} fork"):
            trainer.fork(clip_threshold=1.0, steps=100)
        with pytest.raises(RuntimeError, match=f"{ended} sweep"):
            trainer.sweep([0.5, 1.0], steps=100)
        assert [status.state for status in trainer.branches()] == (["finished"] if trainer is done else [])
    with pytest.raises(RuntimeError, match="The run is stopped: .* cannot adopt a branch"):
        done.adopt(branch)


def test_an_open_ended_branch_of_a_bounded_run_ends_where_the_run_ends(trainers):
    """Found by probing: a branch without `steps` of a run with max_steps trained on, unpaced,
    after the run's last step, and the finished run showed as running until stopped."""
    trainer = trainers(task="seed", max_steps=3_000)
    branch = trainer.fork(at_step=1_000, clip_threshold=0.1)
    with pytest.raises(ValueError, match=r"at_step=3001 is past the run's last step \(max_steps=3000\)"):
        trainer.fork(at_step=3_001)  # found by probing too: taken, then failed when the run ended
    trainer.start()
    finished(trainer, timeout=120)
    [status] = trainer.branches()
    assert status.branch_id == branch and status.state == "finished" and status.fork_step == 1_000
    assert status.step == status.max_steps == 3_000
    assert trainer.branch_metrics(branch).step.tolist() == list(range(1_001, 3_001))


def test_a_recorded_branch_has_its_own_policy_parameters_and_batch_order(trainers, tmp_path):
    """Found by probing: a branch at percentile 90 was recorded with the parent's 10, and a
    sweep's noise branch (batch order seed + 1) with the parent's seed."""
    from training.persistence import RunDatabase

    database = RunDatabase(tmp_path / "runs.db")
    trainer = trainers(task="seed", policy="autoclip", percentile=10, seed=3, max_steps=1_000, database=database)
    trainer.fork(at_step=500, percentile=90, steps=100)
    trainer.start()
    finished(trainer)
    assert trainer.wait_for_branches(120)
    [branch] = trainer.branches()
    recorded = database.run_info(branch.run_id)["config"]
    assert recorded["policy_params"]["autoclip"]["percentile"] == 90 and recorded["seed"] == 3

    parent = trainers(task="seed", seed=3, max_steps=600, database=database)
    sweep = parent.sweep([0.5, 1.0], steps=50, at_step=300)
    parent.start()
    finished(parent)
    assert parent.wait_for_branches(120) and parent.sweep_result(sweep)["done"]
    seeds = {status.label.split(" ")[0]: database.run_info(status.run_id)["config"]["seed"] for status in parent.branches()}
    assert seeds == {"clip": 3, "baseline": 3, "noise": 4}


def test_the_cli_sweeps_thresholds_after_its_steps_and_records_each_branch_with_its_lineage(tmp_path):
    database = tmp_path / "runs.db"
    result = run_cli_in_process("--task", "seed", "--steps", "2000", "--sweep", "0.1,0.3,1,3", "--sweep-steps", "500",
                                "--db", str(database), cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2000
    assert [row["clip_threshold"] for row in summary["sweep"]] == [0.1, 0.3, 1.0, 3.0]
    assert all(set(row) == {"clip_threshold", "run_id", "final_loss", "mean_loss", "clip_rate"} for row in summary["sweep"])
    from training.persistence import RunDatabase

    recorded = RunDatabase(str(database))
    runs = recorded.list_runs().set_index("run_id")
    for row in summary["sweep"]:
        assert runs.loc[row["run_id"], "parent_run_id"] == summary["run_id"] and runs.loc[row["run_id"], "fork_step"] == 2000
        steps = recorded.metrics(row["run_id"])
        assert steps.step.tolist() == list(range(2001, 2501))  # the parent's numbering goes on
        assert steps.loss.iloc[-1] == pytest.approx(row["final_loss"])
    assert len(runs) == 1 + 4 + 2  # the parent, the thresholds, the baseline and the noise branch
    best = min(summary["sweep"], key=lambda row: row["mean_loss"])
    assert summary["best_clip_threshold"] == best["clip_threshold"]
    assert summary["noise_floor"] >= 0
    rates = [row["clip_rate"] for row in summary["sweep"]]
    assert rates == sorted(rates, reverse=True)  # a lower threshold clips at least as often


@pytest.mark.parametrize("value", ["0.1,x", "0,1", "", "1,2,3,4,5,6,7,8,9", "inf"])
def test_the_cli_refuses_a_bad_sweep_naming_it(value, capsys):
    from training.cli import prepare

    with pytest.raises(SystemExit) as exit_info:
        prepare(["--sweep", value, "--no-db"])
    assert exit_info.value.code == 2
    assert f"--sweep {value!r}" in capsys.readouterr().err


@pytest.mark.parametrize("policy", ["none", "autoclip", "agc"])
def test_a_threshold_sweep_under_a_policy_that_picks_its_own_is_refused(trainers, policy, capsys, tmp_path):
    """Found by probing: a sweep under autoclip (or none, agc) trained every branch alike, its
    rows were identical, and it still named a "best" threshold."""
    from training.cli import prepare

    with pytest.raises(SystemExit) as exit_info:
        prepare(["--policy", policy, "--sweep", "0.1,1", "--db", str(tmp_path / "runs.db")])
    assert exit_info.value.code == 2
    assert f"'{policy}' does not, so every branch would train alike" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before the database was made
    trainer = trainers(task="seed", policy=policy, max_steps=100)
    with pytest.raises(ValueError, match=f"A threshold sweep needs a policy that reads the clip threshold .*{policy!r}"):
        trainer.sweep([0.1, 1.0], steps=50)
    assert trainer.branches() == []


def test_the_cli_refuses_sweep_steps_without_a_sweep(capsys):
    from training.cli import prepare

    with pytest.raises(SystemExit):
        prepare(["--sweep-steps", "10", "--no-db"])
    assert "--sweep-steps needs --sweep (the thresholds). Received: --sweep-steps 10" in capsys.readouterr().err


def test_snapshots_keep_their_step_cadence_and_the_default_one_at_most_four_a_second():
    from training.loop.branches import SnapshotRing

    exact, bounded = SnapshotRing(every=100, kept=3), SnapshotRing(every=100, kept=3, min_seconds=3600)
    for ring in (exact, bounded):
        assert ring.due(0)
        ring.add({"step": 0, "values": []})
        assert not ring.due(99)
    assert exact.due(100) and not bounded.due(10_000)  # an hour has not passed


def test_a_default_run_at_full_speed_snapshots_every_2000_steps_at_most_four_times_a_second(trainers):
    """The default cadence: a snapshot per 2,000 steps, but none sooner than 0.25 s after the last
    (seed at full speed would take 30 a second, 4.4% of its training time)."""
    trainer = trainers(task="seed", max_steps=100_000, snapshots_kept=100)
    trainer.start()
    finished(trainer)
    kept, times = trainer.snapshot_steps, trainer.metrics().set_index("step")["time_s"]
    assert len(kept) >= 3 and all(later // 2000 > earlier // 2000 for earlier, later in zip(kept, kept[1:]))
    # A snapshot is taken after its chunk's last step is timed: 0.25 s apart, less a chunk's rounding.
    gaps = [times[later] - times[earlier] for earlier, later in zip(kept[1:], kept[2:])]
    assert all(gap > 0.2 for gap in gaps), gaps
    assert 0 < trainer.snapshot_seconds
