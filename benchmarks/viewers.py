"""The page in a real browser (issues #11 and #20): open -> usable, Start -> first step, N viewers.

On a freshly started server (`benchmarks.browser`), one Chromium tab:

* opens the page and times until the Start button is enabled (the first thing measured, so the
  server has imported nothing on a viewer's behalf yet);
* presses **Start** on `seed` at once and times until the page's step counter shows a step (the
  first run of the server), then Stop, Start again and times the later run the same way;
* with the run at full speed, watches one tab for `seconds`, then `tabs` tabs for as long: the
  longest time each tab's step counter went without advancing, `/_stcore/health` latency (p95
  and worst, polled every 0.25 s on a thread of its own), the training rate (from the counter),
  and where the two cores' time went: the server's CPU, each tab's renderer (Chrome DevTools
  Protocol's `Performance.getMetrics`: main-thread task time and the renderer process's CPU),
  this benchmark's Chromium as a whole, and the machine (other people's work included);
* starts the A/B race (`exploding_rnn`, two sides) and times until both step counters count.

A stage or a tab that fails is named in the results and costs only its own figures. Pass
`--no-browser` to `python -m benchmarks` to leave this out where Chromium is missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from typing import Callable

from benchmarks.browser import (
    RENDERER_METRICS, VIEWPORT, chromium, counted_steps, machine_busy_cpu_seconds, open_page, own_chromium_cpu_seconds,
    record_metric, recorded_metric, renderer_clock, renderer_seconds, streamlit_server, time_until,
)  # fmt: skip
from benchmarks.speed_report import FIRST_STEP_FRESH_S, FIRST_STEP_LATER_S
from benchmarks.targets import at_most, target

MAX_OPEN_TO_USABLE_S = 2.0  # issue #20: Start clickable 2 s after the page opens, fresh server
HEALTH_POLL_SECONDS = 0.25
MAX_STALL_S = 3.0  # every tab's step counter advances at least this often
MAX_HEALTH_MS = 250.0
MIN_RATE_WITH_TABS = 0.75
MAX_CPU_RATIO = 1.5
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


def _why(error: Exception) -> str:
    """The error's first line, and for Playwright the element it was waiting for."""
    lines = f"{type(error).__name__}: {error}".splitlines()
    waiting = next((line.strip() for line in lines if "waiting for" in line), "")
    return (lines[0] + (f" ({waiting})" if waiting else ""))[:300]


def _renderer_now(clock) -> dict[str, float] | None:
    """The tab's renderer metrics and their DevTools timestamp (None: the tab did not answer)."""
    if clock is None:
        return None
    try:
        return renderer_seconds(clock)
    except Exception:  # a tab that fails costs its own figures only
        return None


def _per_second(before: dict | None, after: dict | None) -> dict[str, float] | None:
    if before is None or after is None:
        return None
    elapsed = max(after["Timestamp"] - before["Timestamp"], 1e-9)
    return {name: (after[name] - before[name]) / elapsed for name in RENDERER_METRICS if name in before and name in after}


def _counter_record(page, started: float, ended: float) -> tuple[float, int, float | None]:
    """The tab's longest stall within [started, ended], its changes, and the rate it read."""
    seen = [(stamp, value) for stamp, value in recorded_metric(page) if stamp <= ended]
    stamps = [started] + [stamp for stamp, _ in seen[1:] if stamp >= started] + [ended]
    stall = max(later - earlier for earlier, later in zip(stamps, stamps[1:]))
    rate = (seen[-1][1] - seen[0][1]) / max(seen[-1][0] - seen[0][0], 1e-9) if len(seen) > 1 else None
    return stall, len(seen) - 1, rate


def _watch(pages: list, clocks: list, server, health: _HealthProbe, seconds: float) -> dict:
    """Every tab records its own step counter's changes for `seconds` (in the tab: see
    `benchmarks.browser.record_metric`) and DevTools counts its renderer's work; the server's and
    the machine's CPU are read from /proc. A tab that fails is named in `failed_tabs` and the
    figures are taken over the others."""
    failed: dict[int, str] = {}
    for index, page in enumerate(pages):
        try:
            record_metric(page)
        except Exception as error:
            failed[index] = _why(error)
    health.take()
    renderers_before = [_renderer_now(clock) for clock in clocks]
    cpu_before, rss_before = server.cpu_seconds(), server.rss_mb()
    chromium_before, machine_before = own_chromium_cpu_seconds(), machine_busy_cpu_seconds()
    started = time.time()
    time.sleep(seconds)  # a measurement window: the tabs, DevTools and the probe record meanwhile
    ended = time.time()
    cpu_after, rss_after = server.cpu_seconds(), server.rss_mb()
    chromium_after, machine_after = own_chromium_cpu_seconds(), machine_busy_cpu_seconds()
    renderers_after = [_renderer_now(clock) for clock in clocks]
    latencies = health.take()
    elapsed = ended - started
    stalls: list[float | None] = []
    changes: list[int | None] = []
    rates = []
    for index, page in enumerate(pages):
        if index not in failed:
            try:
                stall, changed, rate = _counter_record(page, started, ended)
                stalls.append(stall)
                changes.append(changed)
                rates.append(rate)
                continue
            except Exception as error:
                failed[index] = _why(error)
        stalls.append(None)
        changes.append(None)
    renderers = [_per_second(before, after) for before, after in zip(renderers_before, renderers_after)]
    measured = [renderer for renderer in renderers if renderer]

    def summed(name: str) -> float | None:
        return sum(renderer.get(name, 0.0) for renderer in measured) if measured else None

    answered = [stall for stall in stalls if stall is not None]
    server_cpu = (cpu_after - cpu_before) / elapsed
    chromium_cpu = (chromium_after - chromium_before) / elapsed
    machine_busy = (machine_after - machine_before) / elapsed
    return {
        "tabs": len(pages),
        "seconds": elapsed,
        "longest_stall_s": max(answered) if answered else None,
        "stall_per_tab_s": stalls,
        "changes_per_tab": changes,
        "failed_tabs": {str(index): why for index, why in sorted(failed.items())},
        "steps_per_second": next((rate for rate in rates if rate is not None), 0.0),
        "health_p95_ms": 1000 * _percentile(latencies, 0.95) if latencies else None,
        "health_max_ms": 1000 * max(latencies) if latencies else None,
        "health_samples": len(latencies),
        "server_cpu_per_second": server_cpu,
        # Each tab's renderer, from DevTools (CPU seconds per second): its main thread's tasks
        # (script, layout, style among them) and its whole process.
        "renderer_per_tab": renderers,
        "renderers_measured": len(measured),
        "renderer_task_per_second": summed("TaskDuration"),
        "renderer_script_per_second": summed("ScriptDuration"),
        "renderer_layout_style_per_second": (
            summed("LayoutDuration") + summed("RecalcStyleDuration") if measured else None
        ),
        "renderer_process_per_second": summed("ProcessTime"),
        # Every process of this benchmark's Chromium (browser, GPU, utility and the renderers).
        "browser_cpu_per_second": chromium_cpu,
        # The two cores, whoever used them: what is left is this driver and other people's work.
        "machine_busy_per_second": machine_busy,
        "others_cpu_per_second": machine_busy - server_cpu - chromium_cpu,
        "rss_mb_start": rss_before,
        "rss_mb_end": rss_after,
    }

def _start_at_full_speed(page) -> None:
    slider = page.get_by_test_id("stSlider").filter(has_text="Speed").get_by_role("slider")  # "Full" is last
    slider.focus()
    slider.press("End")
    page.get_by_role("button", name="Start", exact=True).click()


def _stage(result: dict, name: str, measure: Callable[[], dict], log: Log) -> None:
    """Run one stage of the section; one that raises is noted and the figures so far are kept."""
    try:
        result.update(measure())
    except Exception as error:
        result["errors"][name] = _why(error)
        log(f"  viewers: {name} failed: {result['errors'][name]}")


def _open_until_usable(browser, server, log: Log) -> tuple[object, dict]:
    """A first tab on a freshly started server, timed from `goto` to the Start button enabled,
    with what the server and the machine did meanwhile (to explain a slow open)."""
    from playwright.sync_api import expect

    page = browser.new_context(viewport=VIEWPORT).new_page()
    clock = _clock_or_none(page)
    renderer_before = _renderer_now(clock)
    server_before, machine_before = server.cpu_seconds(), machine_busy_cpu_seconds()
    opened = time.perf_counter()
    page.goto(server.url, timeout=180_000)  # returns at the load event: the app's JavaScript is in
    loaded = time.perf_counter() - opened
    page.get_by_role("heading", name="Clipwatch").wait_for(timeout=180_000)  # the script's first output
    heading = time.perf_counter() - opened
    expect(page.get_by_role("button", name="Start", exact=True)).to_be_enabled(timeout=180_000)
    seconds = time.perf_counter() - opened
    renderer_after = _renderer_now(clock)
    figures = {
        "open_to_usable_s": seconds,
        "open_loaded_s": loaded,
        "open_heading_s": heading,
        "open_renderer_task_s": (
            renderer_after["TaskDuration"] - renderer_before["TaskDuration"] if renderer_before and renderer_after else None
        ),
        "open_server_cpu_per_second": (server.cpu_seconds() - server_before) / seconds,
        "open_machine_busy_per_second": (machine_busy_cpu_seconds() - machine_before) / seconds,
        "open_load_average_1min": os.getloadavg()[0],
    }
    log(
        f"  page: open -> Start enabled {seconds:.2f} s (loaded {loaded:.2f} s, title {heading:.2f} s; server CPU "
        f"{figures['open_server_cpu_per_second']:.2f} s/s, machine busy {figures['open_machine_busy_per_second']:.2f} s/s)"
    )
    return page, figures


def _first_and_later_run(first, server_ready: float, log: Log) -> dict:
    """Start pressed at once (as a visitor would), then Stop and a later run at full speed."""
    result = {}
    first.get_by_text("No run yet").wait_for(timeout=120_000)
    loading = first.get_by_text(re.compile(r"^Loading TensorFlow"))
    last_loading: float | None = None  # when the page last said it was loading TensorFlow

    def counting() -> bool:
        nonlocal last_loading
        if loading.count() > 0:
            last_loading = time.perf_counter()
        return counted_steps(first) > 0

    started = time.perf_counter()
    result["server_age_at_first_start_s"] = started - server_ready
    first.get_by_role("button", name="Start", exact=True).click()
    time_until(counting, FIRST_STEP_TIMEOUT)
    result["first_run_first_step_s"] = time.perf_counter() - started
    result["first_run_waited_for_tensorflow"] = last_loading is not None
    # Start -> the page's last 'Loading TensorFlow': the part of the first step spent on the import.
    result["first_run_tensorflow_wait_s"] = 0.0 if last_loading is None else last_loading - started
    log(
        f"  page: first run, Start -> first step {result['first_run_first_step_s']:.2f} s (pressed "
        f"{result['server_age_at_first_start_s']:.1f} s after the server answered; the page "
        f"said 'Loading TensorFlow' until {result['first_run_tensorflow_wait_s']:.2f} s after Start (0: never))"
    )
    first.get_by_role("button", name="Stop", exact=True).click()
    first.get_by_role("button", name="Start", exact=True).wait_for(timeout=60_000)
    time_until(lambda: first.get_by_role("button", name="Start", exact=True).is_enabled(), 60)
    started = time.perf_counter()
    _start_at_full_speed(first)
    second_run = first.get_by_text(re.compile(r"Run 2 · "))  # not the stopped run's counter
    time_until(lambda: second_run.count() > 0 and counted_steps(first) > 0, FIRST_STEP_TIMEOUT)
    result["later_run_first_step_s"] = time.perf_counter() - started
    log(f"  page: later run, Start -> first step {result['later_run_first_step_s']:.2f} s")
    return result


def _clock_or_none(page):
    try:
        return renderer_clock(page)
    except Exception:
        return None


def _one_tab_then_many(browser, server, first, tabs: int, seconds: float, log: Log) -> dict:
    """One tab watched for `seconds`, then `tabs` tabs for as long. A tab that does not open is
    left out and named; the phase runs with the others."""
    health = _HealthProbe(server)
    pages, clocks, not_opened = [first], [_clock_or_none(first)], {}
    try:
        time_until(lambda: counted_steps(first) > 2_000, 120)  # past the full step's swap
        one = _watch(pages, clocks, server, health, seconds)
        log(_phase_line(one))
        for index in range(1, tabs):
            page = None
            try:
                page = open_page(browser, server.url)
                time_until(lambda page=page: counted_steps(page) > 0, 120)
            except Exception as error:
                not_opened[str(index)] = _why(error)
                log(f"  tab {index + 1} did not open: {not_opened[str(index)]}")
                if page is not None:
                    with contextlib.suppress(Exception):
                        page.context.close()
                continue
            pages.append(page)
            clocks.append(_clock_or_none(page))
        many = _watch(pages, clocks, server, health, seconds)
        many["tabs_not_opened"] = not_opened
        log(_phase_line(many))
    finally:
        health.close()
        for page in pages[1:]:
            with contextlib.suppress(Exception):
                page.context.close()
    return {
        "phases": [one, many],
        "rate_ratio": many["steps_per_second"] / max(one["steps_per_second"], 1e-9),
        "cpu_ratio": many["server_cpu_per_second"] / max(one["server_cpu_per_second"], 1e-9),
        "rss_growth_mb": many["rss_mb_end"] - many["rss_mb_start"],
    }


def _race(first, log: Log) -> dict:
    first.get_by_role("button", name="Stop", exact=True).click()
    first.get_by_role("tab", name="A/B race").click()
    button = first.get_by_role("button", name="Start A/B race")
    button.wait_for(timeout=60_000)
    started = time.perf_counter()
    button.click()
    time_until(lambda: counted_steps(first, "Step A") > 0 and counted_steps(first, "Step B") > 0, FIRST_STEP_TIMEOUT)
    seconds = time.perf_counter() - started
    log(f"  page: A/B race, Start -> both sides' first step {seconds:.2f} s")
    first.get_by_role("button", name="Stop race").click()
    return {"race_first_step_s": seconds}


def run_viewers(tabs: int, seconds: float, log: Log) -> dict:
    """The figures above on one fresh server; a stage that fails is named in `errors` and the
    figures of the others are kept."""
    result: dict = {"tabs": tabs, "seconds_per_phase": seconds, "errors": {}}
    with streamlit_server() as server:
        server_ready = time.perf_counter()
        with chromium() as browser:
            _run_on(browser, server, server_ready, tabs, seconds, result, log)
    return result


def _run_on(browser, server, server_ready: float, tabs: int, seconds: float, result: dict, log: Log) -> None:
    first, opened = _open_until_usable(browser, server, log)
    result.update(opened)
    _stage(result, "first and later run", lambda: _first_and_later_run(first, server_ready, log), log)
    if "later_run_first_step_s" in result:
        _stage(result, "tabs", lambda: _one_tab_then_many(browser, server, first, tabs, seconds, log), log)
    _stage(result, "race", lambda: _race(first, log), log)


# --- report and targets -----------------------------------------------------------------------------


def _number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _phase_line(phase: dict) -> str:
    failed = f", {len(phase['failed_tabs'])} tab(s) did not report" if phase["failed_tabs"] else ""
    return (
        f"  {phase['tabs']} tab(s): longest stall {_number(phase['longest_stall_s'], 1)} s, health p95 "
        f"{_number(phase['health_p95_ms'], 0)} ms (max {_number(phase['health_max_ms'], 0)}), "
        f"{phase['steps_per_second']:,.0f} steps/s; CPU s/s: server {phase['server_cpu_per_second']:.2f}, "
        f"renderers' tasks {_number(phase['renderer_task_per_second'])}, all Chromium "
        f"{phase['browser_cpu_per_second']:.2f}, machine {phase['machine_busy_per_second']:.2f}{failed}"
    )


def cpu_split(phase: dict) -> str:
    """Where the machine's cores went during a phase, as one sentence."""
    tabs = phase["renderers_measured"] or 1
    task = phase["renderer_task_per_second"]
    renderers = "-" if task is None else (
        f"{task:.2f} in the renderers' main-thread tasks ({task / tabs:.3f} per tab; script "
        f"{phase['renderer_script_per_second']:.2f}, layout + style {phase['renderer_layout_style_per_second']:.2f}), "
        f"{phase['renderer_process_per_second']:.2f} in the renderer processes"
    )
    return (
        f"{phase['tabs']} tab(s), CPU s/s of {os.cpu_count()} cores: machine busy {phase['machine_busy_per_second']:.2f} = "
        f"server {phase['server_cpu_per_second']:.2f} + all Chromium {phase['browser_cpu_per_second']:.2f} "
        f"(of which {renderers}) + others {phase['others_cpu_per_second']:.2f} (this driver, other people's work)"
    )


def per_refresh(phase: dict) -> tuple[float, float | None]:
    """How often a tab redrew its counter (changes per second, mean over tabs) and the renderer's
    main-thread task time per redraw (ms; None without DevTools figures): the browsers' work per
    refresh, apart from how many refreshes the machine managed."""
    pairs = [(changes, renderer) for changes, renderer in zip(phase["changes_per_tab"], phase["renderer_per_tab"]) if changes]
    rate = sum(changes for changes, _ in pairs) / max(len(pairs), 1) / phase["seconds"]
    timed = [(changes, renderer) for changes, renderer in pairs if renderer]
    if not timed:
        return rate, None
    task = sum(renderer["TaskDuration"] * phase["seconds"] for _, renderer in timed)
    return rate, 1000 * task / sum(changes for changes, _ in timed)


def lines(viewers: dict, table) -> list[str]:
    out = ["The page in Chromium (fresh server; run at full speed)"]
    firsts = [
        f"{label} {viewers[key]:.2f} s"
        for key, label in (("open_to_usable_s", "open -> Start enabled"), ("first_run_first_step_s", "Start -> first step, first run"),
                           ("later_run_first_step_s", "later run"), ("race_first_step_s", "A/B race"))
        if key in viewers
    ]  # fmt: skip
    out.append("  " + ", ".join(firsts))
    if "open_loaded_s" in viewers:
        out.append(
            f"  While the page opened: JavaScript loaded at {viewers['open_loaded_s']:.2f} s, title drawn at "
            f"{viewers['open_heading_s']:.2f} s; renderer tasks {_number(viewers['open_renderer_task_s'])} s, server CPU "
            f"{viewers['open_server_cpu_per_second']:.2f} s/s, machine busy {viewers['open_machine_busy_per_second']:.2f} "
            f"s/s of {os.cpu_count()} cores, load average {viewers['open_load_average_1min']:.1f}"
        )
    if "first_run_tensorflow_wait_s" in viewers:
        waited = (
            f"said 'Loading TensorFlow' until {viewers['first_run_tensorflow_wait_s']:.2f} s after Start"
            if viewers["first_run_waited_for_tensorflow"] else "never said 'Loading TensorFlow' (it had loaded)"
        )  # fmt: skip
        out.append(f"  Start pressed {viewers['server_age_at_first_start_s']:.1f} s after the server answered; the page {waited}")
    phases = viewers.get("phases", [])
    if phases:
        rows = [
            [
                str(phase["tabs"]), f"{phase['seconds']:.0f}", _number(phase["longest_stall_s"], 1),
                _number(phase["health_p95_ms"], 0), _number(phase["health_max_ms"], 0), f"{phase['steps_per_second']:,.0f}",
                f"{phase['server_cpu_per_second']:.2f}", _number(phase["renderer_task_per_second"]),
                _number(None if phase["renderer_task_per_second"] is None else phase["renderer_task_per_second"] / max(phase["renderers_measured"], 1), 3),
                _number(phase["renderer_process_per_second"]), f"{phase['browser_cpu_per_second']:.2f}",
                f"{phase['machine_busy_per_second']:.2f}", f"{phase['rss_mb_start']:.0f} -> {phase['rss_mb_end']:.0f}",
            ]
            for phase in phases
        ]  # fmt: skip
        header = ["tabs", "s", "longest stall s", "health p95 ms", "health max ms", "steps/s", "server CPU s/s",
                  "renderer tasks s/s", "per tab", "renderer processes s/s", "all Chromium s/s", "machine busy s/s", "RSS MB"]  # fmt: skip
        out += table(header, rows, right=set(range(len(header))))
        for phase in phases:
            out.append("  " + cpu_split(phase))
            rate, task_ms = per_refresh(phase)
            out.append(
                f"  {phase['tabs']} tab(s): each tab redrew its counter {rate:.2f} times a second; each redraw cost its "
                f"renderer {_number(task_ms, 0)} ms of main-thread tasks"
            )
            stalls = ", ".join(_number(stall, 1) for stall in phase["stall_per_tab_s"])
            out.append(f"  {phase['tabs']} tab(s): longest stall per tab (s): {stalls}")
            for index, why in {**phase["failed_tabs"], **phase.get("tabs_not_opened", {})}.items():
                out.append(f"  tab {int(index) + 1} failed: {why}")
        out.append(
            f"  {viewers['tabs']} tabs vs 1: training rate x{viewers['rate_ratio']:.2f}, server CPU x{viewers['cpu_ratio']:.2f}; "
            f"RSS growth over the {viewers['tabs']}-tab phase {viewers['rss_growth_mb']:+.0f} MB"
        )
    for stage, why in viewers.get("errors", {}).items():
        out.append(f"  {stage} failed: {why}")
    return out


def targets(viewers: dict) -> list[dict]:
    """Issue #20's targets for the page and its viewers (those whose figures were measured)."""
    found = []
    for key, label, limit in (
        ("open_to_usable_s", "page: open -> Start enabled, fresh server <= 2 s", MAX_OPEN_TO_USABLE_S),
        ("first_run_first_step_s", "page: Start -> first step counted, fresh server <= 3 s", FIRST_STEP_FRESH_S),
        ("later_run_first_step_s", "page: Start -> first step counted, later run <= 1 s", FIRST_STEP_LATER_S),
        ("race_first_step_s", "page: A/B race, Start -> both sides counting <= 3 s", FIRST_STEP_FRESH_S),
    ):
        if key in viewers:
            found.append(at_most(label, viewers[key], limit))
    if not viewers.get("phases"):
        return found
    tabs, many = viewers["tabs"], viewers["phases"][-1]  # a saved run before #20 had two ten-tab phases
    silent = len(many.get("failed_tabs", {})) + len(many.get("tabs_not_opened", {}))
    if many.get("longest_stall_s") is not None:
        stall = at_most(f"{tabs} tabs: every step counter advances at least every 3 s", many["longest_stall_s"], MAX_STALL_S)
        if silent:  # a tab that did not report cannot be said to have advanced
            stall.update(passed=False, by=f"{silent} tab(s) did not report (the others: {stall['by']})")
        found.append(stall)
    if many.get("health_max_ms") is not None:
        found.append(at_most(f"{tabs} tabs: /_stcore/health answers within 250 ms throughout (max)",
                             many["health_max_ms"], MAX_HEALTH_MS, unit="ms", digits=0,
                             extra=f" (p95 {many['health_p95_ms']:.0f} ms)"))  # fmt: skip
    rate = viewers["rate_ratio"]
    points = (rate - MIN_RATE_WITH_TABS) * 100
    found.append(target(f"{tabs} tabs: training rate >= 75% of one tab's", f"{rate:.0%}", rate >= MIN_RATE_WITH_TABS,
                        f"{points:.0f} points to spare" if points >= 0 else f"short by {-points:.0f} points", rate))  # fmt: skip
    cpu = viewers["cpu_ratio"]
    found.append(target(f"{tabs} tabs: server CPU per second <= 1.5x one tab's", f"{cpu:.2f}x", cpu <= MAX_CPU_RATIO,
                        f"{MAX_CPU_RATIO - cpu:.2f}x to spare" if cpu <= MAX_CPU_RATIO else f"over by {cpu - MAX_CPU_RATIO:.2f}x", cpu))  # fmt: skip
    return found
