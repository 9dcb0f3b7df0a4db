"""Task plug-ins: load a user's `Task` from a Python file or an importable module.

A plug-in is a file (`path/to/my_task.py`) or a module (`my_package.my_task`) that defines
`TASK`, or another attribute named after a colon (`my_package.my_task:OTHER_NAME`). A plug-in
that cannot be used raises `PluginError` (a `ValueError`) with one message that names the file:
a syntax or import error gives the plug-in's own file and line, not a traceback (so does a
`KeyboardInterrupt`, `SystemExit` or other `BaseException` raised while the module imports:
only that import is guarded); so do a missing `TASK`, an attribute that is not a `Task`, a
field of the wrong kind, and, checked once before a run (`check_task`): a `build_model` that
raises or returns no Keras model, a `build_loss` Keras does not know, data with no examples,
and data whose shapes do not match the model (`check_data_matches_model`).

`discover_tasks()` lists the plug-ins in the folders named by `CLIPWATCH_TASKS` (separated by
`os.pathsep`) and in `examples/tasks/`. The dashboard offers only these: it never imports a path
typed into the browser, because a page reachable over a network must not run code a visitor
names. Loaded plug-ins are remembered by name so `get_task(name)` finds them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import threading
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..runs.locations import home_expanded
from .base import Task, model_build, resolve_loss
from .builtin import TASKS

ENVIRONMENT_VARIABLE = "CLIPWATCH_TASKS"
DEFAULT_ATTRIBUTE = "TASK"
EXAMPLES_FOLDER = Path(__file__).resolve().parents[2] / "examples" / "tasks"

_LOCK = threading.Lock()
_REGISTERED: dict[str, Task] = {}  # plug-ins loaded so far, by task name
_FILE_CACHE: dict[tuple[str, str, float], Task] = {}  # (path, attribute, mtime) -> task
_CHECKED: set[tuple[str, str, float]] = set()  # plug-ins whose model and data were checked


class PluginError(ValueError):
    """A task plug-in cannot be used; the message names its file and says why."""


class PluginNotFound(PluginError):
    """No plug-in file or module of that name: perhaps a mistyped built-in task."""


@dataclass(frozen=True)
class CatalogueEntry:
    """One option of the page's Task select: a built-in task, a plug-in, or a broken plug-in."""

    label: str  # the task's name; a broken plug-in's file name
    description: str
    task: Task | None
    error: str | None  # why a plug-in cannot be used


@dataclass(frozen=True)
class Discovered:
    """One plug-in file found in a plug-in folder: its task, or why it cannot be used."""

    path: str
    task: Task | None
    error: str | None


def load_task(spec: str) -> Task:
    """Load the task a plug-in spec names: a `.py` path, `module` or `module:ATTRIBUTE`.

    Raises:
        PluginError: the plug-in cannot be used (the message names the file and the reason).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(
            "A task plug-in is a path to a .py file, a module, or module:ATTRIBUTE. "
            f"Received: {spec!r}"
        )
    target, attribute = _split_attribute(spec.strip())
    if _looks_like_path(target):
        task = _load_file(Path(target), attribute)
    else:
        task = _load_module(target, attribute)
    _refuse_built_in_name(task)
    check_task_once(task)  # the CLI's choice, like the page's: refused before a run starts
    return register(task)


def register(task: Task) -> Task:
    """Remember a loaded plug-in under its name (a built-in task's name is refused)."""
    _refuse_built_in_name(task)
    with _LOCK:
        _REGISTERED[task.name] = task
    return task


def registered(name: str) -> Task | None:
    with _LOCK:
        return _REGISTERED.get(name)


def plugin_folders() -> list[Path]:
    """`CLIPWATCH_TASKS` folders (in order), then `examples/tasks/`."""
    named = os.environ.get(ENVIRONMENT_VARIABLE, "")
    folders = [_expanded(part) for part in named.split(os.pathsep) if part.strip()]
    return [*folders, EXAMPLES_FOLDER]


def _expanded(part: str) -> Path:
    """`~` and `~user` expanded as a shell does. A `~name` for no user of this machine stays as
    written, as a shell leaves it: a folder that is not there, not a crash of the page (it showed
    "Could not determine home directory.")."""
    try:
        return home_expanded(part)
    except ValueError:
        return Path(part)


def discover_tasks(folders: list[Path] | None = None) -> list[Discovered]:
    """Every `*.py` file (not starting with `_`) in the plug-in folders, loaded or not.

    A file is executed again only when it changed (its modification time), so calling this on
    every page refresh costs a directory listing.
    """
    found = []
    seen: set[str] = set()
    names: dict[str, str] = {}  # task name -> the file that defined it first
    for folder in plugin_folders() if folders is None else folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.py")):
            resolved = str(path.resolve())
            if path.name.startswith("_") or resolved in seen:
                continue
            seen.add(resolved)
            try:
                task = _load_file(path, DEFAULT_ATTRIBUTE)
                if task.name in names:  # the first folder wins, as on a search path
                    raise PluginError(
                        f"Task plug-in {resolved}: its name {task.name!r} is taken by {names[task.name]}"
                    )
                names[task.name] = resolved
                found.append(Discovered(resolved, register(task), None))
            except PluginError as error:
                found.append(Discovered(resolved, None, str(error)))
    return found


def task_catalogue(folders: list[Path] | None = None) -> dict[str, CatalogueEntry]:
    """The built-in tasks, then every plug-in found by `discover_tasks`, by label (a plug-in
    that cannot be used is listed under its file name, with its error)."""
    entries = {name: CatalogueEntry(name, task.description, task, None) for name, task in TASKS.items()}
    for found in discover_tasks(folders):
        task = found.task
        label = task.name if task is not None else f"{Path(found.path).name} (cannot be used)"
        entries[label] = CatalogueEntry(label, task.description if task is not None else "", task, found.error)
    return entries


def check_task_once(task: Task) -> None:
    """`check_task`, remembered per plug-in file version (the page asks on every choice)."""
    if not task.source:
        return  # a built-in task
    if not Path(task.source).is_file():  # a module with no file of its own: no version to remember
        check_task(task)
        return
    key = (task.source, task.name, Path(task.source).stat().st_mtime)
    with _LOCK:
        if key in _CHECKED:
            return
    check_task(task)
    with _LOCK:
        _CHECKED.add(key)


def check_data_matches_model(task: Task, model: Any, data: Any, what: str = "make_data") -> None:
    """Raise `PluginError` if `data` is not (inputs, targets) or a dataset of such pairs, or
    if its examples' shape does not match the model's input shape."""
    import tensorflow as tf

    where = f"Task plug-in {task.source}" if task.source else f"Task {task.name!r}"
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise PluginError(
                f"{where}: {what} returned a tf.data.Dataset whose elements are not "
                f"(inputs, targets) pairs. Received element_spec={spec!r}"
            )
        example_shape = getattr(spec[0], "shape", None)
        example_shape = None if example_shape is None else tuple(example_shape)
        if int(data.cardinality()) == 0:  # known without reading it (unknown is -2)
            raise PluginError(f"{where}: {what} returned an empty tf.data.Dataset; it needs at least one example")
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        inputs, targets = data
        rows = [_rows(inputs), _rows(targets)]
        if None not in rows and rows[0] != rows[1]:
            raise PluginError(
                f"{where}: {what} returned {rows[0]} input rows but {rows[1]} target rows"
            )
        if 0 in rows:  # batches are drawn from the rows: none to draw from fails deep in the graph
            raise PluginError(f"{where}: {what} returned 0 rows; it needs at least one example")
        shape = getattr(inputs, "shape", None)
        example_shape = None if shape is None else tuple(shape)[1:]
    else:
        raise PluginError(
            f"{where}: {what} must return (inputs, targets) arrays or a tf.data.Dataset of "
            f"(inputs, targets) examples. Received: {type(data).__name__}"
        )
    expected = _model_input_shape(model)
    if example_shape is None or expected is None:
        return  # several inputs, or a model that states no input shape: the first step tells
    if len(example_shape) != len(expected) or any(
        want is not None and have is not None and want != have
        for have, want in zip(example_shape, expected)
    ):
        hint = ""
        if len(example_shape) == len(expected) + 1:
            hint = " (a dataset should yield single examples: Clipwatch batches them)"
        raise PluginError(
            f"{where}: the data does not match the model: {what} gives examples of shape "
            f"{_shape_text(example_shape)}, the model takes inputs of shape "
            f"{_shape_text(expected)} per example{hint}"
        )


def check_task(task: Task, seed: int = 0) -> None:
    """Build the task's model and data once and check that they fit (`PluginError` if not).

    What the CLI's and the page's choice of a plug-in costs before a run: one model build and
    one `make_data` call (a dataset is only inspected, never read).
    """
    import keras

    where = f"Task plug-in {task.source}" if task.source else f"Task {task.name!r}"
    try:
        with model_build():  # a task seeds the global RNGs (its data may draw on them): put back after
            model, data = task.build_model(seed), task.make_data(seed)
        if not isinstance(model, keras.layers.Layer):  # keras.Model is a Layer
            raise PluginError(
                f"{where}: build_model must return a Keras model. Received: {_kind(model)}"
            )
        _check_loss(task, where)
        check_data_matches_model(task, model, data)
        if task.make_validation_data is not None:
            check_data_matches_model(task, model, task.make_validation_data(seed), "make_validation_data")
    except PluginError:
        raise
    except Exception as error:  # the plug-in's own code failed: say where, in one line
        path = Path(task.source) if task.source else None
        raise PluginError(_describe_failure(error, path)) from None


def _check_loss(task: Task, where: str) -> None:
    """A loss name Keras does not know fails only when the step is traced: say so now."""
    if not isinstance(task.build_loss, str):
        return  # a loss object or function: its own code runs in the step
    try:
        resolve_loss(task.build_loss)
    except ValueError:
        raise PluginError(
            f"{where}: Task field `build_loss` must be a Keras loss name such as 'mse', a loss "
            f"object or a loss function. Received: build_loss={task.build_loss!r}"
        ) from None


def _kind(value: Any) -> str:
    """A value's type, after the value itself when it is short (`42 (int)`)."""
    text = repr(value)
    return f"{text} ({type(value).__name__})" if len(text) <= 40 else type(value).__name__


def _refuse_built_in_name(task: Task) -> None:
    if task.name in TASKS:
        raise PluginError(
            f"Task plug-in {task.source or task.name}: its name {task.name!r} is a built-in "
            f"task's; pick another (built-in: {', '.join(TASKS)})"
        )


# --- loading --------------------------------------------------------------------------------


def _split_attribute(spec: str) -> tuple[str, str]:
    target, separator, attribute = spec.rpartition(":")
    if separator and attribute.isidentifier() and target:
        return target, attribute
    return spec, DEFAULT_ATTRIBUTE


def _looks_like_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _load_file(path: Path, attribute: str) -> Task:
    if path.is_dir():
        raise PluginNotFound(f"Task plug-in {str(path)!r} is a folder: name the .py file in it that defines TASK")
    if not path.is_file():
        raise PluginNotFound(f"Task plug-in file {str(path)!r} does not exist")
    resolved = path.resolve()
    mtime = resolved.stat().st_mtime
    key = (str(resolved), attribute, mtime)
    with _LOCK:
        if key in _FILE_CACHE:
            return _FILE_CACHE[key]
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    module_name = f"clipwatch_plugin_{resolved.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, resolved)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except BaseException as error:  # sys.exit(), KeyboardInterrupt or its own BaseException: broken too
        sys.modules.pop(module_name, None)
        raise PluginError(_describe_failure(error, resolved)) from None
    task = _task_of(module, attribute, str(resolved))
    with _LOCK:
        _FILE_CACHE[key] = task
    return task


def _load_module(name: str, attribute: str) -> Task:
    try:
        module_spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as error:  # a parent package is missing or broken
        module_spec, reason = None, f"{type(error).__name__}: {error}"
    else:
        reason = None
    if module_spec is None:
        raise PluginNotFound(
            f"Task plug-in module {name!r} cannot be found ({reason or 'no such module'}); "
            "give a path to a .py file, or a module importable from the current directory"
        )
    origin = Path(module_spec.origin) if module_spec.origin else None
    try:
        module = importlib.import_module(name)
    except BaseException as error:  # as in _load_file: only the plug-in's import is guarded
        raise PluginError(_describe_failure(error, origin)) from None
    return _task_of(module, attribute, str(origin) if origin else name)


def _task_of(module: Any, attribute: str, source: str) -> Task:
    if not hasattr(module, attribute):
        tasks = [n for n, v in vars(module).items() if isinstance(v, Task)]
        found = f"; it has {', '.join(tasks)} (name one with :ATTRIBUTE)" if tasks else ""
        raise PluginError(
            f"Task plug-in {source}: defines no `{attribute}` (a training.tasks.Task){found}"
        )
    task = getattr(module, attribute)
    if not isinstance(task, Task):
        raise PluginError(
            f"Task plug-in {source}: `{attribute}` must be a training.tasks.Task. "
            f"Received: {type(task).__name__}"
        )
    return replace(task, source=source)


def _describe_failure(error: BaseException, path: Path | None) -> str:
    """`Task plug-in FILE, line N: Kind: message`, at the plug-in's own line."""
    where = str(path) if path is not None else "?"
    if isinstance(error, SyntaxError) and error.filename:
        return (
            f"Task plug-in {where}: {type(error).__name__} in {error.filename}, line "
            f"{error.lineno}: {error.msg}"
        )
    frames = traceback.extract_tb(error.__traceback__)
    own = [frame for frame in frames if path is not None and Path(frame.filename) == path]
    line = f", line {own[-1].lineno}" if own else ""
    return f"Task plug-in {where}{line}: {type(error).__name__}{_first_line(error)}"


def _first_line(error: BaseException, limit: int = 200) -> str:
    """`: message` in one short line: its first line, cut at `limit` characters (the page shows
    it under a select, the CLI on one line); nothing for a bare `raise KeyboardInterrupt`."""
    lines = str(error).strip().splitlines()
    if not lines:
        return ""
    text = lines[0] if len(lines[0]) <= limit else lines[0][: limit - 1] + "…"
    return f": {text}"


def _rows(array: Any) -> int | None:
    shape = getattr(array, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) > 0 and shape[0] is not None else None


def _model_input_shape(model: Any) -> tuple | None:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs or len(inputs) != 1:
        return None
    return tuple(inputs[0].shape)[1:]


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
