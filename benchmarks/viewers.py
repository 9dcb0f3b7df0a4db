"""The page in a real browser (issue #11): Start -> first step on the page, and N viewers at once.

On a freshly started server (`benchmarks.browser`), one Chromium tab:

* presses **Start** on `seed` and times until the page's step counter shows a step (the first
  run of the server), then Stop, Start again and times the later run the same way;
* starts the A/B race (`exploding_rnn`, two sides) and times until both step counters count;
* with the run at full speed, watches one tab for `seconds`, then `tabs` tabs for as long:
  the longest time any tab's step counter went without advancing, `/_stcore/health` latency
  (p95 and worst, polled every 0.25 s on a thread of its own), the training rate (from the
  counter), the server's CPU seconds per second and its resident memory.

Pass `--no-browser` to `python -m benchmarks` to leave this out where Chromium is missing.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Callable

from benchmarks.browser import (
    chromium, counted_steps, open_page, process_cpu_seconds, record_metric, recorded_metric, streamlit_server, time_until,
)

HEALTH_POLL_SECONDS = 0.25
FIRST_STEP_TIMEOUT = 300.0
Log = Callable[[str], None]


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


class _HealthProbe:
    """Polls `/_stcore/health` on its own thread; a missing answer counts as its timeout."""

    def __init__(self, server, timeout: float = 5.0):
        self._server, self._timeout = server, timeout
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            seconds = self._server.health_seconds(self._timeout)
            self.samples.append(self._timeout if seconds is None else seconds)
            self._stop.wait(HEALTH_POLL_SECONDS)

    def take(self) -> list[float]:
        taken, self.samples = self.samples, []
        return taken

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _browser_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by every Chromium process on the machine."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if b"chrom" not in cmdline.read().split(b"\0")[0]:
                    continue
            total += process_cpu_seconds(entry)
        except OSError:  # the process ended meanwhile
            continue
    return total


def _watch(pages: list, server, health: _HealthProbe, seconds: float) -> dict:
    """Every tab records its own step counter's changes for `seconds` (in the tab: see
    `benchmarks.browser.record_metric`); the longest stall per tab and the rest."""
    health.take()
    cpu_before, rss_before = server.cpu_seconds(), server.rss_mb()
    browser_before = _browser_cpu_seconds()
    for page in pages:
        record_metric(page)
    started = time.time()
    time.sleep(seconds)  # a measurement window: the tabs and the probe record meanwhile
    ended = time.time()
    cpu_after, rss_after = server.cpu_seconds(), server.rss_mb()
    browser_after = _browser_cpu_seconds()
    latencies = health.take()
    records = [recorded_metric(page) for page in pages]
    longest = []
    for record in records:
        stamps = [started] + [stamp for stamp, _ in record[1:] if stamp <= ended] + [ended]
        longest.append(max(later - earlier for earlier, later in zip(stamps, stamps[1:])))
    first = [(stamp, value) for stamp, value in records[0] if stamp <= ended]
    elapsed = ended - started
    return {
        "tabs": len(pages),
        "seconds": elapsed,
        "longest_stall_s": max(longest),
        "stall_per_tab_s": longest,
        "changes_per_tab": [len(record) - 1 for record in records],
        "steps_per_second": (first[-1][1] - first[0][1]) / max(first[-1][0] - first[0][0], 1e-9) if len(first) > 1 else 0.0,
        "health_p95_ms": 1000 * _percentile(latencies, 0.95) if latencies else None,
        "health_max_ms": 1000 * max(latencies) if latencies else None,
        "health_samples": len(latencies),
        "server_cpu_per_second": (cpu_after - cpu_before) / elapsed,
        # The tabs' share of the two cores: what the server leaves them for drawing.
        "browser_cpu_per_second": (browser_after - browser_before) / elapsed,
        "rss_mb_start": rss_before,
        "rss_mb_end": rss_after,
    }


def _start_at_full_speed(page) -> None:
    slider = page.get_by_test_id("stSlider").filter(has_text="Speed").get_by_role("slider")  # "Full" is last
    slider.focus()
    slider.press("End")
    page.get_by_role("button", name="Start", exact=True).click()


def run_viewers(tabs: int, seconds: float, log: Log) -> dict:
    """The figures above on one fresh server."""
    result: dict = {"tabs": tabs, "seconds_per_phase": seconds}
    with streamlit_server() as server, chromium() as browser:
        first = open_page(browser, server.url)
        first.get_by_text("No run yet").wait_for(timeout=120_000)
        started = time.perf_counter()
        first.get_by_role("button", name="Start", exact=True).click()
        time_until(lambda: counted_steps(first) > 0, FIRST_STEP_TIMEOUT)
        result["first_run_first_step_s"] = time.perf_counter() - started
        log(f"  page: first run, Start -> first step {result['first_run_first_step_s']:.2f} s")
        first.get_by_role("button", name="Stop", exact=True).click()
        first.get_by_role("button", name="Start", exact=True).wait_for(timeout=60_000)
        time_until(lambda: first.get_by_role("button", name="Start", exact=True).is_enabled(), 60)
        started = time.perf_counter()
        _start_at_full_speed(first)
        second_run = first.get_by_text(re.compile(r"Run 2 · "))  # not the stopped run's counter
        time_until(lambda: second_run.count() > 0 and counted_steps(first) > 0, FIRST_STEP_TIMEOUT)
        result["later_run_first_step_s"] = time.perf_counter() - started
        log(f"  page: later run, Start -> first step {result['later_run_first_step_s']:.2f} s")

        health = _HealthProbe(server)
        try:
            time_until(lambda: counted_steps(first) > 2_000, 120)  # past the full step's swap
            phases = [_watch([first], server, health, seconds)]
            pages = [first] + [open_page(browser, server.url) for _ in range(tabs - 1)]
            for page in pages[1:]:
                time_until(lambda page=page: counted_steps(page) > 0, 120)
            phases.append(_watch(pages, server, health, seconds))
            phases.append(_watch(pages, server, health, seconds))  # the window keeps filling
        finally:
            health.close()
        for phase in phases:
            log(
                f"  {phase['tabs']} tab(s): longest stall {phase['longest_stall_s']:.1f} s, health p95 "
                f"{phase['health_p95_ms']:.0f} ms (max {phase['health_max_ms']:.0f}), "
                f"{phase['steps_per_second']:,.0f} steps/s, server CPU {phase['server_cpu_per_second']:.2f} s/s, "
                f"RSS {phase['rss_mb_end']:.0f} MB"
            )
        one, many, later = phases
        result["phases"] = phases
        result["rate_ratio"] = many["steps_per_second"] / max(one["steps_per_second"], 1e-9)
        result["cpu_ratio"] = many["server_cpu_per_second"] / max(one["server_cpu_per_second"], 1e-9)
        result["rss_growth_mb"] = later["rss_mb_end"] - later["rss_mb_start"]

        for page in pages[1:]:
            page.context.close()
        first.get_by_role("button", name="Stop", exact=True).click()
        first.get_by_role("tab", name="A/B race").click()
        button = first.get_by_role("button", name="Start A/B race")
        button.wait_for(timeout=60_000)
        started = time.perf_counter()
        button.click()
        time_until(lambda: counted_steps(first, "Step A") > 0 and counted_steps(first, "Step B") > 0, FIRST_STEP_TIMEOUT)
        result["race_first_step_s"] = time.perf_counter() - started
        log(f"  page: A/B race, Start -> both sides' first step {result['race_first_step_s']:.2f} s")
        first.get_by_role("button", name="Stop race").click()
    return result

