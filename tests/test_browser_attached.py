"""In a real browser: a user's own script records a run in a subprocess, and the page opens it
as a live run. examples/attach_fit.py: a threshold typed on the page reaches the script, and the
script's acknowledgement and the new threshold show. examples/attach_fit_loop.py (a loop of
`fit(epochs=1, validation_data=...)`): the Live tab shows its validation loss and its recorded
metrics, and Stop ends the whole loop.

Uses the browser fixture of test_browser.py (Chromium from /usr/bin) and a server of its own
with a temporary runs folder. The script records into a database inside that folder (the page
may only open databases under its runs folder), and the page is pointed at it through its
Settings, as a user would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect
from support import wait_until
from test_browser import VIEWPORT, browser, metric  # noqa: F401  (fixtures)

from benchmarks.browser import streamlit_server

from training.persistence import RunDatabase

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server():
    with streamlit_server() as started:  # its runs folder is the temporary folder of its CLIPWATCH_DB
        yield started


def start_script(example: str, database: RunDatabase, folder: Path, *arguments: str) -> subprocess.Popen:
    """Run `examples/<example>` recording into `database`, with the run name "my script"."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / example), "--db", str(database.path), "--run-name", "my script",
         *arguments],
        cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_recording(script: subprocess.Popen, database: RunDatabase, ready=lambda run_id: True) -> int:
    """The script's run id, once it has recorded steps and `ready(run_id)` holds."""

    def recording():
        assert script.poll() is None, script.communicate()[1][-3000:]
        runs = database.list_runs()
        run_id = int(runs.run_id.iloc[0]) if len(runs) and runs.steps.iloc[0] > 0 else None
        return run_id if run_id is not None and ready(run_id) else None

    return wait_until(recording, timeout=120, what="the script's first recorded steps")


def open_attached_run(server, context, database: RunDatabase, run_id: int):
    """A page on `server` pointed at `database` (its Settings), showing run `run_id` in Live."""
    page = context.new_page()
    page.goto(server.url)
    expect(page.get_by_role("heading", name="Clipwatch")).to_be_visible(timeout=60_000)
    path_input = page.get_by_role("textbox", name="Database path")

    def settings_open() -> bool:
        """Open the Settings expander as a person would: click it until its path field shows.
        Once clicked while the page's first script run was still drawing (a loaded CI-like
        machine), the expander was drawn anew, closed, and the field never came (30 s timeout)."""
        if path_input.is_visible():
            return True
        page.get_by_text("Settings", exact=True).click()
        try:
            path_input.wait_for(state="visible", timeout=3_000)
        except PlaywrightTimeoutError:
            return False
        return True

    wait_until(settings_open, timeout=60, what="the Settings expander's Database path field")
    path_input.fill(str(database.path))
    path_input.press("Enter")

    selector = page.get_by_role("combobox", name="Live run")
    expect(selector).to_be_visible(timeout=30_000)
    selector.click()
    page.get_by_role("option", name=f"#{run_id} my script", exact=False).click()
    panel = page.locator(".st-key-attached_gradient_norm_panel [data-testid='stVegaLiteChart']")
    expect(panel).to_be_visible(timeout=30_000)
    return page


def test_an_attached_script_is_steered_from_the_page(server, browser, tmp_path):  # noqa: F811
    runs_folder = Path(server.log_path).parent
    database = RunDatabase(runs_folder / "attached.db")
    script = start_script("attach_fit.py", database, tmp_path, "--steps", "100000000")
    context = browser.new_context(viewport=VIEWPORT)
    try:
        run_id = wait_for_recording(script, database)
        page = open_attached_run(server, context, database, run_id)
        expect(metric(page, "Threshold")).to_have_text("1", timeout=30_000)

        threshold = page.locator(".st-key-attached_controls_panel").get_by_role(
            "spinbutton", name="Clip threshold", exact=True
        )
        threshold.fill("0.05")
        threshold.press("Enter")
        expect(page.get_by_text("applied by the script from step")).to_be_visible(timeout=30_000)
        expect(metric(page, "Threshold")).to_have_text("0.05", timeout=30_000)

        command = database.commands(run_id).iloc[-1]
        assert command.kind == "clip_threshold" and command.value == 0.05 and command.applied_step > 0
        wait_until(lambda: database.run_info(run_id)["steps"] > command.applied_step, timeout=30,
                   what="steps after the change")
        frame = database.metrics(run_id).set_index("step")
        assert (frame.loc[: command.applied_step - 1, "clip_threshold"] == 1.0).all()
        assert (frame.loc[command.applied_step :, "clip_threshold"] == np.float32(0.05)).all()
        page.locator(".st-key-attached_controls_panel").get_by_role("button", name="Stop").click()
        assert script.wait(timeout=60) == 0
        assert database.run_info(run_id)["state"] == "stopped"
    finally:
        context.close()
        script.kill()
        script.wait()


def test_an_attached_loop_of_fits_shows_its_validation_loss_and_stops_for_good(server, browser, tmp_path):  # noqa: F811
    runs_folder = Path(server.log_path).parent
    database = RunDatabase(runs_folder / "fit_loop.db")
    script = start_script("attach_fit_loop.py", database, tmp_path, "--steps", "100000000", "--steps-per-epoch", "100")
    context = browser.new_context(viewport=VIEWPORT)
    try:
        def has_validation(run_id):
            return (database.evaluations(run_id).name == "val_loss").any()

        run_id = wait_for_recording(script, database, ready=has_validation)  # its first epoch's logs
        page = open_attached_run(server, context, database, run_id)
        expect(metric(page, "Val loss")).to_have_text(re.compile(r"^[0-9.]+(e-?[0-9]+)?$"), timeout=30_000)
        shown = float(metric(page, "Val loss").inner_text())
        recorded = database.evaluations(run_id).query("name == 'val_loss'").value.to_numpy()
        assert any(f"{value:.4g}" == f"{shown:.4g}" for value in recorded), (shown, recorded)
        expect(page.locator(".st-key-attached_loss_panel").get_by_text("validation loss dashed red")).to_be_visible()
        metrics_panel = page.locator(".st-key-attached_metric_panel")
        expect(metrics_panel.get_by_text("accuracy", exact=True).first).to_be_visible(timeout=30_000)
        expect(metrics_panel.locator("[data-testid='stVegaLiteChart']")).to_be_visible()

        page.locator(".st-key-attached_controls_panel").get_by_role("button", name="Stop").click()
        expect(page.get_by_text("applied by the script from step")).to_be_visible(timeout=30_000)
        assert script.wait(timeout=60) == 0, script.stderr.read()[-3000:]  # the loop ended: no later fit
        assert database.run_info(run_id)["state"] == "stopped"
        assert len(database.list_runs()) == 1  # one run across every fit of the loop
        expect(page.get_by_text(f"Run #{run_id} has ended (stopped)")).to_be_visible(timeout=30_000)
    finally:
        context.close()
        script.kill()
        script.wait()
