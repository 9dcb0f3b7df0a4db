"""Issue #22's CLI, trainer and policy defects, each as a user meets it.

The autoclip window reaches the policy (Trainer, CLI, page), the JSON summary is strict JSON,
max_nonfinite_steps stops at the limit, float parameters state the float32 range they accept,
SIGTERM stops a CLI run as Ctrl-C does, a refused run writes no files, and empty paths are refused.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import TINY_PLUGIN, run_cli_in_process, wait_until, write_plugin

from training import cli
from training.persistence import RunDatabase
from training.policies import POLICY_PARAMETERS, validate_policy_params

ROOT = Path(__file__).resolve().parent.parent
WINDOW, PERCENTILE = 5, 10


def run_cli(*args, cwd=ROOT, env=None, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def strict_json(line: str):
    """json.loads that refuses NaN, Infinity and -Infinity (as JavaScript's JSON.parse does)."""

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


def assert_thresholds_are_the_percentile_of_the_last_window(metrics: pd.DataFrame) -> None:
    """At every step after the first `WINDOW`, the threshold used is numpy's percentile of the
    previous `WINDOW` pre-clip norms (all steps finite here, so every norm entered the history)."""
    assert metrics.finite.all()
    norms = metrics.grad_norm.to_numpy(np.float64)
    thresholds = metrics.clip_threshold.to_numpy(np.float64)
    expected = [np.percentile(norms[step - WINDOW : step], PERCENTILE) for step in range(WINDOW, len(norms))]
    np.testing.assert_allclose(thresholds[WINDOW:], expected, rtol=1e-5)
    # A window of 1000 would give the percentile of every earlier norm: not the same numbers.
    everything = [np.percentile(norms[:step], PERCENTILE) for step in range(WINDOW, len(norms))]
    assert not np.allclose(thresholds[WINDOW:], everything, rtol=1e-3)


# --- 1. the autoclip window -------------------------------------------------------------------


def test_trainer_window_is_the_autoclip_policys_window(trainers):
    trainer = trainers(task="seed", policy="autoclip", window=WINDOW, percentile=PERCENTILE, max_steps=300)
    assert trainer.config.policy_params["autoclip"] == {"percentile": PERCENTILE, "window": WINDOW}
    trainer.start()
    wait_until(lambda: trainer.status.state == "stopped", timeout=180, what="the run to finish")
    metrics = trainer.metrics()
    assert len(metrics) == 300
    assert_thresholds_are_the_percentile_of_the_last_window(metrics)


def test_live_clipping_window_is_the_autoclip_policys_window():
    import keras

    from training.keras import LiveClipping

    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(256, 4)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    clipping = LiveClipping("autoclip", window=WINDOW, percentile=PERCENTILE, database=False)
    try:
        model.compile(optimizer=clipping.wrap(keras.optimizers.Adam(1e-2)), loss="mse")
        model.fit(inputs, inputs.sum(axis=1), batch_size=8, epochs=2, shuffle=False, verbose=0,
                  callbacks=[clipping.callback()])  # fmt: skip
        metrics = clipping.metrics()
    finally:
        clipping.close()
    assert len(metrics) == 64
    assert_thresholds_are_the_percentile_of_the_last_window(metrics)


def test_the_stores_window_has_its_own_name_and_the_cli_clip_rate_covers_the_whole_run(trainers):
    trainer = trainers(task="seed", policy="global_norm", clip_threshold=0.3, max_steps=400, store_window=50)
    trainer.start()
    wait_until(lambda: trainer.status.state == "stopped", timeout=180, what="the run to finish")
    newest = trainer.metrics()
    assert len(newest) == 50  # the store keeps 50 steps at full resolution ...
    # ... and the CLI summary's clip rate is the whole run's, not the newest 50 steps'.
    summary = trainer.store.summary()
    assert summary["steps"].sum() == 400
    whole_run = summary["clipped"].sum() / 400
    assert cli._clip_rate(trainer) == pytest.approx(whole_run) and whole_run != pytest.approx(newest.clipped.mean())
    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) 'window' for policy 'global_norm'"):
        trainers(task="seed", policy="global_norm", window=5)


def test_cli_window_reaches_autoclip_and_the_summary_matches_the_csv_and_database(tmp_path):
    csv_path, db_path = tmp_path / "autoclip.csv", tmp_path / "runs.db"
    result = run_cli_in_process("--policy", "autoclip", "--window", str(WINDOW), "--percentile", str(PERCENTILE),
                                "--steps", "300", "--csv", str(csv_path), "--db", str(db_path))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = strict_json(result.stdout.strip().splitlines()[-1])
    frame = pd.read_csv(csv_path)
    assert len(frame) == 300
    assert_thresholds_are_the_percentile_of_the_last_window(frame)
    database = RunDatabase(db_path)
    info = database.run_info(summary["run_id"])
    assert info["config"]["policy_params"]["autoclip"] == {"percentile": PERCENTILE, "window": WINDOW}
    listed = database.list_runs().set_index("run_id").loc[summary["run_id"]]
    assert summary["clip_rate"] == pytest.approx(frame.clipped.mean()) == pytest.approx(listed.clip_rate)


def test_page_window_reaches_autoclip(tmp_path):
    import streamlit as st_runtime
    from streamlit.testing.v1 import AppTest

    from dashboard.run_manager import get_run_manager

    st_runtime.cache_resource.clear()
    manager = get_run_manager()
    default_interval = sys.getswitchinterval()
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()

        def control(label):
            widgets = [*at.sidebar.selectbox, *at.sidebar.text_input, *at.sidebar.number_input, *at.sidebar.select_slider]
            return next(widget for widget in widgets if widget.label == label)

        def enter(label, value):  # the page's number controls are text fields since issue #22
            widget = control(label)
            (widget.input(str(value)) if hasattr(widget, "input") else widget.set_value(value)).run()

        control("Policy").select("autoclip").run()
        enter("Window", WINDOW)
        enter("Percentile", PERCENTILE)
        control("Speed").set_value("Full").run()
        assert not at.exception and not [element.value for element in at.error]
        at.button(key="start").click().run()
        assert not at.exception and not [element.value for element in at.error]
        trainer = manager.trainer
        assert trainer.config.policy_params["autoclip"] == {"percentile": PERCENTILE, "window": WINDOW}
        wait_until(lambda: trainer.status.step >= 200, timeout=180, what="200 steps")
        metrics = trainer.metrics()
        assert_thresholds_are_the_percentile_of_the_last_window(metrics)
    finally:
        manager.stop()
        st_runtime.cache_resource.clear()
        sys.setswitchinterval(default_interval)


# --- 2. strict JSON, 3. max_nonfinite_steps -----------------------------------------------------

# Every batch holds NaN inputs: every step's loss is NaN.
NAN_PLUGIN = TINY_PLUGIN.format(name="all_nan").replace(
    "return inputs, inputs.sum(axis=1, keepdims=True)",
    "return np.full_like(inputs, np.nan), inputs.sum(axis=1, keepdims=True)",
)
# Half the examples are NaN and a batch is one example: finite and non-finite steps alternate
# at random, in runs of every length.
HALF_NAN_PLUGIN = TINY_PLUGIN.format(name="half_nan").replace(
    "return inputs, inputs.sum(axis=1, keepdims=True)",
    "inputs[::2] = np.nan\n    return inputs, inputs.sum(axis=1, keepdims=True)",
)


def test_the_json_summary_writes_null_for_a_nan_loss(tmp_path):
    plugin = write_plugin(tmp_path, "all_nan.py", NAN_PLUGIN)
    result = run_cli_in_process("--task", str(plugin), "--steps", "20", "--no-db")
    assert result.returncode == 0, result.stderr[-3000:]  # 20 steps: below the limit of 50
    line = result.stdout.strip().splitlines()[-1]
    summary = strict_json(line)  # raises on a NaN literal
    assert "NaN" not in line and summary["final_loss"] is None
    assert summary["nonfinite_steps"] == 20 and summary["steps"] == 20


@pytest.mark.parametrize("limit", [1, 7, 50, 300])
def test_a_run_of_nonfinite_steps_stops_exactly_at_the_limit(trainers, tmp_path, limit):
    from training.plugins import load_task

    task = load_task(str(write_plugin(tmp_path, "all_nan.py", NAN_PLUGIN)))
    trainer = trainers(task=task, max_nonfinite_steps=limit)
    trainer.start()
    wait_until(lambda: trainer.status.state == "failed", timeout=180, what="the run to fail")
    metrics = trainer.metrics()
    assert trainer.status.step == len(metrics) == limit and not metrics.finite.any()
    assert f"Stopped after {limit} consecutive non-finite steps" in trainer.status.error


def test_scattered_nonfinite_steps_stop_at_the_first_run_that_reaches_the_limit(trainers, tmp_path):
    from training.plugins import load_task

    task = load_task(str(write_plugin(tmp_path, "half_nan.py", HALF_NAN_PLUGIN)))
    limit = 6
    trainer = trainers(task=task, batch_size=1, max_nonfinite_steps=limit)
    trainer.start()
    wait_until(lambda: trainer.status.state == "failed", timeout=180, what="the run to fail")
    finite = trainer.metrics().finite.to_numpy()
    assert trainer.status.step == len(finite) and finite.any()
    runs = [len(run) for run in "".join("x" if f else "." for f in finite).split("x")]
    assert runs[-1] == limit and max(runs[:-1]) < limit  # the first run to reach it, and it ends there


# A finite loss whose gradient is NaN everywhere (d/dx sqrt(x) at 0 times 0): under XLA, its norm
# measured 0 (XLA's max drops a NaN), the step counted as finite and its NaN update reached the
# weights, so every later loss was NaN.
NAN_GRADIENT_PLUGIN = TINY_PLUGIN.format(name="nan_gradient").replace(
    'build_loss="mse"', "build_loss=nan_gradient_loss"
).replace(
    "\n\nTASK = ",
    """

def nan_gradient_loss(targets, predictions):
    import keras

    error = keras.ops.square(predictions - targets)
    return keras.ops.mean(error, axis=-1) + keras.ops.mean(keras.ops.sqrt(error * 0.0), axis=-1)


TASK = """,
)


@pytest.mark.parametrize("jit_compile", [None, False])
def test_nan_gradients_behind_a_finite_loss_are_skipped_and_the_weights_stay_finite(trainers, tmp_path, jit_compile):
    from training.plugins import load_task

    task = load_task(str(write_plugin(tmp_path, "nan_gradient.py", NAN_GRADIENT_PLUGIN)))
    trainer = trainers(task=task, max_nonfinite_steps=5, jit_compile=jit_compile)
    trainer.start()
    wait_until(lambda: trainer.status.state == "failed", timeout=180, what="the run to fail at the limit")
    metrics = trainer.metrics()
    assert len(metrics) == 5 and not metrics.finite.any(), metrics[["step", "loss", "grad_norm", "finite"]]
    assert metrics.grad_norm.isna().all() and np.isfinite(metrics.loss).all()  # skipped: the weights never took NaN


# --- 4. float32 ranges ----------------------------------------------------------------------------

PARAMETERS = sorted({(policy, name) for policy, spec in POLICY_PARAMETERS.items() for name in spec})
F32 = np.float32
EDGES = [
    0.0, 1e-45, 1e-40, float(np.finfo(F32).tiny), float(np.nextafter(F32(np.finfo(F32).tiny), F32(0))),
    float(np.nextafter(F32(np.finfo(F32).tiny), F32(1))), 1.1754943e-38, 1.1754944e-38, 1.2e-38,
    100.0, 100.00000000001, float(np.nextafter(F32(100), F32(200))), 1.0, 1 - 1e-9, 1 - 2**-24, 1 - 2**-25,
    1 - 2**-26, 0.99999997, float(np.finfo(F32).max), 3.4028235e38, 3.4028236e38, 3.5e38, 1e300,
    math.inf, 1e6, 1e6 + 1, 0.5, 2.5, -1.0,
]  # fmt: skip


def stated_range(message: str) -> tuple[float, float, bool, bool]:
    """(low, high, low included, high included) as the message states it: the explicit
    "from A to B, both included" if given, else the interval "in (a, b]"."""
    explicit = re.search(r"from (\S+) to (\S+), both included", message)
    if explicit:
        return float(explicit[1]), float(explicit[2]), True, True
    interval = re.search(r"in ([\[(])([^,]+), ([^\])]+)([\])])", message)
    return float(interval[2]), float(interval[3]), interval[1] == "[", interval[4] == "]"


@settings(max_examples=300)
@given(parameter=st.sampled_from(PARAMETERS), value=st.sampled_from(EDGES) | st.floats() | st.integers(-10, 2_000_000))
def test_a_policy_parameter_is_accepted_exactly_inside_the_range_its_message_states(parameter, value):
    policy, name = parameter
    with pytest.raises(ValueError) as refused:
        validate_policy_params(policy, {name: math.nan})
    message = str(refused.value)
    low, high, low_included, high_included = stated_range(message)
    inside = (low <= value if low_included else low < value) and (value <= high if high_included else value < high)
    if POLICY_PARAMETERS[policy][name].kind is int:
        assert message.startswith(f"`{name}` must be an integer")
        inside = inside and float(value) == int(value)
    else:
        assert "float32" in message
    try:
        checked = validate_policy_params(policy, {name: value})
    except ValueError as error:
        assert not inside, f"{name}={value!r} refused, inside the stated range: {error}"
        assert f"Received: {name}={value!r}" in str(error)
        return
    assert inside, f"{name}={value!r} accepted, outside the stated range of: {message}"
    assert checked[name] == value


def test_the_cli_states_the_float32_range_and_takes_a_value_inside_it():
    result = run_cli_in_process("--policy", "zclip", "--z-threshold", "1e-45", "--no-db")
    assert result.returncode == 2
    assert "that float32 holds: from 1.1754943508222875e-38 to 3.4028234663852886e+38" in result.stderr
    assert "Received: z_threshold=1e-45" in result.stderr
    for name in ("z_threshold", "clip_factor", "eps", "percentile"):
        policy = next(policy for policy, spec in POLICY_PARAMETERS.items() if name in spec)
        assert validate_policy_params(policy, {name: 1.2e-38})[name] == 1.2e-38


# --- 5. SIGTERM ---------------------------------------------------------------------------------


def test_sigterm_stops_a_cli_run_as_ctrl_c_does(tmp_path):
    csv_path, db_path = tmp_path / "run.csv", tmp_path / "runs.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "training", "--steps", "100000000", "--csv", str(csv_path), "--db", str(db_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: csv_path.exists() and len(csv_path.read_text().splitlines()) > 100,
                   timeout=180, what="the CSV to have rows")  # fmt: skip
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    summary = strict_json(stdout.strip().splitlines()[-1])
    assert summary["state"] == "stopped"
    frame = pd.read_csv(csv_path)
    database = RunDatabase(db_path)
    assert database.run_info(summary["run_id"])["state"] == "stopped"
    recorded = database.metrics(summary["run_id"])
    assert recorded.step.tolist() == frame.step.tolist() == list(range(1, summary["steps"] + 1))


# --- 6. a refused run writes no files, 7. empty paths ----------------------------------------------


@pytest.fixture
def user_folders(tmp_path, monkeypatch):
    """A working folder, a home and a cache folder of the test's own; the default databases."""
    work, home, cache = tmp_path / "work", tmp_path / "home", tmp_path / "cache"
    for folder in (work, home, cache):
        folder.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(ROOT)}
    for name in ("CLIPWATCH_DB", "CLIPWATCH_XLA_CACHE", "TF_XLA_FLAGS"):
        env.pop(name, None)
    return work, cache, env


def test_a_refused_run_writes_no_files_in_the_working_folder(user_folders):
    work, cache, env = user_folders
    refused = run_cli("--clip-threshold", "0", cwd=work, env=env, timeout=120)
    assert refused.returncode == 2 and "clip_threshold=0.0" in refused.stderr
    assert sorted(os.listdir(work)) == []

    trained = run_cli("--no-db", "--steps", "20", cwd=work, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert sorted(os.listdir(work)) == []  # no runs/ folder: no database, and no XLA cache
    assert [path.name for path in (cache / "clipwatch" / "xla").iterdir()][0].startswith("tf-")


@pytest.mark.parametrize("flag", ["--csv", "--db"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_path_is_refused(user_folders, flag, value):
    work, _, env = user_folders
    result = run_cli(flag, value, "--steps", "5", cwd=work, env=env, timeout=120)
    assert result.returncode == 2
    assert f"{flag} needs a file path, not empty text. Received: {flag} {value!r}" in result.stderr
    assert sorted(os.listdir(work)) == []


def test_a_refused_csv_or_database_leaves_the_other_unwritten(user_folders):
    work, _, env = user_folders
    bad_csv = run_cli("--csv", "no_such_folder/out.csv", "--steps", "5", cwd=work, env=env, timeout=120)
    assert bad_csv.returncode == 2 and "cannot write --csv 'no_such_folder/out.csv'" in bad_csv.stderr
    assert sorted(os.listdir(work)) == []  # no runs/clipwatch.db

    (work / "a_folder").mkdir()
    (work / "old.csv").write_text("someone's data\n")
    for csv_name in ("new.csv", "old.csv"):
        bad_db = run_cli("--db", "a_folder", "--csv", csv_name, "--steps", "5", cwd=work, env=env, timeout=120)
        assert bad_db.returncode == 2 and "a_folder" in bad_db.stderr.splitlines()[-1]
    assert sorted(os.listdir(work)) == ["a_folder", "old.csv"]  # no new.csv
    assert (work / "old.csv").read_text() == "someone's data\n" and os.listdir(work / "a_folder") == []


# --- found by probing (session 6): files the user did not ask to lose ------------------------------


def test_a_csv_path_naming_the_run_database_is_refused_and_the_runs_stay(tmp_path, monkeypatch):
    """`--csv runs.db --db runs.db` truncated the database to a CSV header: every run in it was lost."""
    first = run_cli_in_process("--steps", "20", "--db", "runs.db", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = (tmp_path / "runs.db").read_bytes()
    for args in (["--db", "runs.db", "--csv", "runs.db"], ["--db", "runs.db", "--csv", "./sub/../runs.db"]):
        (tmp_path / "sub").mkdir(exist_ok=True)
        refused = run_cli_in_process("--steps", "20", *args, cwd=tmp_path)
        assert refused.returncode == 2, refused.stdout
        assert "--csv and the run database name the same file ('runs.db')" in refused.stderr.splitlines()[-1]
    monkeypatch.setenv("CLIPWATCH_DB", str(tmp_path / "runs.db"))  # the database no flag names
    refused = run_cli_in_process("--steps", "20", "--csv", "runs.db", cwd=tmp_path)
    assert refused.returncode == 2 and "the same file" in refused.stderr
    assert (tmp_path / "runs.db").read_bytes() == before
    assert len(RunDatabase(tmp_path / "runs.db").list_runs()) == 1


def test_a_snapshot_folder_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "picture.png").write_bytes(b"\x89PNG")
    (tmp_path / "kept.csv").write_text("someone's data\n")
    for folder in ("picture.png", "picture.png/inside"):
        refused = run_cli_in_process("--steps", "10", "--csv", "kept.csv", "--db", "new.db", "--snapshot-every", "5",
                                     "--snapshot-folder", folder, cwd=tmp_path)  # fmt: skip
        assert refused.returncode == 2, refused.stdout
        assert refused.stderr.splitlines()[-1].endswith(
            f"--snapshot-folder must be a folder; 'picture.png' is a file. Received: --snapshot-folder '{folder}'"
        )
    assert sorted(os.listdir(tmp_path)) == ["kept.csv", "picture.png"]  # no database, the CSV as it was
    assert (tmp_path / "kept.csv").read_text() == "someone's data\n"


def test_a_csv_sent_to_dev_null_is_a_run_that_keeps_no_csv(tmp_path):
    """`--csv /dev/null` (the usual way to throw output away) crashed: OSError from truncating it."""
    result = run_cli_in_process("--steps", "20", "--no-db", "--csv", os.devnull, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["steps"] == 20


def test_a_quoted_tilde_in_the_csv_path_is_the_home_folder_as_in_the_database_path(tmp_path, monkeypatch):
    """--db '~/runs.db' meant the home folder's file, --csv '~/out.csv' was refused (no folder '~')."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    result = run_cli_in_process("--steps", "20", "--db", "~/runs.db", "--csv", "~/out.csv", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    # (Keras keeps its own settings in ~/.keras: the home folder of this test is new to it.)
    assert sorted(name for name in os.listdir(home) if name != ".keras") == ["out.csv", "runs.db"]
    assert os.listdir(work) == []
    assert len(pd.read_csv(home / "out.csv")) == 20
    refused = run_cli_in_process("--steps", "20", "--no-db", "--csv", "~nosuchuser/out.csv", cwd=work)
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1].endswith("cannot write --csv '~nosuchuser/out.csv': '~nosuchuser' names no user of this machine")


@pytest.mark.parametrize("args, message", [
    (["--at-step", "5"], "--at-step picks the snapshot a fork starts from: it needs --fork-from RUN_ID. Received: --at-step 5"),
    (["--snapshot-folder", "snaps"], "--snapshot-folder is where --snapshot-every writes (or --fork-from reads): give one of them."),
])  # fmt: skip
def test_an_option_that_needs_another_is_refused_rather_than_dropped(tmp_path, args, message):
    """Found by probing: both trained and recorded a plain run, ignoring the option."""
    refused = run_cli_in_process("--steps", "10", "--db", "runs.db", *args, cwd=tmp_path)
    assert refused.returncode == 2 and message in refused.stderr.splitlines()[-1]
    assert os.listdir(tmp_path) == []
