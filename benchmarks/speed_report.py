"""The report's lines and targets for issue #11's sections: startup, recording, long run (the viewers' are `benchmarks.viewers`).

Pure functions of the results dict, like `benchmarks.report` (which calls them).
"""

from __future__ import annotations

from benchmarks.recording import IN_MEMORY, RECORDING
from benchmarks.targets import share_at_least, table, target

FIRST_STEP_FRESH_S = 3.0  # the first run of a freshly started server
FIRST_STEP_LATER_S = 1.0  # every run after it
MIN_RECORDING_SHARE = 0.90  # CSV + database vs in memory
MAX_RSS_GROWTH_MB = 50.0
SHIPPED_VARIANT = "quick start + warm-up"


def _seconds_target(name: str, value: float, limit: float, extra: str = "") -> dict:
    by = f"{limit - value:.2f} s to spare" if value <= limit else f"over by {value - limit:.2f} s"
    return target(name, f"{value:.2f} s{extra}", value <= limit, by, value)


def targets(results: dict) -> list[dict]:
    found = []
    startup = results.get("startup", {}).get("results", {})
    for case, variants in startup.items():
        shipped = variants.get(SHIPPED_VARIANT)
        if not shipped:
            continue
        baseline = variants.get("full step first (before #11)")
        note = f" (before #11: {baseline['first_run']['first_step_s']:.2f} s)" if baseline else ""
        found.append(
            _seconds_target(
                f"{case}: Start -> first step, first run of a fresh process <= 3 s",
                shipped["first_run"]["first_step_s"], FIRST_STEP_FRESH_S, note,
            )
        )
        note = f" (before #11: {baseline['later_run']['first_step_s']:.2f} s)" if baseline else ""
        found.append(
            _seconds_target(
                f"{case}: Start -> first step, later runs <= 1 s",
                shipped["later_run"]["first_step_s"], FIRST_STEP_LATER_S, note,
            )
        )
    rows = results.get("recording", {}).get("rows", {})
    if RECORDING in rows:
        found.append(
            share_at_least(
                "CLI recording (CSV + database) >= 90% of the in-memory monitored rate",
                rows[RECORDING]["vs_in_memory"],
                rows[RECORDING]["vs_in_memory_range"],
                MIN_RECORDING_SHARE,
            )
        )
    long = results.get("long_run")
    if long:
        growth = long["rss_growth_after_window_mb"]
        found.append(
            target(
                f"long run ({long['steps']:,} steps): RSS growth after the window filled < {MAX_RSS_GROWTH_MB:g} MB",
                f"{growth:+.1f} MB",
                growth < MAX_RSS_GROWTH_MB,
                f"{MAX_RSS_GROWTH_MB - growth:.1f} MB to spare" if growth < MAX_RSS_GROWTH_MB else f"over by {growth - MAX_RSS_GROWTH_MB:.1f} MB",
                growth,
            )
        )
    return found


def long_run_lines(long: dict) -> list[str]:
    rows = [
        [f"{sample['step']:,}", f"{sample['seconds']:.0f}", f"{sample['rss_mb']:.0f}",
         "-" if sample["charts_ms"] is None else f"{sample['charts_ms']:.0f}", f"{sample['database_mb']:.0f}"]
        for sample in long["samples"]
    ]  # fmt: skip
    return [
        f"Long run (seed, {long['steps']:,} steps at full speed with a run database, {long['steps_per_second']:,.0f} "
        f"steps/s; state {long['state']})",
        *table(["step", "s", "RSS MB", "charts ms", "database MB"], rows, right=set(range(5))),
        f"  RSS growth after the window ({long['window']:,} steps) filled: {long['rss_growth_after_window_mb']:+.1f} MB; "
        f"database {long['database_mb_per_million_steps']:.0f} MB per million steps",
    ]


def startup_lines(startup: dict) -> list[str]:
    header = ["case", "variant", "import s", "warm-up s", "first run: built", "first step", "full step",
              "later run: built", "first step", "full step"]  # fmt: skip
    rows = []
    for case, variants in startup["results"].items():
        for variant, row in variants.items():
            first, later = row["first_run"], row["later_run"]
            rows.append(
                [case, variant, f"{row['import_s']:.2f}", f"{row['warm_up_s']:.2f}"]
                + [f"{first[key]:.2f}" for key in ("built_s", "first_step_s", "full_step_s")]
                + [f"{later[key]:.2f}" for key in ("built_s", "first_step_s", "full_step_s")]
            )
    reuse = [
        f"  {case} / {variant}: later run on the kept steps: first step {row['later_run']['first_step_s']:.2f} s, full step "
        f"{row['later_run']['full_step_s']:.2f} s; compiled afresh {compiled['first_step_s']:.2f} s, {compiled['full_step_s']:.2f} s "
        f"(full step x{compiled['full_step_s'] / max(row['later_run']['full_step_s'], 1e-9):.1f} sooner)"
        for case, variants in startup["results"].items()
        for variant, row in variants.items()
        if (compiled := row.get("later_run_compiled"))  # results saved before the step pool have none
    ]
    return [
        f"Start -> first step (fresh process per sample, empty XLA cache; seconds from Trainer.start(), "
        f"medians of {startup['rounds']} interleaved rounds; 'full step': trains on every policy + XLA)",
        *table(header, rows, right=set(range(2, 10))),
        *(["A later run of one configuration in the process (training/loop/step_pool.py), side by side:", *reuse] if reuse else []),
    ]


def recording_lines(recording: dict) -> list[str]:
    rows = [
        [label, f"{row['median']:,.0f}", f"{row['min']:,.0f}", f"{row['max']:,.0f}", f"{row['vs_in_memory']:.3f}"]
        for label, row in recording["rows"].items()
    ]
    return [
        f"Recording every step (seed; {recording['repeats']} interleaved repeats x {recording['window_seconds']:g} s)",
        *table(["contender", "median steps/s", "min", "max", f"x {IN_MEMORY}"], rows, right={1, 2, 3, 4}),
        f"  Recorded: {recording['csv_rows']:,} CSV rows and {recording['steps_in_database']:,} database steps "
        f"of {recording['steps_trained']:,} trained.",
    ]
