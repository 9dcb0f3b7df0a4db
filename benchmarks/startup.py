"""Start -> first step: how long a new run waits for its first step, and where the time goes.

Each measurement is a fresh Python process (as a freshly started server is), with an empty
persistent XLA cache of its own. It imports TensorFlow, optionally warms up as the dashboard
does at server start (`training.warmup`), then starts three runs one after the other (the first
run of the process; a later one compiled afresh, the step pool cleared; a later one reusing the
compiled steps, as every later run does: training/loop/step_pool.py) and times, from `Trainer.start()`:

* `built_s`: the model, optimizer, store and policy variables are built (`wait_until_ready`);
* `first_step_s`: the first step is counted (`status.step > 0`);
* `full_step_s`: the run trains on its full step (every policy, XLA; `status.compiling` off).

Cases: `seed`, `exploding_rnn`, and the A/B race (two `exploding_rnn` trainers, `none` against
`global_norm`, started together; its first step is when both sides have one). Variants: the
quick start with the server-start warm-up (what the dashboard does), the quick start alone, and
the full step from the start (`quick_start=False`, how runs started before issue #11). Rounds are
interleaved, rotating the variants' order, so a noisy neighbour hits every variant alike.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

CASES = ("seed", "exploding_rnn", "race")
VARIANTS = {
    "quick start + warm-up": {"quick_start": True, "warm": True},
    "quick start": {"quick_start": True, "warm": False},
    "full step first (before #11)": {"quick_start": False, "warm": False},
}
# The first run of a fresh process; a later one with the kept steps forgotten (it compiles afresh,
# as every run did before training/loop/step_pool.py); a later one that reuses them (the default).
RUNS_PER_PROCESS = 3
POLL_SECONDS = 0.002
Log = Callable[[str], None]


def _time_run(case: str, quick_start: bool) -> dict:
    from training import Trainer

    if case == "race":
        trainers = [
            Trainer(task="exploding_rnn", policy=policy, clip_threshold=1.0, quick_start=quick_start)
            for policy in ("none", "global_norm")
        ]
    else:
        trainers = [Trainer(task=case, quick_start=quick_start)]
    times = start_and_time(trainers)
    for trainer in trainers:
        trainer.stop()
        trainer.wait_until_compiled()  # no compile left running into the next measurement
    times["failed"] = [trainer.status.error for trainer in trainers if trainer.status.state == "failed"]
    return times


def start_and_time(trainers: list) -> dict[str, float]:
    """Start `trainers` together and time `built_s`, `first_step_s` and `full_step_s` (each
    reached when every trainer has reached it, or failed); a key still missing after 300 s was not
    reached. The trainers are left running."""
    started = time.perf_counter()
    for trainer in trainers:
        trainer.start()
    times: dict[str, float] = {}
    while len(times) < 3 and time.perf_counter() - started < 300:
        now = time.perf_counter() - started
        statuses = [trainer.status for trainer in trainers]
        if "built_s" not in times and all(trainer.store is not None for trainer in trainers):
            times["built_s"] = now
        if "first_step_s" not in times and all(status.step > 0 or status.state == "failed" for status in statuses):
            times["first_step_s"] = now
        if "first_step_s" in times and "full_step_s" not in times and all(
            not status.compiling or status.state == "failed" for status in statuses
        ):
            times["full_step_s"] = now
        time.sleep(POLL_SECONDS)
    return times


def child(case: str, quick_start: bool, warm: bool) -> dict:
    """One fresh process's measurement (run by `python -m benchmarks.startup CASE QUICK WARM`)."""
    started = time.perf_counter()
    import training  # noqa: F401  (TensorFlow)

    result: dict = {"import_s": time.perf_counter() - started}
    if warm:
        from training import warmup

        warm_started = time.perf_counter()
        warmup.warm_up().join()
        result["warm_up_s"] = time.perf_counter() - warm_started
    from training.loop import step_pool

    result["runs"] = [_time_run(case, quick_start)]
    step_pool.clear()
    result["runs"] += [_time_run(case, quick_start) for _ in range(RUNS_PER_PROCESS - 1)]
    return result


def _measure_in_a_fresh_process(case: str, variant: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="clipwatch-startup-") as folder:
        environment = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "CLIPWATCH_XLA_CACHE": os.path.join(folder, "xla-cache"),  # empty: a fresh machine
            "CLIPWATCH_DB": os.path.join(folder, "clipwatch.db"),
        }
        command = [sys.executable, "-m", "benchmarks.startup", case, str(int(variant["quick_start"])), str(int(variant["warm"]))]
        done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600, cwd=_root())
    if done.returncode != 0:
        raise RuntimeError(f"startup child {case} {variant} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_startup(rounds: int, log: Log, cases=CASES, variants=tuple(VARIANTS)) -> dict:
    """Every case in every variant, `rounds` interleaved rounds; medians per case and variant."""
    samples: dict = {case: {variant: [] for variant in variants} for case in cases}
    for round_index in range(rounds):
        order = list(variants[round_index % len(variants):]) + list(variants[: round_index % len(variants)])
        for variant in order:
            for case in cases:
                result = _measure_in_a_fresh_process(case, VARIANTS[variant])
                samples[case][variant].append(result)
                first, later = result["runs"][0], result["runs"][-1]
                log(
                    f"  startup {case} / {variant}: first run {first['first_step_s']:.2f} s, later "
                    f"run {later['first_step_s']:.2f} s (import {result['import_s']:.1f} s)"
                )
    summary: dict = {}
    for case in cases:
        summary[case] = {}
        for variant in variants:
            results = samples[case][variant]

            def median(pick):
                return statistics.median(pick(result) for result in results)

            summary[case][variant] = {
                "import_s": median(lambda result: result["import_s"]),
                "warm_up_s": median(lambda result: result.get("warm_up_s", 0.0)),
                "first_run": {
                    key: median(lambda result, key=key: result["runs"][0][key])
                    for key in ("built_s", "first_step_s", "full_step_s")
                },
                "later_run": {
                    key: median(lambda result, key=key: result["runs"][-1][key])
                    for key in ("built_s", "first_step_s", "full_step_s")
                },
                "later_run_compiled": {
                    key: median(lambda result, key=key: result["runs"][1][key])
                    for key in ("built_s", "first_step_s", "full_step_s")
                },
                "failed": [error for result in results for run in result["runs"] for error in run["failed"]],
                "samples": results,
            }
    return {"rounds": rounds, "cases": list(cases), "variants": list(variants), "results": summary}


if __name__ == "__main__":
    case_name, quick, warm_first = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
    print(json.dumps(child(case_name, quick, warm_first)))
