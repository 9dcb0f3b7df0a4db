"""Lineage on the History and Compare tabs (issue #21), with AppTest on a real recorded sweep.

A real Trainer trains the seed task into the test's database and sweeps two thresholds from step
200 (four branches: two thresholds, the baseline and the noise branch, each a run with
`parent_run_id` and `fork_step`). History lists the branches under their run with "Forked from",
the run's page names its branches, and "Compare with its branches" picks the family on Compare,
which draws it from the fork step (a toggle), coloured by run.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest
from support import wait_until
from test_history_app import APP, RUN_TIMEOUT, manager, open_tab, record_run, texts  # noqa: F401

from dashboard import lineage
from training import Trainer

FORK_STEP = 200


def record_sweep(database) -> tuple[int, list[int]]:
    trainer = Trainer(task="seed", max_steps=FORK_STEP, database=database, run_name="parent", snapshot_every=100)
    trainer.sweep([0.05, 1.0], steps=60, at_step=FORK_STEP)
    trainer.start()
    try:
        wait_until(lambda: trainer.status.state != "running", timeout=RUN_TIMEOUT, what="the run and its sweep")
        parent = trainer.status.run_id
        def family_recorded():
            runs = database.list_runs()
            family = runs[(runs.run_id == parent) | (runs.parent_run_id == parent)]
            return len(family) == 5 and set(family.state) <= {"stopped", "finished"}

        wait_until(family_recorded, timeout=RUN_TIMEOUT, what="the parent and its four branches recorded")
    finally:
        trainer.stop(timeout=120)
    runs = database.list_runs()
    branches = sorted(int(run_id) for run_id in runs.run_id[runs.parent_run_id == parent])
    return parent, branches


def chart_steps(at: AppTest) -> list[int]:
    """Every step value in the datasets of the drawn charts (sent beside each spec as Arrow)."""
    steps = []
    for chart in at.get("vega_lite_chart"):
        for dataset in chart.proto.datasets:
            frame = pa.ipc.open_stream(dataset.data.data).read_pandas()
            if "step" in frame:
                steps += frame["step"].dropna().astype(int).tolist()
    return steps


def test_history_lists_branches_under_their_run_and_compare_draws_them_from_the_fork_step(manager):
    database = manager.database
    other = record_run(database, "an older run", steps=100)
    parent, branches = record_sweep(database)
    assert len(branches) == 4 and other < parent < min(branches)

    at = open_tab(AppTest.from_file(APP, default_timeout=90).run(), "History")
    assert not at.exception, at.exception
    listed = at.dataframe[0].value
    assert listed["Id"].tolist() == [parent, *branches, other]  # the branches right under their run
    assert listed["Forked from"].tolist() == ["", *[f"#{parent} at step {FORK_STEP}"] * 4, ""]
    assert all(name.startswith(lineage.BRANCH_MARK) for name in listed["Name"][1:5])
    assert at.selectbox[0].value == parent
    line = next(text for text in texts(at.caption) if text.startswith("Branches:"))
    assert line == f"Branches: {', '.join(f'#{branch}' for branch in branches)}."

    at.selectbox[0].set_value(branches[0]).run()
    assert any(text.startswith(f"Forked from #{parent} at step {FORK_STEP}") for text in texts(at.caption))

    at.selectbox[0].set_value(parent).run()
    at.button(key=f"history.compare_branches.{parent}").click().run()
    assert not at.exception, at.exception
    assert any("are picked on the Compare tab" in text for text in texts(at.success))

    open_tab(at, "Compare")
    assert not at.exception, at.exception
    assert at.multiselect[0].value == [parent, *branches]
    from_fork = next(toggle for toggle in at.toggle if toggle.label == "From the fork step")
    assert from_fork.value is True
    drawn = chart_steps(at)
    assert drawn and min(drawn) > FORK_STEP  # before the fork they are one run
    from_fork.set_value(False).run()
    assert min(chart_steps(at)) <= 10  # the parent from its first steps


@pytest.mark.parametrize("picked", ["unrelated", "none"])
def test_compare_offers_from_the_fork_step_only_for_a_run_with_its_branch(manager, picked):
    database = manager.database
    first = record_run(database, "first", steps=100)
    second = record_run(database, "second", steps=100)
    at = open_tab(AppTest.from_file(APP, default_timeout=90).run(), "Compare")
    if picked == "unrelated":
        at.multiselect[0].select(first).select(second).run()
        assert at.get("vega_lite_chart")
    assert not at.exception, at.exception
    assert "From the fork step" not in [toggle.label for toggle in at.toggle]
