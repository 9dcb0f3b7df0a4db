"""The benchmark's output structure, on tiny budgets. Timings are never asserted here.

One module-scoped run covers every section: the `seed` task stands in for the heavier task (its
step is too light, so the batch-size rule normally raises it to 512), which yields every target.
"""

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
from postgres_server import binaries_missing

from benchmarks import report
from benchmarks.__main__ import main
from benchmarks.persistence_cost import SERVER_VARIABLE, WITH_DATABASE, WITH_SERVER, WITHOUT_DATABASE
from benchmarks.run import FULL, QUICK, SECTIONS, default_sections, run_benchmark
from benchmarks.throughput import CEILING, HEAVY_BATCH_SIZE, KERAS_DEFAULT, KERAS_TUNED, MIN_HEAVY_STEP_SECONDS, MONITORED
from training.tasks import TASK_NAMES, get_task

TINY = dataclasses.replace(
    QUICK, name="tiny", repeats=1, window_seconds=0.2, heavy_window_seconds=0.2, warm_up_seconds=0.1,
    policy_repeats=1, policy_window_seconds=0.1, persistence_repeats=1, persistence_window_seconds=0.2,
    latency_trials=2, chart_repeats=1, heavy_task="seed",
)  # fmt: skip
CONTENDERS = (KERAS_DEFAULT, KERAS_TUNED, CEILING, MONITORED)
POLICIES = ("none", "global_norm", "per_tensor_norm", "value", "autoclip", "agc", "zclip")


def finite_positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def results(request):
    with pytest.MonkeyPatch.context() as patch:
        if not binaries_missing():  # the session's PostgreSQL cluster, not a second one started for the section
            server = request.getfixturevalue("postgres_server")
            url = server.make_database()
            request.addfinalizer(lambda: server.drop_database(url))
            patch.setenv(SERVER_VARIABLE, url)
        return run_benchmark(
            TINY, sections=("heavy", "policies", "persistence", "control", "dashboard"), log=lambda _: None
        )


def test_throughput_rows_have_finite_ratios(results):
    section = results["throughput"]["seed"]
    # A heavier task whose Keras step measured under MIN_HEAVY_STEP_SECONDS trains at a raised
    # batch; the check holds the decision to the step time the run itself measured.
    light = section["fit_step_ms"] < MIN_HEAVY_STEP_SECONDS * 1000
    assert section["batch_size"] == (HEAVY_BATCH_SIZE if light else 32)
    assert ("raised from 32" in section["batch_size_reason"]) == light
    assert set(section["rows"]) == set(CONTENDERS)
    for row in section["rows"].values():
        assert row["min"] <= row["median"] <= row["max"]
        for key in ("median", "vs_fit_default", "vs_fit_tuned", "vs_ceiling"):
            assert finite_positive(row[key]), (key, row[key])
    assert section["rows"][KERAS_DEFAULT]["vs_fit_default"] == 1.0
    assert section["rows"][CEILING]["vs_ceiling"] == 1.0


def test_policies_are_relative_to_global_norm(results):
    rows = results["policies"]["rows"]
    assert tuple(rows) == POLICIES
    assert rows["global_norm"]["vs_global_norm"] == 1.0
    assert all(finite_positive(row["vs_global_norm"]) for row in rows.values())


def test_persistence_is_relative_to_the_run_without_a_database(results):
    section = results["persistence"]
    rows = section["rows"]
    # A local PostgreSQL server is the third contender wherever its binaries are installed (CI).
    server = () if binaries_missing() else (WITH_SERVER,)
    assert tuple(rows) == (WITHOUT_DATABASE, WITH_DATABASE, *server)
    assert rows[WITHOUT_DATABASE]["vs_without_database"] == 1.0
    assert all(finite_positive(rows[label]["vs_without_database"]) for label in (WITH_DATABASE, *server))
    # Every window waited for the writer, so the database held every step trained.
    assert section["steps_in_database"] == section["steps_trained"] > 0
    assert len(section["catch_up_seconds"]["samples"]) == TINY.persistence_repeats
    assert section["database_mb"] > 0


def test_persistence_deletes_its_temporary_database(results):
    database = Path(results["persistence"]["database_path"])
    assert database.name == "runs.db"
    assert not database.parent.exists()


def test_control_measures_latency_and_traces(results):
    latency = results["control"]["latency"]
    assert len(latency["trials"]) == TINY.latency_trials
    assert all(trial["event_step_plus_one_is_first_new_step"] for trial in latency["trials"])
    assert finite_positive(latency["visible_ms"]["max"])
    traces = results["control"]["traces"]
    assert [change["change"] for change in traces["live_changes"]][:3] == [
        "set_clip_threshold(0.5)",
        'set_policy("autoclip", percentile=20)',
        'set_policy("autoclip", percentile=30)',
    ]
    assert traces["retraces_after_warm_up"] == 0  # live knobs are tf.Variables: never a retrace


def test_dashboard_cost_covers_both_store_sizes(results):
    sizes = results["dashboard"]["sizes"]
    assert set(sizes) == {"10000", "1000000"}
    for size in sizes.values():
        assert finite_positive(size["charts_ms"]["median"])
        assert size["store_nbytes"] > 0
        assert 0 < size["view_rows"] <= results["dashboard"]["max_points"]


def test_every_target_is_evaluated(results):
    names = [target["target"] for target in results["targets"]]
    assert len(names) == 11
    assert any("10x Keras fit default" in name for name in names)
    assert any("monitoring overhead" in name for name in names)
    assert "persistence costs <= 5% of steps/s on seed" in names
    for target in results["targets"]:
        assert isinstance(target["passed"], bool)
        assert target["by"]


def test_report_prints_every_table_and_target(results):
    text = report.format_report(results)
    assert text.startswith("Machine: ")
    for expected in (
        *CONTENDERS, *POLICIES, WITH_DATABASE, "Persistence cost", "Control latency", "Traces",
        "Dashboard cost", "Targets",
    ):  # fmt: skip
        assert expected in text
    target_lines = [line for line in text.splitlines() if " PASS " in line or " MISS " in line]
    assert len(target_lines) == len(results["targets"])


def test_results_are_json(results):
    loaded = json.loads(json.dumps(results))
    expected = {"machine", "mode", "budget", "throughput", "policies", "persistence", "control", "dashboard", "targets"}
    assert expected <= set(loaded)
    assert {"cpu", "cores", "tensorflow", "keras"} <= set(loaded["machine"])


def test_cli_runs_a_section_and_writes_json(tmp_path, capsys):
    path = tmp_path / "results.json"
    assert main(["--quick", "--sections", "dashboard", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Machine: ") and "store memory at 1M steps" in printed
    saved = json.loads(path.read_text())
    assert [target["target"] for target in saved["targets"]] == [
        "charts at 1M steps <= 1.5x the time at 10k",
        "charts at 1M steps < 150 ms",
        "store memory at 1M steps < 100 MB",
    ]
    assert main(["--from-json", str(path)]) == 0  # re-prints the saved run, measuring nothing
    assert capsys.readouterr().out == printed


def test_quick_leaves_out_an_xla_compiled_heavier_task_and_says_so():
    xla_task = next(name for name in TASK_NAMES if get_task(name).jit_compile is not False)  # None tries XLA
    plain_task = next(name for name in TASK_NAMES if get_task(name).jit_compile is False)
    sections, notes = default_sections(dataclasses.replace(QUICK, heavy_task=xla_task))
    assert sections == tuple(section for section in SECTIONS if section not in ("heavy", "char_lstm"))
    assert len(notes) == 2 and "--sections char_lstm" in notes[0]  # the LSTM's ~100 ms steps
    assert "--sections" in notes[1] and xla_task in notes[1]
    without_lstm = tuple(section for section in SECTIONS if section != "char_lstm")
    assert default_sections(dataclasses.replace(QUICK, heavy_task=plain_task)) == (without_lstm, notes[:1])
    assert default_sections(dataclasses.replace(FULL, heavy_task=xla_task)) == (SECTIONS, [])


def test_cli_refuses_an_unknown_section():
    with pytest.raises(SystemExit):
        main(["--sections", "throughput,warp_drive"])


def test_cli_refuses_unusable_files_and_an_empty_section_list_before_measuring(tmp_path, capsys):
    """Found by probing: --from-json gave tracebacks (FileNotFoundError, JSONDecodeError, KeyError),
    and --json was opened only after the run, so a long benchmark lost its results to a typo."""
    (tmp_path / "text.txt").write_text("not json")
    (tmp_path / "empty.json").write_text("{}")
    cases = {
        ("--from-json", str(tmp_path / "missing.json")): "No such file or directory",
        ("--from-json", str(tmp_path)): "Is a directory",
        ("--from-json", str(tmp_path / "text.txt")): "is not JSON",
        ("--from-json", str(tmp_path / "empty.json")): "is not a benchmark's results (saved with --json)",
        ("--sections", " , ", "--no-browser"): "--sections names no section; valid: throughput,",
        ("--sections", "dashboard", "--json", str(tmp_path / "missing" / "out.json")): "cannot write in",
        ("--sections", "dashboard", "--json", str(tmp_path)): "is a folder",
    }
    for argv, message in cases.items():
        with pytest.raises(SystemExit) as exit:
            main(list(argv))
        assert exit.value.code == 2, argv
        assert message in capsys.readouterr().err.strip().splitlines()[-1], argv
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty.json", "text.txt"]


HELP_WITHOUT_TENSORFLOW = """
import runpy, sys
sys.argv = ["benchmarks", *sys.argv[1:]]
try:
    runpy.run_module("benchmarks", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    print("exit", exit.code, "tensorflow" in sys.modules)
"""


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["--sections", "warp_drive"], 2)])
def test_help_and_a_refused_section_answer_without_loading_tensorflow(args, code):
    """`python -m benchmarks --help` took 3.5 s and printed TensorFlow's start-up logs: the
    throughput module imported it when the CLI only had to print its options."""
    import subprocess

    finished = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TENSORFLOW, *args], capture_output=True, text=True,
                              cwd=Path(__file__).parent.parent, timeout=120)  # fmt: skip
    assert finished.stdout.splitlines()[-1] == f"exit {code} False", (finished.stdout, finished.stderr[-2000:])
    assert ("usage: python -m benchmarks" in finished.stdout + finished.stderr) and "oneDNN" not in finished.stderr


def test_attach_section_measures_both_models_with_and_without_steps_per_execution():
    from benchmarks import attach_cost

    budget = dataclasses.replace(TINY, attach_repeats=1, attach_window_seconds=0.05, attach_latency_trials=2)
    results = run_benchmark(budget, sections=("attach",), log=lambda _: None)
    rows = results["attach"]["rows"]
    assert [(row["model"], row["steps_per_execution"]) for row in rows.values()] == [
        (model, steps) for model in attach_cost.MODELS for steps in attach_cost.STEPS_PER_EXECUTION
    ]
    for row in rows.values():
        assert finite_positive(row["ratio"]) and row["steps_per_window"] % row["steps_per_execution"] == 0
        assert set(row["steps_per_second"]) == {attach_cost.KERAS_CLIPPING, attach_cost.ATTACHED}
    targets = [target for target in results["targets"] if "attached fit" in target["target"]]
    assert len(targets) == 2 and all(target["target"].startswith(attach_cost.MID_SIZE) for target in targets)
    latency = results["attach"]["latency"]
    assert latency["trials"] == 2
    for key in ("applied_ms", "visible_ms"):
        assert 0 < latency[key]["median"] <= latency[key]["p95"] <= latency[key]["max"]
    assert latency["applied_ms"]["max"] <= latency["visible_ms"]["max"]  # applied before written
    assert "Attaching to fit" in report.format_report(results)


def test_switch_interval_section_measures_both_intervals_and_restores_the_process_setting():
    from benchmarks import switch_interval

    before = sys.getswitchinterval()
    budget = dataclasses.replace(TINY, switch_repeats=1, switch_window_seconds=0.2)
    results = run_benchmark(budget, sections=("switch_interval",), log=lambda _: None)
    assert sys.getswitchinterval() == before
    section = results["switch_interval"]
    assert list(section["rows"]) == list(switch_interval.LABELS.values())
    for row in section["rows"].values():
        assert 0 < row["first_step_s"]["median"] <= row["full_step_s"]["median"]
        assert row["steps_per_second"]["median"] > 0 and row["busy_loops_per_second"]["median"] > 0
    for key in ("rate_gain", "busy_share", "full_step_speedup", "first_step_speedup"):
        assert math.isfinite(section[key]["median"]) and section[key]["median"] > 0
    assert results["targets"] == switch_interval.targets(section, report.at_least)  # wired into the report
    assert "Switch interval: a new seed run" in report.format_report(results)


def test_forking_section_measures_snapshots_fork_and_sweep_and_reports_its_targets():
    """A smoke of the forking section (issue #21): the figures are there and wired into the report
    (the measurements themselves are the benchmark's: `python -m benchmarks --sections forking`)."""
    from benchmarks import forking

    budget = dataclasses.replace(QUICK, forking_repeats=2, forking_window_seconds=0.2, fork_trials=1,
                                 sweep_prefix_steps=300, sweep_steps=100)  # fmt: skip
    results = run_benchmark(budget, sections=("forking",), log=lambda _: None)
    section = results["forking"]
    assert section["snapshots"]["rates"]["snapshots"]["median"] > 0 and section["snapshots"]["bytes_per_snapshot"] > 0
    assert all(0 <= share < 0.5 for share in section["snapshots"]["time_share"]["samples"])
    assert 0 < section["fork_seconds"]["median"] < 60
    assert section["sweep"]["done"] and section["sweep"]["scratch_seconds"] > 0
    assert results["targets"] == forking.targets(section)
    printed = report.format_report(results)
    assert "Fork -> first branch step" in printed and "runs from scratch" in printed and "time in snapshots" in printed


def _viewer_phase(tabs: int, stall: float, failed: dict) -> dict:
    return {
        "tabs": tabs, "seconds": 60.0, "longest_stall_s": stall, "stall_per_tab_s": [stall] * tabs,
        "changes_per_tab": [30] * tabs, "failed_tabs": failed, "steps_per_second": 40_000.0 if tabs == 1 else 32_000.0,
        "health_p95_ms": 20.0, "health_max_ms": 240.0, "health_samples": 200, "server_cpu_per_second": 1.0,
        "renderer_per_tab": [{"TaskDuration": 0.1, "ScriptDuration": 0.06, "LayoutDuration": 0.01,
                              "RecalcStyleDuration": 0.01, "ProcessTime": 0.15}] * tabs,
        "renderers_measured": tabs, "renderer_task_per_second": 0.1 * tabs, "renderer_script_per_second": 0.06 * tabs,
        "renderer_layout_style_per_second": 0.02 * tabs, "renderer_process_per_second": 0.15 * tabs,
        "browser_cpu_per_second": 0.2 * tabs, "machine_busy_per_second": 2.0, "others_cpu_per_second": 0.0,
        "rss_mb_start": 1000.0, "rss_mb_end": 1002.0,
    }  # fmt: skip


def test_viewers_targets_and_cpu_split_from_a_saved_result():
    """Issue #20's viewer targets are judged from the results dict alone; a tab that did not report
    fails the stall target even when the others kept within it, and a failed stage is printed."""
    viewers = {
        "tabs": 10, "seconds_per_phase": 60.0, "errors": {"race": "TimeoutError: Locator.click"},
        "open_to_usable_s": 1.5, "first_run_first_step_s": 3.5, "later_run_first_step_s": 0.9,
        "phases": [_viewer_phase(1, 1.0, {}), _viewer_phase(10, 2.5, {"3": "TimeoutError: evaluate"})],
        "rate_ratio": 0.8, "cpu_ratio": 1.1, "rss_growth_mb": 2.0,
    }  # fmt: skip
    results = {"machine": {"cpu": "test", "cores": 2, "usable_cores": 2, "platform": "p", "python": "3",
                           "tensorflow": "t", "keras": "k", "load_average_1min": None}, "mode": "m", "viewers": viewers}  # fmt: skip
    verdicts = {target["target"]: target["passed"] for target in report.evaluate_targets(results)}
    assert verdicts == {
        "page: open -> Start enabled, fresh server <= 2 s": True,
        "page: Start -> first step counted, fresh server <= 3 s": False,
        "page: Start -> first step counted, later run <= 1 s": True,
        "10 tabs: every step counter advances at least every 3 s": False,  # tab 4 did not report
        "10 tabs: /_stcore/health answers within 250 ms throughout (max)": True,
        "10 tabs: training rate >= 75% of one tab's": True,
        "10 tabs: server CPU per second <= 1.5x one tab's": True,
    }
    printed = report.format_report({**results, "targets": report.evaluate_targets(results)})
    assert "server 1.00 + all Chromium 2.00 (of which 1.00 in the renderers' main-thread tasks (0.100 per tab" in printed
    assert "each redraw cost its renderer 200 ms of main-thread tasks" in printed  # 0.1 s/s x 60 s / 30 redraws
    assert "tab 4 failed: TimeoutError: evaluate" in printed
    assert "race failed: TimeoutError: Locator.click" in printed


def test_the_long_run_memory_target_is_judged_from_a_saved_result():
    """Dropped once by accident with the viewers' old copy (958c992): every section's targets reach the report."""
    from benchmarks.speed_report import MAX_RSS_GROWTH_MB

    for growth, passed in ((12.5, True), (MAX_RSS_GROWTH_MB + 1, False)):
        found = [t for t in report.evaluate_targets({"long_run": {"steps": 5_000_000, "rss_growth_after_window_mb": growth}})
                 if t["target"].startswith("long run")]  # fmt: skip
        assert [(t["target"], t["passed"]) for t in found] == [
            ("long run (5,000,000 steps): RSS growth after the window filled < 50 MB", passed)
        ]
