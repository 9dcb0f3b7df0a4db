"""In a real browser, on a freshly started server: how long the page takes to offer Start, how
long Start takes to show a first step, and three tabs watching one run, each seeing it advance.

The figures are printed, never asserted (speed is the benchmark's: `python -m benchmarks
--sections viewers` reports them against their targets).
"""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect
from support import wait_until

from benchmarks.browser import VIEWPORT, chromium, counted_steps, open_page, streamlit_server


@pytest.fixture(scope="module")
def server():
    with streamlit_server() as fresh:
        yield fresh


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def test_start_is_offered_at_once_and_counts_a_first_step_on_a_fresh_server(server, browser):
    page = browser.new_context(viewport=VIEWPORT).new_page()
    opened = time.perf_counter()
    page.goto(server.url, timeout=180_000)
    start = page.get_by_role("button", name="Start", exact=True)
    expect(start).to_be_enabled(timeout=180_000)
    print(f"\nOpen -> Start clickable (fresh server): {time.perf_counter() - opened:.2f} s")
    expect(page.get_by_text("No run yet")).to_be_visible(timeout=60_000)
    started = time.perf_counter()
    start.click()
    wait_until(lambda: counted_steps(page) > 0, timeout=300, what="the first step on the page")
    seconds = time.perf_counter() - started
    print(f"\nStart -> first step counted on the page (fresh server): {seconds:.2f} s")
    expect(page.get_by_text(re.compile(r"Run 1 · "))).to_be_visible()
    page.context.close()


def listening_addresses(port: int) -> set[str]:
    """The IPv4/IPv6 addresses (hex, as /proc/net/tcp* write them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def test_the_served_app_listens_on_localhost_only(server):
    """app.py is served as an st.App (its start-up imports the page): .streamlit/config.toml's
    127.0.0.1 still holds; nothing listens on all interfaces."""
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and no 0.0.0.0 or ::


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
