"""Task registry: a task is a model, its data and its defaults. A new task is one small module.

Built-in tasks generate their data or load it from a package that ships it; nothing is
downloaded. Users' own tasks come from plug-in files or modules (`training.tasks.plugins`).
"""

from __future__ import annotations

from . import plugins, streaming
from .base import Task
from .builtin import TASK_NAMES, TASKS
from .plugins import check_data_matches_model


def get_task(task: "str | Task") -> Task:
    """A `Task` as given, a built-in task by name, or a plug-in loaded earlier by its name."""
    if isinstance(task, Task):
        return task
    if isinstance(task, str) and task in TASKS:  # a list would raise TypeError
        return TASKS[task]
    loaded = plugins.registered(task) if isinstance(task, str) else None
    if loaded is None:
        raise ValueError(f"Unknown task {task!r}. Valid tasks: {', '.join(TASK_NAMES)}")
    return loaded


__all__ = ["Task", "TASKS", "TASK_NAMES", "check_data_matches_model", "get_task", "plugins", "streaming"]
