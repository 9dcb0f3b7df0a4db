"""Runs the benchmark's sections within a time budget and collects one results dict."""

from __future__ import annotations

import dataclasses

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from benchmarks import report, step_gaps
from benchmarks.targets import table

SECTIONS = (
    "throughput", "heavy", "policies", "persistence", "recording", "control", "dashboard", "char_lstm",
    "startup", "viewers", "long_run", "attach", "switch_interval", "forking", "step_gaps",
)  # fmt: skip


@dataclass(frozen=True)
class Budget:
    """How long to measure. `full` is for the record; `quick` is a smoke run (9-12 minutes on 2 busy cores)."""

    name: str
    repeats: int  # interleaved repeats of every throughput contender
    window_seconds: float  # each throughput measurement, after warm-up
    heavy_window_seconds: float  # the heavier task's steps are ~100x longer
    min_chunks: int  # a trainer's window also spans at least this many chunks
    warm_up_seconds: float  # after the compile, before the first measurement
    policy_repeats: int
    policy_window_seconds: float
    persistence_repeats: int  # seed with and without a run database, interleaved
    persistence_window_seconds: float  # several of the writer's 0.5 s commits per window
    latency_trials: int
    store_sizes: tuple[int, ...]
    chart_repeats: int
    heavy_task: str = "digits"  # the CNN: steps of milliseconds, where overhead should vanish
    # Run the heavier task by default even if it XLA-compiles. Off for --quick: on 2 shared cores
    # that compile alone (conv inside the compiled loop) took 40-100 s.
    heavy_even_if_xla: bool = True
    attach_repeats: int = 5  # LiveClipping on a user's fit vs Keras' own clipping (issue #10)
    attach_window_seconds: float = 2.0
    attach_latency_trials: int = 20
    char_lstm_repeats: int = 5
    char_lstm_window_seconds: float = 4.0  # ~100 ms steps: tens of steps per window
    startup_rounds: int = 2  # fresh processes per case and variant (benchmarks/startup.py)
    recording_repeats: int = 5
    recording_window_seconds: float = 3.0
    viewer_tabs: int = 10
    viewer_seconds: float = 60.0  # each phase: one tab, then all tabs (issue #20: ten tabs for 60 s)
    long_run_steps: int = 5_000_000
    switch_repeats: int = 5  # alternating rounds at Python's 5 ms and Clipwatch's 0.5 ms
    switch_window_seconds: float = 3.0
    forking_repeats: int = 7  # alternating windows with and without snapshots (issue #21)
    forking_window_seconds: float = 2.0
    fork_trials: int = 10
    sweep_prefix_steps: int = 20_000  # a sweep from this step vs runs from scratch
    sweep_steps: int = 2_000
    step_gap_repeats: int = 3  # fresh processes per case and variant (benchmarks/step_gaps.py)
    step_gap_seconds: float = 30.0  # each run's window after Start (issue #20: the first 30 s)


# Repeats and windows (seconds) per section; --quick trades precision for a run of minutes.
FULL = Budget(
    name="full", repeats=7, window_seconds=1.5, heavy_window_seconds=3.0, min_chunks=5, warm_up_seconds=1.0,
    policy_repeats=5, policy_window_seconds=1.0, persistence_repeats=7, persistence_window_seconds=3.0,
    latency_trials=20, store_sizes=(10_000, 1_000_000), chart_repeats=15,
)  # fmt: skip
QUICK = dataclasses.replace(
    FULL, name="quick", repeats=2, window_seconds=0.5, heavy_window_seconds=1.0, min_chunks=1,
    warm_up_seconds=0.3, policy_repeats=1, policy_window_seconds=0.4, persistence_repeats=2,
    persistence_window_seconds=1.0, latency_trials=6, chart_repeats=5, heavy_even_if_xla=False,
    attach_repeats=2, attach_window_seconds=0.5, attach_latency_trials=6,
    char_lstm_repeats=1, char_lstm_window_seconds=2.0,
    startup_rounds=1, recording_repeats=2, recording_window_seconds=1.0, viewer_tabs=3, viewer_seconds=10.0,
    long_run_steps=500_000, switch_repeats=2, switch_window_seconds=1.0,
    forking_repeats=3, forking_window_seconds=1.0, fork_trials=3, sweep_prefix_steps=5_000, sweep_steps=500,
    step_gap_repeats=1, step_gap_seconds=12.0,
)  # fmt: skip


def default_sections(budget: Budget, browser: bool = True) -> tuple[tuple[str, ...], list[str]]:
    """The sections to run when none are named, and a note for each one left out."""
    import os

    from benchmarks.browser import CHROMIUM

    sections, notes = _sections_for_budget(budget)
    if not browser or not os.path.exists(CHROMIUM):
        sections = tuple(section for section in sections if section != "viewers")
        why = "--no-browser" if not browser else f"{CHROMIUM} is missing"
        notes = [*notes, f"the browser section (viewers) is left out: {why}"]
    return sections, notes


def _sections_for_budget(budget: Budget) -> tuple[tuple[str, ...], list[str]]:
    from training.tasks import get_task

    if budget.heavy_even_if_xla:
        return SECTIONS, []
    # The LSTM's steps take ~100 ms on 2 shared cores: a quick run leaves it out (issue #9).
    sections = tuple(section for section in SECTIONS if section != "char_lstm")
    notes = ["the character LSTM is left out of a quick run; add it with --sections char_lstm"]
    if get_task(budget.heavy_task).jit_compile is False:  # None tries XLA first: counts as XLA
        return sections, notes
    note = (
        f"the heavier task ({budget.heavy_task}) is left out of a {budget.name} run: it XLA-compiles, "
        "which takes 40-100 s on 2 shared cores; add it with --sections "
        + ",".join(SECTIONS)
    )
    return tuple(section for section in sections if section != "heavy"), [*notes, note]


def _run_char_lstm(budget: Budget, log: Callable[[str], None]) -> dict:
    from benchmarks.char_lstm import run_char_lstm

    return run_char_lstm(budget.char_lstm_repeats, budget.char_lstm_window_seconds, budget.warm_up_seconds, log)


def evaluate_targets(results: dict) -> list[dict]:
    """The report's targets, and the step gaps' (issue #20) when that section ran."""
    found = report.evaluate_targets(results)
    return found + (step_gaps.targets(results["step_gaps"]) if results.get("step_gaps") else [])


def format_report(results: dict) -> str:
    """The report, with the step gaps' table before its targets when that section ran."""
    text = report.format_report(results)
    if not results.get("step_gaps"):
        return text
    head, targets = text.rsplit("\nTargets\n", 1)
    return "\n".join([head, *step_gaps.lines(results["step_gaps"], table), "", "Targets", targets])


def run_benchmark(
    budget: Budget,
    sections=None,
    log: Callable[[str], None] = print,
    notes: list[str] | None = None,
    browser: bool = True,
) -> dict:
    """Run `sections` (a subset of SECTIONS; None: the budget's default) and return the results,
    targets included."""
    if sections is None:
        sections, notes = default_sections(budget, browser)
    from benchmarks import (
        attach_cost, control, dashboard_cost, forking, long_run, persistence_cost, recording, startup, switch_interval,
        throughput, viewers,
    )  # fmt: skip

    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"Unknown sections {sorted(unknown)}. Valid sections: {', '.join(SECTIONS)}")
    started = time.perf_counter()
    results: dict = {
        "machine": report.machine(),
        "mode": f"{budget.name} ({budget.repeats} interleaved repeats x {budget.window_seconds:g} s "
        f"windows; heavier task {budget.heavy_window_seconds:g} s)",
        "budget": asdict(budget),
        "heavy_task": budget.heavy_task,
        "notes": list(notes or []),
        "throughput": {},
        "errors": {},  # section -> why it has no figures
    }

    def section(name: str, message: str, measure: Callable[[], Any], key: tuple[str, ...] | None = None) -> None:
        """Run one section if asked; a section that raises is reported, and the others still run."""
        if name not in sections:
            return
        log(message)
        try:
            value = measure()
        except Exception as error:  # one broken section must not cost the others' figures
            results["errors"][name] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            log(f"  {name} failed: {results['errors'][name]}")
            return
        *parents, last = key or (name,)
        target = results
        for parent in parents:
            target = target[parent]
        target[last] = value

    section("throughput", "throughput: seed", lambda: throughput.run_task(
        "seed", budget.repeats, budget.window_seconds, budget.warm_up_seconds, log, min_chunks=budget.min_chunks,
    ), ("throughput", "seed"))
    section("heavy", f"throughput: {budget.heavy_task} (heavier task)", lambda: throughput.run_task(
        budget.heavy_task, budget.repeats, budget.heavy_window_seconds, budget.warm_up_seconds, log,
        heavy=True, min_chunks=budget.min_chunks,
    ), ("throughput", budget.heavy_task))
    section("policies", "policies", lambda: throughput.run_policies(
        budget.policy_repeats, budget.policy_window_seconds, budget.warm_up_seconds, log
    ))
    section("persistence", "persistence cost: seed with and without a run database", lambda: persistence_cost.run_persistence(
        budget.persistence_repeats, budget.persistence_window_seconds, budget.warm_up_seconds, log,
        min_chunks=budget.min_chunks,
    ))
    section("recording", "recording every step: CSV + run database vs in memory", lambda: recording.run_recording(
        budget.recording_repeats, budget.recording_window_seconds, budget.warm_up_seconds, log,
        min_chunks=budget.min_chunks,
    ))
    section("control", "control latency and traces", lambda: control.run_control(
        budget.latency_trials, budget.warm_up_seconds, log
    ))
    section("char_lstm", "throughput: character LSTM plug-in", lambda: _run_char_lstm(budget, log))
    section("dashboard", "dashboard cost", lambda: dashboard_cost.run_dashboard(
        budget.store_sizes, budget.chart_repeats, log
    ))
    section("startup", "startup: Start -> first step in fresh processes", lambda: startup.run_startup(
        budget.startup_rounds, log
    ))
    section("viewers", f"viewers: the page in Chromium, 1 and {budget.viewer_tabs} tabs", lambda: viewers.run_viewers(
        budget.viewer_tabs, budget.viewer_seconds, log
    ))
    section("long_run", f"long run: seed, {budget.long_run_steps:,} steps with a run database", lambda: long_run.run_long(
        budget.long_run_steps, log
    ))
    section("attach", "attaching to fit: LiveClipping vs Keras' own clipping", lambda: attach_cost.run_attach_section(
        budget.attach_repeats, budget.attach_window_seconds, budget.attach_latency_trials, log
    ))
    section("switch_interval", "switch interval: 5 ms vs 0.5 ms beside a busy Python thread", lambda: switch_interval.run_switch_interval(
        budget.switch_repeats, budget.switch_window_seconds, log
    ))
    section("forking", "forking: snapshot cost, Fork -> first branch step, a sweep vs runs from scratch", lambda: forking.run_forking(
        budget.forking_repeats, budget.forking_window_seconds, budget.fork_trials, log, budget.sweep_prefix_steps,
        budget.sweep_steps,
    ))  # fmt: skip
    section("step_gaps", "step gaps: a new run's steps while its full step is prepared (fresh processes)", lambda: step_gaps.run_step_gaps(
        budget.step_gap_repeats, budget.step_gap_seconds, log
    ))
    results["machine"]["load_average_1min_end"] = report.machine()["load_average_1min"]
    results["targets"] = evaluate_targets(results)
    results["seconds"] = time.perf_counter() - started
    return results
