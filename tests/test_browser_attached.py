"""In a real browser: a user's own script (examples/attach_fit.py) records a run in a subprocess;
the page opens it as a live run, a threshold typed there reaches the script, and the script's
acknowledgement and the new threshold show on the page.

Uses the browser fixture of test_browser.py (Chromium from /usr/bin) and a server of its own
with a temporary runs folder. The script records into a database inside that folder (the page
may only open databases under its runs folder), and the page is pointed at it through its
Settings, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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


def test_an_attached_script_is_steered_from_the_page(server, browser, tmp_path):  # noqa: F811
    runs_folder = Path(server.log_path).parent
    database = RunDatabase(runs_folder / "attached.db")
    script = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "attach_fit.py"), "--steps", "100000000",
         "--db", str(database.path), "--run-name", "my script"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    context = browser.new_context(viewport=VIEWPORT)
    try:
        def recording():
            assert script.poll() is None, script.communicate()[1][-3000:]
            runs = database.list_runs()
            return int(runs.run_id.iloc[0]) if len(runs) and runs.steps.iloc[0] > 0 else None

        run_id = wait_until(recording, timeout=120, what="the script's first recorded steps")
        page = context.new_page()
        page.goto(server.url)
        expect(page.get_by_role("heading", name="Clipwatch")).to_be_visible(timeout=60_000)
        path_input = page.get_by_role("textbox", name="Database path")
        if not path_input.is_visible():
            page.get_by_text("Settings", exact=True).click()
        path_input.fill(str(database.path))
        path_input.press("Enter")

        selector = page.get_by_role("combobox", name="Live run")
        expect(selector).to_be_visible(timeout=30_000)
        selector.click()
        page.get_by_role("option", name=f"#{run_id} my script", exact=False).click()
        panel = page.locator(".st-key-attached_gradient_norm_panel [data-testid='stVegaLiteChart']")
        expect(panel).to_be_visible(timeout=30_000)
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
