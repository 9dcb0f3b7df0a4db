"""XLA when the model compiles under it, the plain compiled graph when it does not.

A task's `jit_compile=None` asks for XLA "if it works". Whether it works is only known when the
function is first compiled: an op without an XLA kernel (a `tf.numpy_function`, a string op)
makes the first call fail with "Detected unsupported operations". `compile_with_fallback` tries
XLA on the first call; if that call fails, it rebuilds the function without XLA once, runs the
same arguments through it and reports why (the trainer records it as an `xla_fallback` event,
the page shows it as a warning). Later errors are real errors and propagate.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from ..lazy_import import tf  # TensorFlow at first use (training/lazy_import.py)

_UNSUPPORTED_OP = re.compile(r"on (XLA_\w+): (\w+) \(No registered '(\w+)' OpKernel")


class FallbackFunction:
    """A `tf.function` of `python_function`, with XLA decided on its first call.

    Args:
        python_function: the function to compile.
        jit_compile: True or False force XLA on or off; None tries XLA first.
        on_fallback: called with the reason (one line) after the non-XLA function ran.
        before_retrace: called before the non-XLA retrace (the caller drops XLA-only choices,
            such as static buffer sizes).
    """

    def __init__(
        self,
        python_function: Callable,
        jit_compile: bool | None,
        on_fallback: Callable[[str], None],
        before_retrace: Callable[[], None] = lambda: None,
    ):
        self._python_function = python_function
        self._on_fallback, self._before_retrace = on_fallback, before_retrace
        self.trying_xla = jit_compile is None
        self.uses_xla = jit_compile is not False
        self._function = tf.function(python_function, jit_compile=self.uses_xla)

    def get_concrete_function(self, *signature: Any):
        """Trace now, for `signature` (tensor specs), without running (the trainer traces the
        full step on its own thread and lets another thread's first call compile it)."""
        return self._function.get_concrete_function(*signature)

    def __call__(self, *args: Any) -> Any:
        if not self.trying_xla:
            return self._function(*args)
        try:
            result = self._function(*args)
        except tf.errors.OpError as error:
            self.trying_xla, self.uses_xla = False, False
            self._before_retrace()
            self._function = tf.function(self._python_function, jit_compile=False)
            result = self._function(*args)  # a real error fails here, without XLA
            self._on_fallback(describe_xla_failure(error))
            return result
        self.trying_xla = False
        return result


def describe_xla_failure(error: Exception) -> str:
    """One line saying why XLA could not compile the step."""
    message = str(error)
    match = _UNSUPPORTED_OP.search(message)
    if match:
        device, node, op = match.groups()
        return f"XLA cannot compile op {op} (no {device} kernel); running without XLA"
    first_line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return f"XLA compilation failed ({first_line[:200]}); running without XLA"
