"""A long run (issue #11): `seed` at full speed for millions of steps, recorded to a run database.

Samples, at every million steps: the process's resident memory, the charts' cost on the live
store (`dashboard_cost.dashboard_page_charts`, the page's refresh) and the database's size.
Memory should stop growing once the store's window (100,000 steps) is full: the store is a ring
plus a bounded summary, and the writer thread commits what it is handed.

`python -m benchmarks --sections long_run` (5M steps; `--quick`: 500k).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from benchmarks.dashboard_cost import timed, dashboard_page_charts
from training import Trainer
from training.persistence import RunDatabase

SAMPLE_EVERY_STEPS = 1_000_000
Log = Callable[[str], None]


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_long(total_steps: int, log: Log, sample_every: int = SAMPLE_EVERY_STEPS) -> dict:
    """Train `total_steps` of seed; memory, chart cost and database size along the way."""
    samples = []
    with tempfile.TemporaryDirectory(prefix="clipwatch-long-run-") as directory:
        database_path = Path(directory) / "runs.db"
        trainer = Trainer(task="seed", max_steps=total_steps, database=RunDatabase(database_path))
        started = time.perf_counter()
        trainer.start()
        try:
            window = trainer.wait_until_ready() and trainer.store.window
            next_sample = min(window, total_steps)
            while trainer.status.state == "running":
                step = trainer.status.step
                if step >= next_sample:
                    database_mb = sum(path.stat().st_size for path in Path(directory).iterdir()) / 1e6
                    samples.append(
                        {
                            "step": step,
                            "seconds": time.perf_counter() - started,
                            "rss_mb": rss_mb(),
                            "charts_ms": timed(dashboard_page_charts, trainer.store),
                            "database_mb": database_mb,
                        }
                    )
                    log(
                        f"  long run: step {step:,}, RSS {samples[-1]['rss_mb']:.0f} MB, charts "
                        f"{samples[-1]['charts_ms']:.0f} ms, database {database_mb:.0f} MB"
                    )
                    next_sample = (step // sample_every + 1) * sample_every
                time.sleep(0.05)
        finally:
            trainer.stop(timeout=30.0)
        elapsed = time.perf_counter() - started
        status = trainer.status
        database_mb = sum(path.stat().st_size for path in Path(directory).iterdir()) / 1e6
    samples.append({"step": status.step, "seconds": elapsed, "rss_mb": rss_mb(), "charts_ms": None, "database_mb": database_mb})
    after_window = samples[0]
    return {
        "steps": status.step,
        "state": status.state,
        "seconds": elapsed,
        "steps_per_second": status.step / elapsed,
        "window": window,
        "samples": samples,
        "rss_growth_after_window_mb": max(sample["rss_mb"] for sample in samples) - after_window["rss_mb"],
        "database_mb_per_million_steps": database_mb / max(status.step, 1) * 1e6,
    }
