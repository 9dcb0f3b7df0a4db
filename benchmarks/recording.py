"""Recording every step (issue #11): the CLI's sinks, a CSV file and the run database, against
the same trainer recording in memory only, measured interleaved on `seed`.

The recording contender is what `python -m training --csv FILE` runs: `CsvSink` (the CLI's own)
writing every step to a file and a `RunDatabase`, both in a temporary directory. Its windows
wait for the database to hold every step before the next measurement (as in
`persistence_cost`), so a backlog never lands in the other contender's window; the CSV sink is
called on the recorder thread, which the training thread waits for only when 8 chunks are
queued, so a sink that cannot keep up shows as a lower rate, never as lost steps.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from benchmarks.persistence_cost import PersistedTrainerRun
from benchmarks.throughput import MONITORED, SETTLE_SECONDS, TrainerRun, ratios, warm_up_all, measure_interleaved, summarize
from training.cli import CsvSink
from training.persistence import FLUSH_SECONDS, RunDatabase

IN_MEMORY = MONITORED
RECORDING = "Clipwatch, full monitoring + CSV + run database (the CLI)"
Log = Callable[[str], None]


def run_recording(repeats: int, window_seconds: float, warm_up_seconds: float, log: Log, min_chunks: int = 1, timeout: float = 600.0) -> dict:
    """Steps per second in memory and with every step recorded to CSV and SQLite; paired ratio."""
    with tempfile.TemporaryDirectory(prefix="clipwatch-benchmark-") as directory:
        csv_path = Path(directory) / "steps.csv"
        with open(csv_path, "w", newline="") as csv_file:
            plain = TrainerRun(IN_MEMORY, "seed", None, 0)
            database = RunDatabase(Path(directory) / "runs.db")
            recording = PersistedTrainerRun(RECORDING, "seed", 0, database, sinks=(CsvSink(csv_file),))
            contenders = [plain, recording]
            for contender in contenders:
                contender.min_chunks = min_chunks
                contender.settle_seconds = FLUSH_SECONDS + SETTLE_SECONDS
                contender.start()
            try:
                warm_up_all(contenders, warm_up_seconds, timeout, log)
                samples = measure_interleaved(contenders, repeats, window_seconds, log)
                steps_trained = recording.trainer.status.step
            finally:
                plain.close()
                recording.close()  # the writer's last commit and the CSV's last rows land first
        csv_lines = sum(1 for _ in open(csv_path)) - 1
        steps_in_database = recording.steps_in_database()
    rows = {label: summarize(values) for label, values in samples.items()}
    ratios(rows, {"vs_in_memory": IN_MEMORY})
    log(f"  {RECORDING}: x{rows[RECORDING]['vs_in_memory']:.3f} of the in-memory rate")
    return {
        "task": "seed",
        "repeats": repeats,
        "window_seconds": window_seconds,
        "rows": rows,
        "steps_trained": steps_trained,
        "csv_rows": csv_lines,
        "steps_in_database": steps_in_database,
    }
