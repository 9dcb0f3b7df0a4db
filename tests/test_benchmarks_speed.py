"""Issue #11's benchmark sections on tiny budgets: structure and invariants, never a speed."""

import math

from benchmarks import report, speed_report, startup
from benchmarks.recording import IN_MEMORY, RECORDING, run_recording


def test_recording_loses_no_step_to_the_csv_or_the_database():
    result = run_recording(repeats=1, window_seconds=0.2, warm_up_seconds=0.1, log=lambda _: None)
    assert set(result["rows"]) == {IN_MEMORY, RECORDING}
    share = result["rows"][RECORDING]["vs_in_memory"]
    assert math.isfinite(share) and share > 0
    # Every step the recording trainer trained is in its CSV file and in its database.
    assert result["csv_rows"] == result["steps_in_database"] == result["steps_trained"] > 0
    lines = speed_report.recording_lines(result)
    assert any(RECORDING in line for line in lines)
    (target,) = speed_report.targets({"recording": result})
    assert target["passed"] == (share >= speed_report.MIN_RECORDING_SHARE)


def test_startup_times_come_in_order_for_a_first_and_a_later_run():
    result = startup.child("seed", quick_start=True, warm=False)
    assert len(result["runs"]) == startup.RUNS_PER_PROCESS
    for run in result["runs"]:
        assert not run["failed"]
        assert 0 < run["built_s"] <= run["first_step_s"] <= run["full_step_s"]


def test_report_prints_issue_11_sections_from_saved_results():
    saved = {
        "machine": report.machine(),
        "mode": "saved",
        "startup": {
            "rounds": 1,
            "cases": ["seed"],
            "variants": [speed_report.SHIPPED_VARIANT],
            "results": {
                "seed": {
                    speed_report.SHIPPED_VARIANT: {
                        "import_s": 4.0, "warm_up_s": 2.0, "failed": [], "samples": [],
                        "first_run": {"built_s": 0.1, "first_step_s": 2.5, "full_step_s": 6.0},
                        "later_run": {"built_s": 0.1, "first_step_s": 1.5, "full_step_s": 5.0},
                    }
                }
            },
        },
    }  # fmt: skip
    saved["targets"] = report.evaluate_targets(saved)
    verdicts = {target["target"]: target["passed"] for target in saved["targets"]}
    assert verdicts == {
        "seed: Start -> first step, first run of a fresh process <= 3 s": True,
        "seed: Start -> first step, later runs <= 1 s": False,
    }
    printed = report.format_report(saved)
    assert "Start -> first step" in printed and "quick start + warm-up" in printed


def test_startup_prints_the_later_run_on_kept_steps_beside_one_compiled_afresh():
    row = {
        "import_s": 4.0, "warm_up_s": 2.0, "failed": [], "samples": [],
        "first_run": {"built_s": 0.1, "first_step_s": 2.5, "full_step_s": 6.0},
        "later_run_compiled": {"built_s": 0.1, "first_step_s": 1.5, "full_step_s": 5.0},
        "later_run": {"built_s": 0.1, "first_step_s": 0.2, "full_step_s": 0.5},
    }  # fmt: skip
    startup_section = {"rounds": 1, "cases": ["seed"], "variants": ["quick start"], "results": {"seed": {"quick start": row}}}
    printed = "\n".join(speed_report.startup_lines(startup_section))
    assert "seed / quick start: later run on the kept steps: first step 0.20 s, full step 0.50 s" in printed
    assert "compiled afresh 1.50 s, 5.00 s (full step x10.0 sooner)" in printed
    del row["later_run_compiled"]  # a result saved before the step pool
    assert "kept steps" not in "\n".join(speed_report.startup_lines(startup_section))
