"""TensorFlow imported at first use, for the modules the dashboard's first paint needs.

The page's sidebar checks settings with `clipping.policies` (names, parameters, validators) and
lists the tasks; those modules also define TensorFlow functions, but call TensorFlow only when a
run is built. Importing TensorFlow takes 5-13 s on 2 cores: loaded with them, it kept the page
grey and the Start button away for 14 s after a server started (issue #20). `tf` here forwards
every attribute to the real module, importing it at the first one.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


class LazyModule:
    """Stands for the module `name` and imports it when an attribute is first read."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str):
        return getattr(self.module(), attribute)

    def module(self) -> ModuleType:
        return importlib.import_module(self._name)  # after the first import, a dict lookup

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


tf = LazyModule("tensorflow")


def is_imported(name: str) -> bool:
    """Whether module `name` has finished importing (False while a thread is still importing it).

    A module is in `sys.modules` from the start of its import; `__spec__._initializing` is the
    flag CPython's import system itself reads to tell a module still being imported.
    """
    module = sys.modules.get(name)
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


def tensorflow_ready() -> bool:
    return is_imported("tensorflow")
