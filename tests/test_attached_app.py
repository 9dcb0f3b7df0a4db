"""Headless tests (AppTest) of an attached run on the page: a run another process records.

The real-script test runs a small Keras script with `LiveClipping` in a subprocess (a loop of
`fit(epochs=1, validation_data=...)` with an accuracy metric and `predict` between the fits),
recording into this test's database; the page-only tests write runs through the run database's
own writer (`RunDatabase.start_run` / `RunWriter`), with the epoch logs a fit records as the
run's evaluations. A run written from this process is live while its writer writes (the
database sees this process alive) and attached (the page's manager did not start it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import streamlit as st
from hypothesis import given
from hypothesis import strategies
from streamlit.testing.v1 import AppTest

from dashboard import charts
from dashboard.run_manager import RunManager, get_run_manager
from support import wait_until
from training.persistence import RunDatabase
from training.policies import POLICY_NAMES
from training.store import STEP_COLUMNS
from training.trainer import RunConfig

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
SELECTED = "live.run"  # attached_view.SELECTED
EPOCH_LOGS = ("loss", "accuracy", "val_loss", "val_accuracy")  # what fit(metrics=["accuracy"]) logs


@pytest.fixture
def manager() -> RunManager:
    st.cache_resource.clear()  # a fresh shared manager, on this test's database
    manager = get_run_manager()
    yield manager
    manager.stop_all()
    st.cache_resource.clear()


def write_attached_run(database: RunDatabase, name: str, epochs: int = 3, steps_per_epoch: int = 50):
    """A live run as a script records it: steps, and each epoch's logs at its last step.

    Returns (writer, the epoch logs written as (step, name, value)); finish the writer to end it.
    """
    config = RunConfig(task="attached", policy="global_norm", clip_threshold=1.0, learning_rate=0.01,
                       batch_size=0, seed=0, policy_params={})  # fmt: skip
    writer = database.start_run(config, ["hidden/kernel"], name, POLICY_NAMES)
    steps = epochs * steps_per_epoch
    rng = np.random.default_rng(0)
    rows = {column: np.zeros(steps, dtype) for column, dtype in STEP_COLUMNS.items()}
    rows.update(
        step=np.arange(1, steps + 1), time_s=np.linspace(0.0, 1.0, steps), loss=np.linspace(1.0, 0.3, steps),
        grad_norm=rng.uniform(0.2, 2.0, steps), clip_threshold=np.ones(steps), finite=np.ones(steps, bool),
        learning_rate=np.full(steps, 0.01), layer_norms=rng.uniform(0.1, 1.0, (steps, 1)).astype(np.float32),
    )  # fmt: skip
    rows["clipped_grad_norm"] = np.minimum(rows["grad_norm"], 1.0)
    rows["clipped"] = rows["grad_norm"] > 1.0
    writer.append({column: np.asarray(values, STEP_COLUMNS.get(column)) for column, values in rows.items()})
    logs = [
        (epoch * steps_per_epoch, log, value)
        for epoch in range(1, epochs + 1)
        for log, value in zip(EPOCH_LOGS, (1.0 / epoch, 0.5 + 0.1 * epoch, 1.2 / epoch, 0.45 + 0.1 * epoch))
    ]
    writer.evaluations([(step, float(step), log, value) for step, log, value in logs])
    wait_until(lambda: len(database.evaluations(writer.run_id)) == len(logs), timeout=30, what="the run's rows committed")
    return writer, logs


def open_live_run(manager: RunManager, run_id: int) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90).run()
    assert not at.exception, at.exception
    at.selectbox(key=SELECTED).set_value(run_id).run()
    assert not at.exception, at.exception
    return at


def chart_specs(at: AppTest) -> list[dict]:
    """Every drawn chart's Vega-Lite spec, its datasets (sent beside it as Arrow) put back in."""
    specs = []
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        spec["datasets"] = {
            dataset.name: pa.ipc.open_stream(dataset.data.data).read_pandas().to_dict("records")
            for dataset in chart.proto.datasets
        }
        specs.append(spec)
    return specs


def datasets_with(spec: dict, field: str) -> list[list[dict]]:
    return [rows for rows in spec["datasets"].values() if rows and field in rows[0]]


def layers(spec: dict) -> list[dict]:
    """Every layer of `spec`, however deeply the layers nest."""
    found = []
    for layer in spec.get("layer", []):
        found += [layer, *layers(layer)]
    return found


def metric_value(at: AppTest, label: str) -> str:
    return next(metric.value for metric in at.metric if metric.label == label)


def errors(at: AppTest) -> list[str]:
    return [element.value for element in at.error]


@given(strategies.lists(strategies.sampled_from(["", "val_"]).flatmap(
    lambda prefix: strategies.text("val_os", min_size=1, max_size=8).map(lambda name: prefix + name)), max_size=12))
def test_the_metric_select_offers_every_recorded_metric_but_the_losses_each_before_its_validation(names):
    evaluations = pd.DataFrame({"step": range(len(names)), "time_s": 0.0, "name": names, "value": 1.0})
    offered = charts.metric_names(evaluations)
    assert sorted(offered) == sorted(set(names) - {"loss", "val_loss"})  # each once, the losses drawn already
    for name in offered:
        if f"val_{name}" in offered:
            assert offered.index(name) < offered.index(f"val_{name}")


def test_the_live_view_of_an_attached_run_draws_its_validation_loss_and_offers_its_metrics(manager):
    database = manager.database
    writer, logs = write_attached_run(database, "fit loop")
    try:
        at = open_live_run(manager, writer.run_id)
        val_losses = [(step, value) for step, log, value in logs if log == "val_loss"]
        assert metric_value(at, "Val loss") == f"{val_losses[-1][1]:.4g}"
        specs = chart_specs(at)
        drawn = [rows for spec in specs for rows in datasets_with(spec, "val_loss")]
        assert [[(row["step"], row["val_loss"]) for row in rows] for rows in drawn] == [val_losses]
        loss_chart = next(spec for spec in specs if datasets_with(spec, "val_loss"))
        assert [layer["mark"]["strokeDash"] for layer in layers(loss_chart)
                if layer.get("encoding", {}).get("y", {}).get("field") == "val_loss"] == [[5, 3]]  # dashed

        select = at.selectbox(key=f"attached.metric.{writer.run_id}")
        assert select.options == ["accuracy", "val_accuracy"]
        select.set_value("val_accuracy").run()
        assert not at.exception, at.exception
        metric_chart = next(spec for spec in chart_specs(at) if spec.get("encoding", {}).get("y", {}).get("title") == "val_accuracy")
        (rows,) = metric_chart["datasets"].values()
        assert [(row["step"], row["value"]) for row in rows] == [
            (step, pytest.approx(value)) for step, log, value in logs if log == "val_accuracy"
        ]
    finally:
        writer.finish("finished")


def test_history_and_compare_draw_the_validation_loss_and_offer_the_metrics(manager):
    database = manager.database
    writer, logs = write_attached_run(database, "fit loop")
    writer.finish("finished")
    at = AppTest.from_file(APP, default_timeout=90).run()
    at.session_state["section"] = "History"
    at.run()
    assert not at.exception, at.exception
    val_losses = [(step, value) for step, log, value in logs if log == "val_loss"]
    assert metric_value(at, "Val loss") == f"{val_losses[-1][1]:.4g}"
    assert [[(row["step"], row["val_loss"]) for row in rows] for spec in chart_specs(at)
            for rows in datasets_with(spec, "val_loss")] == [val_losses]  # fmt: skip
    select = at.selectbox(key=f"history.metric@{writer.run_id}")
    assert select.options == ["accuracy", "val_accuracy"] and select.value == "accuracy"
    accuracy_chart = next(spec for spec in chart_specs(at) if spec.get("encoding", {}).get("y", {}).get("title") == "accuracy")
    (rows,) = accuracy_chart["datasets"].values()
    assert [row["step"] for row in rows] == [50, 100, 150]

    at.session_state["section"] = "Compare"
    at.run()
    at.multiselect[0].set_value([writer.run_id]).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="compare.metric").options == ["accuracy", "val_accuracy"]
    assert [row["step"] for spec in chart_specs(at) for rows in datasets_with(spec, "val_loss") for row in rows] == [50, 100, 150]


def test_a_command_queued_just_before_the_run_ended_says_it_was_not_applied(manager):
    """Sent while the run was live, never taken by its script: the page says so, it never waits."""
    database = manager.database
    writer, _ = write_attached_run(database, "ends soon")
    run_id = writer.run_id
    at = open_live_run(manager, run_id)
    assert not errors(at)
    at.button(key=f"attached.pause.{run_id}").click().run()  # queued: no script reads it
    assert any("Pause: sent, waiting for the script" in info.value for info in at.info)
    writer.finish("finished")
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key=SELECTED).value == run_id  # still shown, with its final state
    assert metric_value(at, "State") == "Finished"
    assert f"Pause: not applied: run #{run_id} has ended (finished) before the script took it." in errors(at)
    assert not any("waiting for the script" in info.value for info in at.info)
    assert at.button(key=f"attached.stop.{run_id}").disabled


def test_the_acknowledgement_is_the_runs_latest_commands_whichever_page_sent_it(manager):
    """Nothing of it lives in the session: a second tab, or a page that lost its session, sees it."""
    database = manager.database
    writer, _ = write_attached_run(database, "steered elsewhere")
    run_id = writer.run_id
    at = open_live_run(manager, run_id)
    assert not at.success and not errors(at)  # no command yet: nothing to acknowledge
    assert not any("waiting for the script" in info.value for info in at.info)
    command_id = database.send_command(run_id, "clip_threshold", 0.05)  # another page's
    at.run()
    assert any("Clip threshold 0.05: sent, waiting for the script" in info.value for info in at.info)
    database.acknowledge_commands([(command_id, 151, database.command(command_id)["created"] + 0.25, None)])
    at.run()
    assert not at.exception, at.exception
    assert [message.value for message in at.success] == [
        "Clip threshold 0.05: applied by the script from step 151 (0.25 s after it was sent)"
    ]
    database.send_command(run_id, "policy", "autoclip")
    database.acknowledge_commands([(command_id + 1, None, None, "no such parameter here")])
    at.run()
    assert errors(at) == ["Policy autoclip: refused by the script: no such parameter here"]
    writer.finish("finished")


SCRIPT = textwrap.dedent(
    """
    import sys

    import keras
    import numpy as np

    from training.keras import LiveClipping

    keras.utils.set_random_seed(0)
    inputs = np.random.default_rng(0).uniform(-1, 1, (256, 2)).astype("float32")
    targets = (inputs.sum(axis=1) > 0).astype("float32")
    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    clipping = LiveClipping(clip_threshold=0.5, database=sys.argv[1], run_name="fit loop")
    model.compile(optimizer=clipping.wrap(keras.optimizers.Adam(1e-2)), loss="binary_crossentropy",
                  metrics=["accuracy"])
    for epoch in range(3):
        model.fit(inputs[:192], targets[:192], batch_size=32, epochs=1, verbose=0,
                  validation_data=(inputs[192:], targets[192:]), callbacks=[clipping.callback()])
        model.predict(inputs[:4], verbose=0)
    print("fitted", flush=True)
    sys.stdin.readline()  # the run stays open (and live) until the test lets the script end
    """
)


def test_a_real_fit_loop_is_drawn_with_its_validation_loss_and_refuses_commands_once_ended(manager, tmp_path):
    database = manager.database
    script_path = tmp_path / "fit_loop.py"
    script_path.write_text(SCRIPT)
    script = subprocess.Popen(
        [sys.executable, str(script_path), str(database.path)], cwd=tmp_path, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert script.stdout.readline().strip() == "fitted", script.communicate()[1][-3000:]
        runs = database.list_runs()
        assert len(runs) == 1, runs  # one run across the three fits
        run_id = int(runs.run_id.iloc[0])
        wait_until(lambda: len(database.evaluations(run_id).query("name == 'val_loss'")) == 3, timeout=30,
                   what="three epochs' val_loss committed")  # fmt: skip
        evaluations = database.evaluations(run_id)
        val_losses = evaluations[evaluations.name == "val_loss"]
        assert val_losses.step.tolist() == [6, 12, 18]  # 192 samples in batches of 32, per epoch

        at = open_live_run(manager, run_id)
        assert metric_value(at, "Val loss") == f"{val_losses.value.iloc[-1]:.4g}"
        drawn = [rows for spec in chart_specs(at) for rows in datasets_with(spec, "val_loss")]
        assert [[row["step"] for row in rows] for rows in drawn] == [[6, 12, 18]]
        select = at.selectbox(key=f"attached.metric.{run_id}")
        assert select.options == ["accuracy", "val_accuracy"]

        script.stdin.close()  # the script returns: its run closes, "finished"
        assert script.wait(timeout=60) == 0, script.stderr.read()[-3000:]
        assert database.run_info(run_id)["state"] == "finished"
        before = len(database.commands(run_id))
        # The page still shows the run as live (no rerun since): the threshold typed is sent.
        at.number_input(key=f"attached.clip_threshold.{run_id}.0").set_value(0.2).run()
        assert not at.exception, at.exception
        assert any("has ended" in message for message in errors(at)), errors(at)
        assert len(database.commands(run_id)) == before  # refused at once: nothing queued
        assert not any("waiting for the script" in info.value for info in at.info)
    finally:
        script.kill()
        script.wait()
