"""`python -m benchmarks [--quick] [--json PATH] [--sections a,b] [--from-json PATH]`.

Runs the benchmark (progress on stderr), prints the report (stdout), optionally saves the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import training  # noqa: F401  (quiets TensorFlow's C++ start-up logs before it loads)
from benchmarks.run import FULL, QUICK, SECTIONS, evaluate_targets, format_report, run_benchmark
from training.interpreter_lock import switch_threads_often


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Clipwatch's performance benchmark: Keras fit vs Clipwatch throughput, control "
        "latency, retraces, dashboard cost. Progress goes to stderr, the report to stdout.",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer, shorter repeats and 3 tabs (9-12 minutes on 2 busy cores)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--from-json",
        metavar="PATH",
        help="measure nothing: print the report of a run saved with --json (targets re-evaluated)",
    )
    parser.add_argument(
        "--no-browser",
        action="store_true",
        help="leave out the browser section (viewers): for machines without /usr/bin/chromium",
    )
    parser.add_argument(
        "--sections",
        help=f"comma-separated subset of: {', '.join(SECTIONS)} (default: all; --quick leaves "
        "out the heavier task while it XLA-compiles)",
    )
    args = parser.parse_args(argv)
    if args.json is not None:
        _check_writable(parser, args.json)  # now, not after minutes of measuring
    if args.from_json is not None:
        args.from_json = _saved_results(parser, args.from_json)
    if args.sections is None:
        return args
    args.sections = tuple(part.strip() for part in args.sections.split(",") if part.strip())
    if not args.sections:
        parser.error(f"--sections names no section; valid: {', '.join(SECTIONS)}")
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
    return args


def _check_writable(parser: argparse.ArgumentParser, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        parser.error(f"--json needs a file path; {path!r} is a folder")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        parser.error(f"--json {path!r}: cannot write in {folder!r} (missing or read-only)")


def _saved_results(parser: argparse.ArgumentParser, path: str) -> dict:
    """The results a run saved with --json; exits 2 naming the file if it is not one."""
    try:
        with open(path) as file:
            results = json.load(file)
    except OSError as error:
        parser.error(f"--from-json {path!r}: {error.strerror or error}")
    except ValueError as error:  # not JSON (or not UTF-8)
        parser.error(f"--from-json {path!r} is not JSON ({error})")
    if not isinstance(results, dict) or not {"machine", "mode"} <= set(results):
        parser.error(f"--from-json {path!r} is not a benchmark's results (saved with --json): no 'machine' and 'mode'")
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    if args.from_json is not None:
        results = args.from_json
        results["targets"] = evaluate_targets(results)
    else:
        switch_threads_often()  # as the page and the CLI do: their configurations run in this process
        results = run_benchmark(QUICK if args.quick else FULL, args.sections, log, browser=not args.no_browser)
    sys.stdout.write(format_report(results))
    sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)
            file.write("\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
