"""A new run trains on while its full step is traced, compiled and swapped in (issue #20).

The guard is loose on purpose: CI machines are noisy. It runs the page's case of
`python -m benchmarks --sections step_gaps` (seed at the page's default pace beside a thread
running pure Python, as the page's script thread drawing charts, in a fresh process) and bounds
the worst gap between consecutive steps' times at MAX_GAP_SECONDS; the target is 0.5 s and the
figures are the benchmark's (benchmarks/RESULTS.md). Measured on this 2-core machine in that
case: with the full step traced on the training thread, as before #20, the worst gap was
2.42-2.72 s (load 1-12; at the first chunk's end, where the trace ran); traced on the compile
thread, 0.24-0.29 s. The other tests check the benchmark's arithmetic and its report, without
TensorFlow.
"""

import numpy as np
import pytest

from benchmarks import step_gaps
from benchmarks.run import evaluate_targets, format_report
from benchmarks.step_gaps import AFTER, BEFORE, PAGE_PACE, Case, GapSink, measure_in_a_fresh_process, where

MAX_GAP_SECONDS = 1.5


def test_a_fresh_run_trains_on_while_its_full_step_is_prepared():
    # Until 2 s after the swap to the full step (at most 240 s: then full_step_s says it never came).
    result = measure_in_a_fresh_process(Case("seed", PAGE_PACE, busy=True), 240.0, until_swapped=True)
    assert result["full_step_s"] is not None, f"the full step was not swapped in: {result}"
    assert result["steps"] > result["swap_step"], result  # steps ran on the full step
    assert result["worst_gap_s"] < MAX_GAP_SECONDS, result


def test_the_worst_gap_is_found_between_chunks_and_inside_one():
    sink = GapSink()
    sink({"step": np.arange(1, 17), "time_s": 100.0 + 0.1 * np.arange(1, 17)})  # steps 0.1 s apart
    sink({"step": np.arange(17, 47), "time_s": 103.0 + 0.001 * np.arange(30)})  # 1.4 s after step 16
    gap, step, before, after = sink.worst_gap()
    assert (step, before, after) == (17, 101.6, 103.0) and gap == pytest.approx(1.4)
    sink({"step": np.arange(47, 50), "time_s": np.array([103.1, 105.1, 107.1])})  # a slow chunk's spread
    gap, step, _, _ = sink.worst_gap()
    assert step == 48 and gap == pytest.approx(2.0)


def test_a_gap_is_placed_by_the_first_chunk_and_the_swap():
    assert where(5, (0.5, 0.6), 16, 8.0) == "inside the first chunk"
    assert where(17, (1.6, 3.0), 16, 8.0) == "at the first chunk's end"
    assert where(400, (4.0, 4.3), 16, 8.0) == "while the full step compiled"
    assert where(400, (4.0, 4.3), 16, None) == "while the full step compiled"  # no swap in the window
    assert where(900, (7.95, 8.2), 16, 8.0) == "at the swap"
    assert where(2000, (12.0, 12.3), 16, 8.0) == "after the swap"


def test_the_section_is_summarized_judged_and_printed(monkeypatch):
    def measured(case, seconds, trace_on_training_thread=False, until_swapped=False):
        gap = 1.3 if trace_on_training_thread else 0.2
        return {"case": case.name, "first_step_s": 1.0, "full_step_s": 4.0, "worst_gap_s": gap, "worst_gap_step": 17,
                "worst_gap_where": "at the first chunk's end", "worst_database_gap_s": 0.6, "load_average_1min": 1.5}  # fmt: skip

    monkeypatch.setattr(step_gaps, "measure_in_a_fresh_process", measured)
    cases = (Case("seed", None), Case("seed", PAGE_PACE, busy=True))
    section = step_gaps.run_step_gaps(2, 30.0, lambda _: None, cases=cases)
    rows = section["rows"]
    assert list(rows) == ["seed, full speed", "seed, 300 steps/s, busy Python beside"]
    assert rows["seed, full speed"][BEFORE]["worst_gap_s"] == 1.3 and rows["seed, full speed"][AFTER]["swapped"] == 2
    machine = {"cpu": "a CPU", "cores": 2, "usable_cores": 2, "platform": "Linux", "python": "3", "tensorflow": "2",
               "keras": "3", "load_average_1min": 1.0}  # fmt: skip
    results = {"machine": machine, "mode": "test", "step_gaps": section}
    results["targets"] = evaluate_targets(results)
    assert [target["passed"] for target in results["targets"]] == [True, True]  # judged on the #20 variant
    text = format_report(results)
    assert text.index("Step gaps (issue #20)") < text.index("Targets") < text.index("worst gap between steps")
    assert "seed, 300 steps/s, busy Python beside" in text and BEFORE in text
