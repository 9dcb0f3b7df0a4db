"""Fork and sweep a live run in a real browser (issue #21): `streamlit run app.py` driven by Chromium.

Starts a run, presses "Fork from here" with a branch threshold and sees the branch named in the
legend of the loss and gradient-norm charts, then presses "Sweep thresholds" and sees the "Loss
by clip threshold" section with its charts drawn. Uses Debian's /usr/bin/chromium (never
`playwright install`); the server records into a temporary database and is killed after.
"""

from __future__ import annotations

import functools
import re

import pytest
from playwright.sync_api import Page, expect
from support import wait_until
from test_browser import metric, page_state, see_the_run_move

from benchmarks.browser import VIEWPORT, chromium, streamlit_server


@pytest.fixture(scope="module")
def server_url():
    with streamlit_server() as server:  # a temporary database; killed with its children after
        yield server.url


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def chart_svg(page: Page, panel: str) -> str:
    """What the chart in panel `panel` draws now (Vega renders SVG here; '' before it does)."""
    svg = page.locator(f".st-key-{panel} [data-testid='stVegaLiteChart'] svg").first
    return svg.inner_html() if svg.count() else ""


def type_in(page: Page, label: str, text: str) -> None:
    field = page.get_by_role("textbox", name=label, exact=True)
    field.fill(text)
    field.press("Enter")


def test_fork_and_sweep_a_live_run_in_the_browser(server_url, browser):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(server_url)
    expect(page.get_by_role("heading", name="Clipwatch")).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Start", exact=True).click()
    expect(metric(page, "State")).to_have_text("Running", timeout=30_000)
    see_the_run_move(page, first_step_seconds=180, move_seconds=20)
    state = functools.partial(page_state, page)

    # Fork: the branch is drawn on the parent's charts, its settings named in their legend.
    expect(page.get_by_text(re.compile("The run keeps training while its branches run"))).to_be_visible(timeout=30_000)
    type_in(page, "Branch clip threshold", "0.3")
    page.get_by_role("button", name=re.compile("Fork from here")).click()
    legend = re.compile(r"Branch 1 · clip 0\.3 · from step [\d,]+")
    for panel in ("loss_panel", "gradient_norm_panel", "clip_rate_panel"):
        wait_until(lambda: legend.search(chart_svg(page, panel)), timeout=60, what=f"the branch in the {panel} legend",
                   state=state)  # fmt: skip
    expect(page.get_by_role("button", name="Adopt")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("button", name="Discard")).to_be_visible(timeout=30_000)

    # Sweep: a progress bar, then the result section with its two charts drawn.
    thresholds = page.get_by_role("textbox", name="Thresholds to sweep", exact=True)
    expect(thresholds).not_to_have_value("", timeout=30_000)  # prefilled with the default thresholds
    type_in(page, "Thresholds to sweep", "0.3, 1, 3")
    type_in(page, "Steps per threshold", "100")
    page.get_by_role("button", name=re.compile("Sweep thresholds")).click()
    expect(page.get_by_role("heading", name="Loss by clip threshold", exact=True)).to_be_visible(timeout=180_000)
    result = page.locator(".st-key-sweep_result_panel [data-testid='stVegaLiteChart']")
    expect(result).to_have_count(2, timeout=30_000)
    wait_until(lambda: "Clip threshold (log scale)" in chart_svg(page, "sweep_result_panel"), timeout=30,
               what="the loss-by-threshold chart drawn", state=state)  # fmt: skip
    expect(page.get_by_role("button", name="Use this threshold")).to_have_count(3, timeout=30_000)

    # Stop between refreshes: a full rerun that lands during a timed fragment's rerun left, once
    # in three runs here, a second header for a while (two "State" cards).
    wait_until(lambda: page.locator("[data-stale='true']").count() == 0, timeout=30, what="a settled page", state=state)
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(metric(page, "State")).to_have_text("Stopped", timeout=20_000)
    context.close()
