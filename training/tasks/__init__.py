"""Task registry: a task is a model, its data and its defaults. A new task is one small module.

Tasks generate their data or load it from a package that ships it; nothing is downloaded.
"""

from __future__ import annotations

from training.tasks.base import Task
from training.tasks import digits, exploding_rnn, seed

TASKS: dict[str, Task] = {task.name: task for task in (seed.TASK, exploding_rnn.TASK, digits.TASK)}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def get_task(name: str) -> Task:
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"Unknown task {name!r}. Valid tasks: {', '.join(TASK_NAMES)}")
    return TASKS[name]


__all__ = ["Task", "TASKS", "TASK_NAMES", "get_task"]
