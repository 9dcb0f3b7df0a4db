"""Clipwatch's own training loop: the trainer thread, its compiled chunk of steps, the swap
from the quick step to the full XLA step, and the warm-up of a task before its first run."""
