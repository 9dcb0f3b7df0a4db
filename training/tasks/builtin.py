"""The built-in tasks, by name."""

from __future__ import annotations

from . import digits, exploding_rnn, seed
from .base import Task

TASKS: dict[str, Task] = {task.name: task for task in (seed.TASK, exploding_rnn.TASK, digits.TASK)}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
