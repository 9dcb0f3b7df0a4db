"""In a real browser, on a freshly started server: how long Start takes to show a first step,
and three tabs watching one run, each seeing it advance.

The first figure is printed, never asserted (speed is the benchmark's: `python -m benchmarks
--sections viewers` reports it against its target).
"""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect
from support import wait_until

from benchmarks.browser import chromium, counted_steps, open_page, streamlit_server


@pytest.fixture(scope="module")
def server():
    with streamlit_server() as fresh:
        yield fresh


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def test_start_to_the_first_step_counted_on_a_fresh_server(server, browser):
    page = open_page(browser, server.url)
    expect(page.get_by_text("No run yet")).to_be_visible(timeout=60_000)
    started = time.perf_counter()
    page.get_by_role("button", name="Start", exact=True).click()
    wait_until(lambda: counted_steps(page) > 0, timeout=120, what="the first step on the page")
    seconds = time.perf_counter() - started
    print(f"\nStart -> first step counted on the page (fresh server): {seconds:.2f} s")
    expect(page.get_by_text(re.compile(r"Run 1 · "))).to_be_visible()
    page.context.close()


def test_three_tabs_each_see_the_run_advance(server, browser):
    pages = [open_page(browser, server.url) for _ in range(3)]
    for page in pages:
        expect(page.get_by_text(re.compile(r"Run 1 · "))).to_be_visible(timeout=60_000)
    seen = [counted_steps(page) for page in pages]
    for index, page in enumerate(pages):
        wait_until(lambda: counted_steps(page) > seen[index], timeout=30, what=f"tab {index + 1} to advance")
    again = [counted_steps(page) for page in pages]
    for index, page in enumerate(pages):  # and keeps advancing, with the others open
        wait_until(lambda: counted_steps(page) > again[index], timeout=30, what=f"tab {index + 1} to advance again")
    pages[0].get_by_role("button", name="Stop", exact=True).click()
    for page in pages:
        page.context.close()
