"""Driving the real page: a `streamlit run app.py` server on a free port, Debian's Chromium, and
the page's numbers as a viewer reads them. Used by `benchmarks.viewers` and the browser tests.

The server records into a temporary database and XLA cache (never the checkout's `runs/`), runs
in its own process group, and is killed with everything it started when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1600, "height": 1000}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_cpu_seconds(pid: int | str) -> float:
    """CPU time (user + system) process `pid` has used so far (OSError once it has ended)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")



def own_chromium_cpu_seconds() -> float:
    """CPU seconds used so far by the Chromium processes this process started (the browser, its
    renderers, GPU and utility processes): other people's browsers on a shared machine excluded."""
    parents: dict[int, int] = {}
    names: dict[int, bytes] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                head, tail = stat.read().rsplit(b")", 1)
            parents[int(entry)] = int(tail.split()[1])
            names[int(entry)] = head.split(b"(", 1)[1]
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
    ours, frontier = set(), [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in ours]
        ours.update(children)
        frontier += children
    total = 0.0
    for pid in ours:
        if b"chrom" not in names.get(pid, b""):
            continue
        try:
            total += process_cpu_seconds(pid)
        except OSError:
            continue
    return total


def machine_busy_cpu_seconds() -> float:
    """CPU seconds every core of the machine has spent busy so far (anyone's processes)."""
    with open("/proc/stat") as stat:
        fields = [int(field) for field in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: str

    def health_seconds(self, timeout: float = 10.0) -> float | None:
        """How long `/_stcore/health` took to answer ok (None: no answer within `timeout`)."""
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=timeout) as response:
                ok = response.status == 200 and response.read().strip() == b"ok"
        except OSError:
            return None
        return time.perf_counter() - started if ok else None

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far."""
        return process_cpu_seconds(self.process.pid)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")


@contextlib.contextmanager
def streamlit_server(start_timeout: float = 90.0, environment: dict[str, str] | None = None):
    """A fresh `streamlit run app.py` on a free port; yields a `Server` once it is healthy.

    `environment`: extra variables for the server (e.g. CLIPWATCH_OPERATOR_KEY)."""
    port = free_port()
    folder = tempfile.mkdtemp(prefix="clipwatch-server-")
    log_path = os.path.join(folder, "streamlit.log")
    extra = environment or {}
    environment = {
        **os.environ,
        "CLIPWATCH_DB": os.path.join(folder, "clipwatch.db"),
        "CLIPWATCH_XLA_CACHE": os.path.join(folder, "xla-cache"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        **extra,
    }
    environment.pop("TF_XLA_FLAGS", None)
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1"]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + start_timeout
        while server.health_seconds(timeout=1.0) is None:
            if process.poll() is not None:
                raise RuntimeError(f"streamlit exited with {process.returncode}: {open(log_path).read()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{server.url}/_stcore/health did not answer in {start_timeout:g} s")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the server and anything it started
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def chromium():
    """Debian's Chromium through Playwright (never `playwright install`)."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        raise FileNotFoundError(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# Read in one round trip, as the page is at that moment: a locator's count() then inner_text()
# is two, and a rerun that redraws the card in between left inner_text() waiting for an element
# (ten tabs on two cores: over 5 s, which ended the viewers benchmark).
_METRIC_TEXT = """label => {
    for (const card of document.querySelectorAll('[data-testid="stMetric"]')) {
        const name = card.querySelector('[data-testid="stMetricLabel"]');
        if (!name || ![name, ...name.querySelectorAll('*')].some(e => e.textContent.trim() === label)) continue;
        const value = card.querySelector('[data-testid="stMetricValue"]');
        return value ? value.textContent : "";
    }
    return "";
}"""


def metric_text(page, label: str) -> str:
    """The text of the header metric labelled exactly `label` ("" when it is not drawn)."""
    return page.evaluate(_METRIC_TEXT, label)


# Every change of one metric as the tab drew it, timestamped in the tab (Date.now(), the same
# clock as time.time()): a MutationObserver, so the record does not depend on how fast Playwright
# can poll ten tabs that share two cores with the server (one pass of reads took over 30 s).
_RECORD_METRIC = """label => {
    const read = () => (%s)(label);
    window.__clipwatchChanges = [[Date.now(), read()]];
    if (!window.__clipwatchObserver) {
        window.__clipwatchObserver = new MutationObserver(() => {
            const changes = window.__clipwatchChanges, value = read();
            if (value !== changes[changes.length - 1][1]) changes.push([Date.now(), value]);
        });
        window.__clipwatchObserver.observe(document.body, {subtree: true, childList: true, characterData: true});
    }
}""" % _METRIC_TEXT


def record_metric(page, label: str = "Step") -> None:
    """Start (or restart) recording every change of the metric `label` in the tab itself."""
    page.evaluate(_RECORD_METRIC, label)


def recorded_metric(page) -> list[tuple[float, int]]:
    """(time.time() seconds, counted value) for the value when recording began and every change."""
    changes = page.evaluate("() => window.__clipwatchChanges || []")
    return [(stamp / 1000, _as_count(text)) for stamp, text in changes]


def _as_count(text: str) -> int:
    """A counter's text as a viewer reads it ("12,345" -> 12345; 0 until it shows a number)."""
    text = text.replace(",", "").strip()
    return int(text) if text.isdigit() else 0


def counted_steps(page, label: str = "Step") -> int:
    """The step counter a viewer reads (0 until it shows a number)."""
    return _as_count(metric_text(page, label))


def open_page(browser, url: str):
    """A new tab on `url`, once the page has drawn its title."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.goto(url, timeout=180_000)  # the server's first page imports TensorFlow (60 s+ under load)
    page.get_by_role("heading", name="Clipwatch").wait_for(timeout=180_000)
    return page


# Chrome DevTools Protocol's Performance domain: cumulative durations, in seconds, of the tab's
# main-thread tasks (all of them; script, layout and style among them) and the renderer process's
# CPU time (ProcessTime: its compositor and raster threads too). "threadTicks" counts a task's CPU
# time, not its wall time, so a renderer waiting for a core on a busy machine is not counted.
RENDERER_METRICS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration", "ProcessTime")


def renderer_clock(page):
    """A DevTools session on `page` with the Performance domain on; read it with `renderer_seconds`."""
    session = page.context.new_cdp_session(page)
    try:
        session.send("Performance.enable", {"timeDomain": "threadTicks"})
    except Exception:  # an older Chromium without the time domain: wall time of tasks then
        session.send("Performance.enable")
    return session


def renderer_seconds(session) -> dict[str, float]:
    """The tab's RENDERER_METRICS so far and the moment they were read ("Timestamp"; seconds)."""
    metrics = {metric["name"]: metric["value"] for metric in session.send("Performance.getMetrics")["metrics"]}
    return {name: float(metrics[name]) for name in (*RENDERER_METRICS, "Timestamp") if name in metrics}


def time_until(predicate, timeout: float, poll: float = 0.02) -> float:
    """Seconds until `predicate()` is true; raises TimeoutError after `timeout`."""
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"not within {timeout:g} s")
        time.sleep(poll)
    return time.perf_counter() - started
