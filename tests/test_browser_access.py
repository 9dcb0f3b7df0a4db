"""In a real browser, with an operator key: viewers watch, one tab unlocks and steers.

A server started with CLIPWATCH_OPERATOR_KEY; two tabs are two sessions. The viewer tab sees
the run the operator starts, with every control disabled; the key typed into the operator's
tab unlocks that tab only; five wrong keys lock the viewer tab out; the key never appears in
either page.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from support import wait_until
from test_browser import browser, metric, stale_elements  # noqa: F401 (a fixture)

from benchmarks.browser import VIEWPORT, streamlit_server

KEY = "a browser-test key"
VIEW_ONLY_NOTE = "View only: enter the operator key in the sidebar to steer this run."
STEERING_BUTTONS = ("Start", "Stop", "Pause", "Resume", "Inject spike")
STEERING_INPUTS = ("Clip threshold", "Learning rate")


def settled(page) -> bool:
    """The page's script run is over: no "Running..." indicator, no element waiting for it."""
    return page.get_by_test_id("stStatusWidget").count() == 0 and stale_elements(page) == 0


@pytest.fixture(scope="module")
def keyed_server():
    with streamlit_server(environment={"CLIPWATCH_OPERATOR_KEY": KEY}) as server:
        yield server.url


def test_viewers_watch_and_only_the_unlocked_tab_steers(keyed_server, browser):  # noqa: F811
    context = browser.new_context(viewport=VIEWPORT)
    viewer = context.new_page()
    viewer.goto(keyed_server)
    expect(viewer.get_by_role("heading", name="Clipwatch")).to_be_visible(timeout=60_000)
    expect(viewer.get_by_text(VIEW_ONLY_NOTE)).to_be_visible(timeout=30_000)
    for label in STEERING_BUTTONS:
        expect(viewer.get_by_role("button", name=label, exact=True)).to_be_disabled()
    for label in STEERING_INPUTS:
        expect(viewer.get_by_role("textbox", name=label, exact=True)).to_be_disabled()

    operator = context.new_page()
    operator.goto(keyed_server)
    key_field = operator.get_by_label("Operator key")
    key_field.fill(KEY)
    key_field.press("Enter")
    expect(operator.get_by_text("Operator: this session steers the run.").first).to_be_visible(timeout=30_000)
    start = operator.get_by_role("button", name="Start", exact=True)
    expect(start).to_be_enabled(timeout=30_000)
    # A click while the unlocking rerun still runs is dropped by Streamlit (callbacks see the
    # widgets of the last finished run, where Start was disabled): wait for it to finish.
    wait_until(lambda: settled(operator), timeout=30, what="the unlocked page to finish its run")
    start.click()
    expect(metric(operator, "State")).to_have_text("Running", timeout=60_000)

    # The viewer, open since before the run, picks it up and still cannot touch it.
    expect(metric(viewer, "State")).to_have_text("Running", timeout=60_000)
    expect(viewer.get_by_role("button", name="Stop", exact=True)).to_be_disabled()
    expect(viewer.get_by_role("textbox", name="Clip threshold", exact=True)).to_be_disabled()
    expect(operator.get_by_role("button", name="Stop", exact=True)).to_be_enabled()

    # Five wrong keys lock the viewer's tab out; the operator's tab is not affected.
    for attempt in range(5):
        field = viewer.get_by_label("Operator key")
        field.fill(f"wrong key {attempt}")
        field.press("Enter")
        expect(field).to_have_value("", timeout=30_000)  # emptied after every try
    expect(viewer.get_by_text("is locked out for")).to_be_visible(timeout=30_000)
    field = viewer.get_by_label("Operator key")
    field.fill(KEY)
    field.press("Enter")
    expect(field).to_have_value("", timeout=30_000)  # what was typed is not kept either
    expect(viewer.get_by_text("locked out for")).to_be_visible(timeout=30_000)
    expect(viewer.get_by_role("button", name="Stop", exact=True)).to_be_disabled()

    assert KEY not in viewer.content() and KEY not in operator.content()
    operator.get_by_role("button", name="Stop", exact=True).click()
    expect(metric(operator, "State")).to_have_text("Stopped", timeout=30_000)
    context.close()
