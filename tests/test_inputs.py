"""Every entry point that takes a user's value, searched with generated values (hypothesis).

Strings, bools, None, huge and tiny floats, NaN, infinities, numpy scalars, negative zero, very
long strings and unicode go into the policy validators, the task and policy names, the
`Trainer`'s arguments and live commands, the CLI's flags and the database paths. Each value is
either accepted with its documented meaning or refused with ValueError naming it (and nothing
changes); the compiled step never sees a non-finite or non-positive knob, and the training
thread never dies from an input. Case counts: `pytest --hypothesis-show-statistics`.
"""

import contextlib
import io
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, event, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import from_dtype
from support import wait_until

from training.clipping.engine import KNOB
from training import cli
from training.page_paths import page_database_path
from training.persistence import DatabaseError, RunDatabase
from training.policies import (
    FLOAT32_MAX,
    FLOAT32_SMALLEST_NORMAL,
    POLICY_NAMES,
    POLICY_PARAMETERS,
    validate_policy_name,
    validate_policy_params,
    validate_positive,
)
from training.tasks import TASK_NAMES, get_task
from training.trainer import MAX_STEPS_PER_SECOND, Trainer

PARAMETER_NAMES = sorted({name for parameters in POLICY_PARAMETERS.values() for name in parameters})

edge_floats = st.sampled_from([
    0.0, -0.0, math.nan, -math.nan, math.inf, -math.inf, 5e-324, 1e-300, 1e-46, 1e-39,
    FLOAT32_SMALLEST_NORMAL, FLOAT32_MAX, 3.5e38, 1e39, 1e300, 1.7976931348623157e308,
    1 - 1e-9, 1 - 2**-53, 100.0, 100.00000001, 1.0, 2.5,
])  # fmt: skip
numpy_scalars = st.one_of(
    *(from_dtype(np.dtype(kind)) for kind in ("float16", "float32", "float64", "int8", "int64", "uint64", "bool"))
)
numbers = st.one_of(
    st.floats(), edge_floats, st.integers(), st.sampled_from([2**63, 2**64, 10**400, -(10**400)]),
    st.fractions(), st.decimals(), st.complex_numbers(), numpy_scalars,
)  # fmt: skip
texts = st.one_of(
    st.text(), st.text(min_size=2000, max_size=5000),
    st.sampled_from(["nan", "inf", "1e999", "-0", "1.0", " 1 ", "٣", "１", "\x00", "\ud800", "∞"]),
)  # fmt: skip
anything = st.one_of(
    st.none(), st.booleans(), numbers, texts, st.binary(),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip


def assert_names(error, *values):
    """The ValueError message names (one of) the values received."""
    event("refused")
    message = str(error)
    assert any(repr(value) in message for value in values), (message[:300], values)


def in_compiled_range(number):
    """What the compiled step can hold: a float32 that is finite, normal and positive."""
    return math.isfinite(number) and FLOAT32_SMALLEST_NORMAL <= number <= FLOAT32_MAX


# --- the validators ---------------------------------------------------------------------------


@given(value=anything)
def test_a_positive_knob_is_accepted_only_in_the_compiled_range(value):
    try:
        number = validate_positive("clip_threshold", value)
    except ValueError as error:
        assert_names(error, value)
        return
    assert type(number) is float and in_compiled_range(number)
    assert number == float(value)  # its documented meaning: the number itself
    assert np.isfinite(np.float32(number)) and np.float32(number) > 0


@given(value=st.floats(FLOAT32_SMALLEST_NORMAL, FLOAT32_MAX) | st.integers(1, 10**38).map(int))
def test_every_number_in_the_compiled_range_is_accepted(value):
    assert validate_positive("learning_rate", value) == float(value)


@given(name=anything | st.sampled_from(POLICY_NAMES))
def test_a_policy_name_is_one_of_the_list_or_refused(name):
    try:
        assert validate_policy_name(name) in POLICY_NAMES
    except ValueError as error:
        assert_names(error, name)
        assert "Valid policies: none, global_norm" in str(error)


@given(name=anything | st.sampled_from(TASK_NAMES))
def test_a_task_name_is_one_of_the_list_or_refused(name):
    try:
        assert get_task(name).name == name
    except ValueError as error:
        assert_names(error, name)


parameter_values = st.dictionaries(
    st.sampled_from(PARAMETER_NAMES) | st.text(max_size=8), numbers | anything, max_size=4
)


@given(policy=st.sampled_from(POLICY_NAMES), params=parameter_values)
def test_policy_parameters_are_in_their_range_or_refused(policy, params):
    try:
        checked = validate_policy_params(policy, params)
    except ValueError as error:
        assert_names(error, *params.keys(), *params.values())
        return
    spec = POLICY_PARAMETERS[policy]
    assert set(checked) == set(spec)
    for name, value in checked.items():
        parameter = spec[name]
        assert type(value) is parameter.kind
        if name in params:
            assert value == float(params[name])  # what was asked, not a default
        single = value if parameter.kind is int else float(np.float32(value))
        assert parameter.low < single < parameter.high or (
            (parameter.low_inclusive and single == parameter.low) or (parameter.high_inclusive and single == parameter.high)
        ), (name, value)  # fmt: skip
        assert math.isfinite(single) and (single == 0 or abs(single) >= FLOAT32_SMALLEST_NORMAL)


# --- the Trainer's arguments ------------------------------------------------------------------

TRAINER_ARGUMENTS = {
    "task": "seed", "policy": "global_norm", "clip_threshold": 1.0, "learning_rate": 0.01,
    "batch_size": 32, "seed": 0, "max_steps": 10, "max_nonfinite_steps": 5, "store_window": 100,
    "data": None, "run_name": "a run",
}  # fmt: skip


@given(argument=st.sampled_from(sorted(TRAINER_ARGUMENTS)), value=anything)
def test_each_trainer_argument_is_kept_or_refused_before_anything_runs(argument, value):
    try:
        trainer = Trainer(**{**TRAINER_ARGUMENTS, argument: value})
    except ValueError as error:
        assert_names(error, value)
        return
    assert trainer.status.state == "idle" and trainer.store is None  # nothing was built
    config = trainer.config
    kept = getattr(config, argument, None)
    task = get_task("seed")
    if value is None and argument in ("learning_rate", "batch_size"):  # None: the task's default
        assert kept == getattr(task, argument)
    elif value is None and argument == "max_steps":  # None: until stopped
        assert kept is None
    elif argument in ("clip_threshold", "learning_rate"):
        assert kept == float(value) and in_compiled_range(kept)
    elif argument in ("batch_size", "seed", "max_steps"):
        assert kept == value and type(kept) is int
    elif argument in ("task", "policy"):
        assert kept == value


# --- live commands on a running trainer -------------------------------------------------------

commands = st.one_of(
    st.tuples(st.just("set_clip_threshold"), numbers | anything),
    st.tuples(st.just("set_learning_rate"), numbers | anything),
    st.tuples(st.just("inject_spike"), numbers | anything),
    st.tuples(st.just("set_max_steps_per_second"), numbers | anything | st.floats(1, 5000)),
    st.tuples(st.just("set_policy"), st.tuples(st.sampled_from(POLICY_NAMES) | anything, parameter_values)),
    st.tuples(st.sampled_from(["pause", "resume"]), st.none()),
)


@pytest.fixture(scope="module")
def live_trainer():
    """One running `seed` run for every generated command sequence (a build takes seconds).
    Non-finite steps never fail it: a generated spike or learning rate may well blow it up, and
    the property is that the thread survives that, not that the model does."""
    trainer = Trainer(task="seed", max_nonfinite_steps=10**12)
    trainer.set_max_steps_per_second(1000)
    trainer.start()
    wait_until(lambda: trainer.status.step > 0, what="the first steps")
    yield trainer
    trainer.stop()


def compiled_knobs(trainer):
    """The live knobs as the compiled step reads them (its tf.Variables)."""
    knobs = trainer.state.engine.knobs.numpy()
    return {
        **{name: knobs[KNOB[name]] for name in ("clip_threshold", "percentile", "clip_factor", "z_threshold")},
        "learning_rate": trainer.state.optimizer.learning_rate.numpy(),
    }


def accepted(method, kind, value, state):
    """Send one generated command; True if it was accepted. A refusal must name the value
    and leave `state()` (what the trainer or the page holds) as it was."""
    before = state()
    try:
        if kind == "set_policy":
            name, params = value
            method(name, **{str(key): item for key, item in params.items()})
        elif kind in ("pause", "resume"):
            method()
        else:
            method(value)
    except ValueError as error:
        values = [value] if kind != "set_policy" else [value[0], *value[1].keys(), *value[1].values()]
        assert_names(error, *values, *(str(key) for key in (value[1] if kind == "set_policy" else {})))
        assert state() == before  # a refused command changed nothing
        return False
    return True


# --- the CLI's flags --------------------------------------------------------------------------

FLAGS = ["--task", "--policy", "--clip-threshold", "--steps", "--seed", "--learning-rate",
         "--batch-size", "--name", "--max-nonfinite-steps", *(f"--{n.replace('_', '-')}" for n in PARAMETER_NAMES)]  # fmt: skip
flag_values = st.one_of(
    texts, st.floats().map(repr), st.integers().map(str), edge_floats.map(repr),
    st.sampled_from([*TASK_NAMES, *POLICY_NAMES, "1e-39", "3.5e38", "4294967296", "-1", "--no-db"]),
)  # fmt: skip


def run_cli_prepare(argv):
    """(exit status or None, stderr text, PreparedRun or None); the run is built, not started."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            return None, stderr.getvalue(), cli.prepare(argv)
        except SystemExit as exit:
            return exit.code, stderr.getvalue(), None


@given(pairs=st.lists(st.tuples(st.sampled_from(FLAGS), flag_values), max_size=4))
def test_cli_flags_build_a_run_or_exit_2_naming_the_problem(pairs):
    argv = ["--no-db", *(token for pair in pairs for token in pair)]
    status, stderr, run = run_cli_prepare(argv)
    event("exit 2" if run is None else "built")
    if run is None:
        assert status == 2 and "error:" in stderr, (status, stderr)
        return
    run.close()
    config = run.trainer.config
    assert config.task in TASK_NAMES and config.policy in POLICY_NAMES
    assert in_compiled_range(config.clip_threshold) and in_compiled_range(config.learning_rate)
    params = config.policy_params[config.policy]
    assert validate_policy_params(config.policy, params) == params
    assert config.max_steps >= 1 and run.database is None


path_names = st.text(st.characters(blacklist_characters="/"), min_size=1, max_size=300) | st.sampled_from(
    ["a\x00b", "x" * 256, ".", "sub/inner.db", "\ud800.db", " "]
)


@given(name=path_names, flag=st.sampled_from(["--db", "--csv"]))
def test_cli_database_and_csv_paths_work_or_exit_2(name, flag):
    assume(".." not in Path(name).parts)
    with tempfile.TemporaryDirectory() as folder:
        status, stderr, run = run_cli_prepare(
            [flag, os.path.join(folder, name), *(["--no-db"] if flag == "--csv" else [])]
        )
        event("exit 2" if run is None else "built")
        if run is None:
            assert status == 2 and "error:" in stderr and ("--csv" in stderr or "run database" in stderr)
            return
        run.close()
        if flag == "--db":
            assert run.database.list_runs().empty  # a working database at that path
        else:
            assert Path(folder, name).read_text().startswith("step,")  # the CSV header


# --- the database path: the Python API and the page -------------------------------------------


@given(name=path_names)
def test_the_python_api_opens_any_path_or_says_why(name):
    assume(".." not in Path(name).parts)
    with tempfile.TemporaryDirectory() as folder:
        try:
            database = RunDatabase(os.path.join(folder, name))
        except DatabaseError as error:
            assert "Cannot use the run database at" in str(error)
            return
        assert database.list_runs().empty


page_paths = st.one_of(
    anything,
    st.lists(st.sampled_from(["runs", "..", ".", "a", "~", "", "x.db", "/", "/tmp", "escape"]), max_size=5).map("/".join),
    path_names.map(lambda name: "runs/" + name),
)  # fmt: skip


@given(text=page_paths)
@example(text="~no-such-user-of-clipwatch/x.db")  # found as "~0": expanduser raised RuntimeError
def test_the_page_gets_a_path_inside_the_runs_folder_or_a_refusal(tmp_path_factory, text):
    base = tmp_path_factory.getbasetemp() / "page_paths"
    (base / "runs").mkdir(parents=True, exist_ok=True)
    outside = base / "outside"
    outside.mkdir(exist_ok=True)
    if not (base / "runs" / "escape").is_symlink():
        (base / "runs" / "escape").symlink_to(outside)
    folder = (base / "runs").resolve()
    previous = os.getcwd()
    os.chdir(base)
    try:
        path = page_database_path(text, base / "runs")
    except ValueError as error:
        assert_names(error, text)
        return
    finally:
        os.chdir(previous)
    assert path.is_relative_to(folder) and path != folder
    assert ".." not in Path(str(text)).parts


@given(name=anything)
def test_a_recorded_run_is_renamed_to_text_or_refused(tmp_path_factory, name):
    path = tmp_path_factory.getbasetemp() / "rename.db"
    database = RunDatabase(path)
    if database.list_runs().empty:
        writer = database.start_run(Trainer(task="seed").config, ["w"], "first")
        writer.finish("stopped")
    run_id = int(database.list_runs().run_id.iloc[0])
    before = database.run_info(run_id)["name"]
    try:
        database.rename_run(run_id, name)
    except ValueError as error:
        assert_names(error, name)
        assert database.run_info(run_id)["name"] == before
        return
    assert database.run_info(run_id)["name"] == name.strip()


# --- the page's commands, through the run manager ---------------------------------------------

MANAGER_COMMANDS = {  # the page's names for the trainer's commands
    "set_clip_threshold": "set_clip_threshold", "set_learning_rate": "set_learning_rate",
    "inject_spike": "inject_spike", "set_max_steps_per_second": "set_speed", "set_policy": "set_policy",
    "pause": "pause", "resume": "resume",
}  # fmt: skip


@pytest.fixture(scope="module")
def live_manager(tmp_path_factory):
    from dashboard.run_manager import RunManager, RunSettings

    manager = RunManager(database_path=tmp_path_factory.mktemp("manager") / "runs.db")
    manager.trainer_options["max_nonfinite_steps"] = 10**12  # see live_trainer
    manager.start(RunSettings(task="seed", max_steps_per_second=1000))
    wait_until(lambda: manager.trainer.status.step > 0, what="the first steps")
    yield manager
    manager.stop_all()


@settings(max_examples=200)
@given(sequence=st.lists(commands, min_size=1, max_size=5))
@pytest.mark.parametrize("through", ["trainer", "run manager"])
def test_live_commands_are_applied_or_refused_and_the_thread_survives(request, through, sequence):
    """The Trainer's commands, and the page's (the run manager's, which also keeps the values
    the page shows in `settings`) on a running run."""
    if through == "trainer":
        trainer = target = request.getfixturevalue("live_trainer")
        method_names, state = {kind: kind for kind in MANAGER_COMMANDS}, lambda: trainer.config
    else:
        target = request.getfixturevalue("live_manager")
        trainer, method_names, state = target.trainer, MANAGER_COMMANDS, lambda: target.settings
    for kind, value in sequence:
        note(f"{kind}({value!r})")
        if not accepted(getattr(target, method_names[kind]), kind, value, state):
            continue
        if kind == "set_clip_threshold":
            wait_until(lambda: trainer.config.clip_threshold == float(value), what="the threshold")
        elif kind == "set_learning_rate":
            wait_until(lambda: trainer.config.learning_rate == float(value), what="the learning rate")
        elif kind == "set_max_steps_per_second":
            expected = None if value is None else float(value)
            assert expected is None or 0 < expected <= MAX_STEPS_PER_SECOND
            wait_until(lambda: trainer.config.max_steps_per_second == expected, what="the pace")
        elif kind == "set_policy":
            wait_until(lambda: trainer.config.policy == value[0], what="the policy")
        if through == "run manager":  # the page shows what was asked
            shown = target.settings
            assert kind != "set_clip_threshold" or shown.clip_threshold == float(value)
            assert kind != "set_learning_rate" or shown.learning_rate == float(value)
            assert kind != "set_policy" or shown.policy == value[0]
    status = trainer.status
    assert status.state in ("running", "paused") and status.error is None, status.error
    assert trainer._thread.is_alive()
    for name, knob in compiled_knobs(trainer).items():
        assert np.isfinite(knob) and knob > 0, (name, knob)
    recent = trainer.metrics(since=max(0, status.step - 200))
    fixed = recent[recent.policy.isin(["global_norm", "per_tensor_norm", "value", "agc"])]
    assert np.isfinite(fixed.clip_threshold).all() and (fixed.clip_threshold > 0).all()


SETTINGS_FIELDS = ("task", "policy", "clip_threshold", "learning_rate", "max_steps_per_second", "seed")


@settings(max_examples=50)
@given(field=st.sampled_from(SETTINGS_FIELDS), value=anything)
def test_a_bad_start_setting_is_refused_and_starts_nothing(tmp_path_factory, field, value):
    from dashboard.run_manager import RunManager, RunSettings

    manager = RunManager(database_path=tmp_path_factory.getbasetemp() / "start.db")
    try:
        manager.start(RunSettings(**{field: value}))
    except ValueError as error:
        assert_names(error, value)
        assert manager.trainer is None and manager.run_number == 0
        return
    try:
        assert manager.run_number == 1
        config = manager.trainer.config
        assert in_compiled_range(config.clip_threshold) and in_compiled_range(config.learning_rate)
    finally:
        manager.stop_all(timeout=10.0)


def test_a_trainer_takes_a_database_location_as_live_clipping_does_and_refuses_other_values(trainers, tmp_path):
    """Found by probing: `Trainer(database="runs.db")` was accepted and the run then failed with
    "AttributeError: 'str' object has no attribute 'start_run'"; `metrics(since="a")` gave 0 rows."""
    trainer = trainers(task="seed", database=str(tmp_path / "runs.db"), max_steps=30)
    trainer.start()
    wait_until(lambda: trainer.status.state != "running" and trainer.status.state != "idle", timeout=120, what="the run")
    assert trainer.status.state == "stopped", trainer.status.error
    assert len(RunDatabase(tmp_path / "runs.db").metrics(trainer.status.run_id)) == 30
    for bad in (123, True, ["runs.db"]):
        with pytest.raises(TypeError, match=f"Received: database={re.escape(repr(bad))}$"):
            trainers(task="seed", database=bad)
    for bad in ("a", 1.5, True):
        with pytest.raises(TypeError, match=f"since must be a step number .* Received: since={re.escape(repr(bad))}$"):
            trainer.metrics(since=bad)
    assert trainer.metrics(since=np.int64(20)).step.tolist() == list(range(21, 31))


def test_a_run_leaves_the_processs_python_and_numpy_random_streams_as_they_were(trainers):
    """Found by probing: a task's build_model calls keras.utils.set_random_seed, so starting a
    Trainer restarted the user's np.random and random streams from the task's seed."""
    import random

    np.random.seed(123), random.seed(123)
    expected = (np.random.rand(), random.random())
    np.random.seed(123), random.seed(123)
    trainer = trainers(task="seed", max_steps=50)
    trainer.start()
    wait_until(lambda: trainer.status.state not in ("idle", "running"), timeout=120, what="the run to end")
    assert (np.random.rand(), random.random()) == expected


def test_live_clipping_checks_its_settings_when_made_as_trainer_does():
    """Found by probing: these were accepted and failed inside fit (or were stored as given)."""
    from training.keras import LiveClipping

    for settings, error, message in [
        ({"store_window": "x"}, ValueError, "`store_window` must be an integer >= 1. Received: store_window='x'"),
        ({"store_window": 0}, ValueError, "Received: store_window=0"),
        ({"database": 123}, TypeError, "Received: database=123"),
        ({"run_name": "a\x01b"}, ValueError, "A run's name must be non-empty text"),
        ({"run_name": "a" * 300}, ValueError, "at most 200 characters"),
        ({"run_name": 5}, ValueError, "A run's name must be non-empty text"),
    ]:
        with pytest.raises(error, match=re.escape(message)):
            LiveClipping(**settings)
    with pytest.raises(TypeError, match=re.escape("jit_compile must be True, False or None. Received: jit_compile='no'")):
        Trainer("seed", jit_compile="no")  # bool("no") once meant XLA on
