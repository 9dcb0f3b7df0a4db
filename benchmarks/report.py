"""The benchmark's output: the machine line, the tables, and the targets with PASS/MISS.

Everything here is a pure function of the results dict that `benchmarks.run` builds (and that
`--json` writes), so the report can be re-made from a saved JSON file.
"""

from __future__ import annotations

import math
import os
import platform
import sys

from benchmarks import attach_cost, forking, switch_interval, viewers
from benchmarks.char_lstm import char_lstm_lines, char_lstm_targets
from benchmarks.persistence_cost import WITH_DATABASE, WITHOUT_DATABASE
from benchmarks.targets import at_least, at_most_cost, share_at_least, table, target
from benchmarks.throughput import CEILING, KERAS_DEFAULT, KERAS_TUNED, MONITORED

# (key, ratio the target is on, the limit) — the targets.
SEED_VS_FIT_DEFAULT = 10.0
SEED_VS_FIT_TUNED = 3.0
SEED_SHARE_OF_CEILING = 0.85
HEAVY_MAX_OVERHEAD = 0.03
MAX_PERSISTENCE_COST = 0.05  # issue #5
MAX_LATENCY_MS = 50.0
MAX_LATENCY_CHUNKS = 1.0
MAX_CHARTS_GROWTH = 1.5
MAX_CHARTS_MS = 150.0
MAX_STORE_MB = 100.0
SMALL_STORE, LARGE_STORE = "10000", "1000000"


def machine() -> dict:
    """CPU model, cores and library versions, for the top line."""
    import keras
    import tensorflow as tf

    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def machine_line(info: dict) -> str:
    load, load_end = info.get("load_average_1min"), info.get("load_average_1min_end")
    load_text = f", load average {load:.2f} at start" if load is not None else ""
    if load_end is not None:
        load_text += f" and {load_end:.2f} at end"
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
        f"{info['platform']}, Python {info['python']}, TensorFlow {info['tensorflow']}, "
        f"Keras {info['keras']}{load_text}"
    )


# --- targets --------------------------------------------------------------------------------------










def evaluate_targets(results: dict) -> list[dict]:
    """One entry per target of issues #4 and #5 whose section ran."""
    targets = []
    throughput = results.get("throughput", {})
    seed = throughput.get("seed", {}).get("rows", {})
    if MONITORED in seed:
        monitored = seed[MONITORED]
        if KERAS_DEFAULT in seed:
            targets.append(
                at_least("seed, full monitoring >= 10x Keras fit default", monitored["vs_fit_default"], SEED_VS_FIT_DEFAULT)
            )
        if KERAS_TUNED in seed:
            targets.append(
                at_least("seed, full monitoring >= 3x tuned fit", monitored["vs_fit_tuned"], SEED_VS_FIT_TUNED)
            )
        if CEILING in seed:
            targets.append(
                share_at_least(
                    "seed, full monitoring >= 85% of the ceiling",
                    monitored["vs_ceiling"],
                    monitored["vs_ceiling_range"],
                    SEED_SHARE_OF_CEILING,
                )
            )
    heavy_name = results.get("heavy_task")
    heavy = throughput.get(heavy_name, {}).get("rows", {}) if heavy_name else {}
    if MONITORED in heavy and CEILING in heavy:
        targets.append(
            at_most_cost(
                f"{heavy_name}, monitoring overhead <= 3% vs the ceiling",
                heavy[MONITORED]["vs_ceiling"], heavy[MONITORED]["vs_ceiling_range"], HEAVY_MAX_OVERHEAD,
            )
        )  # fmt: skip
    persistence = results.get("persistence", {})
    rows = persistence.get("rows", {})
    if WITH_DATABASE in rows and WITHOUT_DATABASE in rows:
        targets.append(
            at_most_cost(
                f"persistence costs <= 5% of steps/s on {persistence['task']}",
                rows[WITH_DATABASE]["vs_without_database"], rows[WITH_DATABASE]["vs_without_database_range"],
                MAX_PERSISTENCE_COST,
            )
        )  # fmt: skip
    control = results.get("control")
    if control:
        latency = control["latency"]
        chunks = latency["chunks_on_old_value"]["max"]
        targets.append(
            target(
                "control latency <= one chunk (chunks finished on the old value after the call, worst trial)",
                f"{chunks} chunk ({latency['steps_on_old_value']['max']} steps)",
                chunks <= MAX_LATENCY_CHUNKS,
                "within the chunk in flight" if chunks <= MAX_LATENCY_CHUNKS else f"{chunks - MAX_LATENCY_CHUNKS:g} chunk too many",
                chunks,
            )
        )
        worst = latency["visible_ms"]["max"]
        within = sum(trial["visible_ms"] <= MAX_LATENCY_MS for trial in latency["trials"])
        by = f"{MAX_LATENCY_MS - worst:.1f} ms to spare" if worst <= MAX_LATENCY_MS else f"over by {worst - MAX_LATENCY_MS:.1f} ms ({worst / MAX_LATENCY_MS - 1:.0%})"
        targets.append(
            target(
                "control latency <= 50 ms (until the new value is recorded, worst trial)",
                f"{worst:.1f} ms (median {latency['visible_ms']['median']:.1f} ms; "
                f"{within}/{len(latency['trials'])} within 50 ms)",
                worst <= MAX_LATENCY_MS,
                by,
                worst,
            )
        )
        retraces = control["traces"]["retraces_after_warm_up"]
        retraces += results.get("policies", {}).get("retraces_while_switching", 0)
        targets.append(
            target(
                "zero retraces after warm-up (live changes and policy switches)",
                f"{retraces} retraces",
                retraces == 0,
                "none" if retraces == 0 else f"{retraces} too many",
                retraces,
            )
        )
    sizes = results.get("dashboard", {}).get("sizes", {})
    if SMALL_STORE in sizes and LARGE_STORE in sizes:
        small = sizes[SMALL_STORE]["charts_ms"]["median"]
        large = sizes[LARGE_STORE]["charts_ms"]["median"]
        growth = large / small
        targets.append(
            target(
                "charts at 1M steps <= 1.5x the time at 10k",
                f"{growth:.2f}x ({large:.1f} vs {small:.1f} ms)",
                growth <= MAX_CHARTS_GROWTH,
                f"{MAX_CHARTS_GROWTH - growth:.2f}x to spare" if growth <= MAX_CHARTS_GROWTH else f"over by {growth - MAX_CHARTS_GROWTH:.2f}x",
                growth,
            )
        )
        targets.append(
            target(
                "charts at 1M steps < 150 ms",
                f"{large:.1f} ms",
                large < MAX_CHARTS_MS,
                f"{MAX_CHARTS_MS - large:.1f} ms to spare" if large < MAX_CHARTS_MS else f"over by {large - MAX_CHARTS_MS:.1f} ms",
                large,
            )
        )
        megabytes = sizes[LARGE_STORE]["store_mb"]
        targets.append(
            target(
                "store memory at 1M steps < 100 MB",
                f"{megabytes:.1f} MB",
                megabytes < MAX_STORE_MB,
                f"{MAX_STORE_MB - megabytes:.1f} MB to spare" if megabytes < MAX_STORE_MB else f"over by {megabytes - MAX_STORE_MB:.1f} MB",
                megabytes,
            )
        )
    targets += char_lstm_targets(results.get("char_lstm", {}), at_least)
    from benchmarks import speed_report  # issue #11's sections

    forking_targets = forking.targets(results["forking"]) if results.get("forking") else []
    viewer_targets = viewers.targets(results["viewers"]) if results.get("viewers") else []  # issue #20's
    targets += speed_report.targets(results) + viewer_targets
    return targets + _attach_targets(results) + _switch_targets(results) + forking_targets


# --- the printed report ---------------------------------------------------------------------------


def _attach_targets(results: dict) -> list[dict]:
    return attach_cost.targets(results["attach"], target) if results.get("attach") else []


def _switch_targets(results: dict) -> list[dict]:
    return switch_interval.targets(results["switch_interval"], at_least) if results.get("switch_interval") else []




def _ratio(value) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _throughput_lines(results: dict) -> list[str]:
    header = ["task", "batch", "contender", "median steps/s", "min", "max", "x fit default", "x tuned fit", "x ceiling"]
    rows = []
    notes = []
    for task_name, section in results.get("throughput", {}).items():
        for label, row in section["rows"].items():
            rows.append(
                [
                    task_name,
                    str(section["batch_size"]),
                    label,
                    f"{row['median']:,.1f}" if row["median"] < 100 else f"{row['median']:,.0f}",
                    f"{row['min']:,.1f}" if row["min"] < 100 else f"{row['min']:,.0f}",
                    f"{row['max']:,.1f}" if row["max"] < 100 else f"{row['max']:,.0f}",
                    _ratio(row["vs_fit_default"]),
                    _ratio(row["vs_fit_tuned"]),
                    _ratio(row["vs_ceiling"]),
                ]
            )
        details = ", ".join(
            f"{label}: first chunk {row['first_chunk_seconds']:.1f} s, chunk {row['chunk_steps']} steps"
            for label, row in section["rows"].items()
            if "chunk_steps" in row
        )
        notes.append(
            f"  {task_name}: batch size {section['batch_size']} ({section['batch_size_reason']}); "
            f"XLA by default: {section['jit_compile']}; {section['repeats']} repeats x "
            f"{section['window_seconds']:g} s. {details}."
        )
    if not rows:
        return []
    lines = [
        "Throughput (steps/s: median, min, max over interleaved repeats; each ratio is the median "
        "over repeats of the ratio within a repeat)"
    ]
    lines += table(header, rows, right={1, 3, 4, 5, 6, 7, 8})
    lines += [
        "Notes:",
        *notes,
        "  Keras fit default: numpy arrays, batch_size, epochs, compile() defaults, "
        "optimizer global_clipnorm=1.0. Tuned: steps_per_execution=50, jit_compile=True, the same "
        "arrays as a shuffled, repeated, prefetched tf.data pipeline (with arrays, each epoch would "
        "end an execution early).",
        "  Clipwatch: Trainer(policy='global_norm', clip_threshold=1.0); the ceiling is "
        "Trainer(monitoring=False), the same compiled chunk loop recording nothing. Batches are "
        "sampled in-graph with replacement; Keras walks shuffled epochs.",
    ]
    return lines


def _policy_lines(policies: dict) -> list[str]:
    header = ["policy", "median steps/s", "min", "max", "x global_norm"]
    rows = [
        [name, f"{row['median']:,.0f}", f"{row['min']:,.0f}", f"{row['max']:,.0f}", f"{row['vs_global_norm']:.3f}"]
        for name, row in policies["rows"].items()
    ]
    return [
        f"Policies on {policies['task']} (full monitoring; one trainer switched live; "
        f"{policies['repeats']} repeats x {policies['window_seconds']:g} s; "
        f"retraces while switching: {policies['retraces_while_switching']})",
        *table(header, rows, right={1, 2, 3, 4}),
    ]


def _persistence_lines(persistence: dict) -> list[str]:
    header = ["contender", "median steps/s", "min", "max", "x without database"]
    rows = [
        [label, f"{row['median']:,.0f}", f"{row['min']:,.0f}", f"{row['max']:,.0f}", _ratio(row["vs_without_database"])]
        for label, row in persistence["rows"].items()
    ]
    catch_up = persistence["catch_up_seconds"]
    return [
        f"Persistence cost ({persistence['task']}, full monitoring, with and without a RunDatabase in a "
        f"temporary directory; {persistence['repeats']} interleaved repeats x "
        f"{persistence['window_seconds']:g} s; the ratio is the median of the ratios within a repeat)",
        *table(header, rows, right={1, 2, 3, 4}),
        f"  After each window the database held every step {catch_up['median']:.2f} s later (median; "
        f"max {catch_up['max']:.2f} s; the writer commits every {persistence['flush_seconds']:g} s, "
        f"so about {persistence['flush_seconds']:g} s means no backlog). Written: "
        f"{persistence['steps_in_database']:,} of {persistence['steps_trained']:,} steps, "
        f"{persistence['database_mb']:.1f} MB.",
    ]


def _control_lines(control: dict) -> list[str]:
    latency, traces = control["latency"], control["traces"]
    lines = [
        f"Control latency ({control['task']}, full monitoring, {len(latency['trials'])} calls of "
        "set_clip_threshold on a running trainer)",
        f"  until the first step with the new value is recorded: median "
        f"{latency['visible_ms']['median']:.1f} ms, max {latency['visible_ms']['max']:.1f} ms",
        f"  until the training thread applies it:               median "
        f"{latency['applied_ms']['median']:.1f} ms, max {latency['applied_ms']['max']:.1f} ms",
        f"  chunks finished on the old value after the call: median "
        f"{latency['chunks_on_old_value']['median']:g}, max {latency['chunks_on_old_value']['max']} "
        f"(steps: median {latency['steps_on_old_value']['median']:g}, max "
        f"{latency['steps_on_old_value']['max']}; the first new chunk: median "
        f"{latency['first_new_chunk_steps']['median']:g} steps)",
        "",
        f"Traces (trace_count of the compiled chunk; {traces['trace_count_after_warm_up']} after warm-up)",
    ]
    rows = [[change["change"], str(change["before"]), str(change["after"])] for change in traces["live_changes"]]
    structural = traces["structural_change"]
    rows.append([structural["change"] + "  (structural: retraces by design)", str(structural["before"]), str(structural["after"])])
    lines += table(["change", "before", "after"], rows, right={1, 2})
    return lines


def _dashboard_lines(dashboard: dict) -> list[str]:
    header = ["steps", "charts median ms", "min", "max", "through Altair ms", "ratio", "view() ms", "view rows", "store MB"]
    rows = [
        [
            f"{size['steps']:,}",
            f"{size['charts_ms']['median']:.1f}",
            f"{size['charts_ms']['min']:.1f}",
            f"{size['charts_ms']['max']:.1f}",
            f"{size['altair_charts_ms']['median']:.1f}" if "altair_charts_ms" in size else "-",
            _ratio(size.get("direct_vs_altair")),
            f"{size['view_ms_median']:.2f}",
            str(size["view_rows"]),
            f"{size['store_mb']:.2f}",
        ]
        for size in dashboard["sizes"].values()
    ]
    return [
        f"Dashboard cost (synthetic stores, window {dashboard['window']:,} steps, "
        f"{dashboard['variables']} variables, max_points {dashboard['max_points']})",
        f"  charts ms: {dashboard['timed']}",
        *table(header, rows, right=set(range(9))),
    ]


def _target_lines(targets: list[dict]) -> list[str]:
    rows = [
        [
            target["target"],
            target["measured"],
            ("PASS" if target["passed"] else "MISS") + (" (noisy)" if target.get("noisy") else ""),
            target["by"],
        ]
        for target in targets
    ]
    return ["Targets", *table(["target", "measured", "result", "by how much"], rows, right=set())]


def format_report(results: dict) -> str:
    from benchmarks import speed_report

    lines = [machine_line(results["machine"]), f"Mode: {results['mode']}"]
    lines += [f"Note: {note}" for note in results.get("notes", [])] + [""]
    sections = (
        ("throughput", _throughput_lines, True),
        ("policies", _policy_lines, False),
        ("persistence", _persistence_lines, False),
        ("control", _control_lines, False),
        ("dashboard", _dashboard_lines, False),
        ("recording", speed_report.recording_lines, False),
        ("startup", speed_report.startup_lines, False),
        ("viewers", lambda section: viewers.lines(section, table), False),
        ("long_run", speed_report.long_run_lines, False),
        ("attach", lambda attach: attach_cost.lines(attach, table), False),
        ("switch_interval", lambda section: switch_interval.lines(section, table), False),
        ("forking", lambda section: forking.lines(section, table), False),
    )
    for key, render, whole in sections:
        if results.get(key):
            lines += render(results if whole else results[key]) + [""]
    if results.get("char_lstm"):
        lines += char_lstm_lines(results["char_lstm"], table, _ratio) + [""]
    for name, error in results.get("errors", {}).items():
        lines.append(f"Section {name} failed, so it has no figures: {error}")
    lines += _target_lines(results.get("targets", []))
    return "\n".join(lines) + "\n"


def print_report(results: dict, stream=None) -> None:
    stream = stream or sys.stdout  # looked up now, so a redirected stdout is honoured
    stream.write(format_report(results))
    stream.flush()
