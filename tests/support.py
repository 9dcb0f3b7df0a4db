"""Small helpers shared by the tests: the one wait helper, the CLI run in-process, the import check
and what a drawn chart spans."""

import contextlib
import io
import os
import subprocess
import sys
import time

import pyarrow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_until(predicate, timeout=60.0, what="condition", interval=0.05, state=None):
    """Poll `predicate` until it returns something truthy and return that; raise AssertionError
    naming `what` after `timeout` seconds, with `state()` (what the test could see) when given."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    seen = f"; state: {state()}" if state is not None else ""
    raise AssertionError(f"Timed out after {timeout:g}s waiting for {what}{seen}")


def run_cli_in_process(*argv: str, cwd=None, path: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python -m training ARGV` run by the CLI's own `main` in this process, as `subprocess.run`
    reports it (returncode, stdout, stderr). It spares each run a new interpreter and TensorFlow
    import (3.5 s of a core). `cwd` is the working folder and `path` goes before sys.path (a
    subprocess's PYTHONPATH) for the run; the modules it imports from there are forgotten after
    it, as a process's would be. What only a process shows (SIGTERM, an environment read at
    TensorFlow's import, an interpreter's exit) stays in real-process tests (test_cli,
    test_cli_defects)."""
    from training import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    modules, sys_path, folder = set(sys.modules), list(sys.path), os.getcwd()
    switch_interval = sys.getswitchinterval()
    try:
        sys.path[:0] = [str(entry) for entry in path]
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = cli.main(list(argv))
            except SystemExit as exit:  # argparse's refusals: 2
                code = exit.code if isinstance(exit.code, int) else 1
    finally:
        os.chdir(folder)
        sys.path[:] = sys_path
        roots = [os.path.realpath(entry) for entry in (*path, *([cwd] if cwd is not None else []))]
        for name in set(sys.modules) - modules:  # the user's modules, not TensorFlow's first import
            file = getattr(sys.modules[name], "__file__", None) or ""
            if any(os.path.realpath(file).startswith(root + os.sep) for root in roots):
                del sys.modules[name]
        sys.setswitchinterval(switch_interval)
    return subprocess.CompletedProcess(["python", "-m", "training", *argv], code, stdout.getvalue(), stderr.getvalue())


def assert_imports_neither_streamlit_nor_tensorflow(*modules: str) -> None:
    """Import `modules` in a fresh interpreter and fail if that loaded Streamlit or TensorFlow."""
    code = (
        f"import sys, {', '.join(modules)}; "
        "bad = [name for name in ('streamlit', 'tensorflow') if name in sys.modules]; "
        "print(*bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"importing {', '.join(modules)} imported: {result.stdout} {result.stderr}"



def step_domains(at, prefix: str) -> dict[str, list[float]]:
    """The steps each zoomable chart whose key starts with `prefix` spans, by panel: the extent of
    its rows (sent as Arrow beside the spec), which its step axis takes (`redrawn_in_place`)."""
    domains = {}
    for chart in at.get("vega_lite_chart"):
        key = chart.proto.id.split("-", 2)[-1]
        if key.startswith(prefix):
            frames = [pyarrow.ipc.open_stream(dataset.data.data).read_pandas() for dataset in chart.proto.datasets]
            steps = [frame[column] for frame in frames for column in ("step", "step_end") if column in frame]
            domains[key.split(".")[2]] = [min(float(values.min()) for values in steps), max(float(values.max()) for values in steps)]
    return domains


# A tiny plug-in file (a 4-8-1 regression of a sum): real code for the plug-in tests to load.
TINY_PLUGIN = '''
import numpy as np
from training.tasks import Task


def build_model(seed):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(8, activation="tanh", name="hidden"),
        keras.layers.Dense(1, name="output"),
    ])


def make_data(seed):
    inputs = np.random.default_rng(seed).normal(size=(256, 4)).astype("float32")
    return inputs, inputs.sum(axis=1, keepdims=True)


TASK = Task(name="{name}", description="Sum of four numbers", build_model=build_model,
            make_data=make_data, build_loss="mse", learning_rate=0.05, clip_threshold=0.5)
'''


def write_plugin(folder, file_name, source=None, name="tiny_sum"):
    """Write a plug-in file (the tiny one unless `source` is given) and return its path."""
    path = folder / file_name
    path.write_text(TINY_PLUGIN.format(name=name) if source is None else source)
    return path
