"""One package under two names: `clipwatch`, as installed, and `training`, the checkout's folder.

Installed (`python -m pip install -e .`), the package is imported as `clipwatch`: a name a user's
own `training.py` or `training/` folder cannot shadow. The dashboard and the tests run from the
checkout, where the folder is `training`. Inside, every import is relative, so the code does not
depend on its name; what must not happen is the same file loaded twice under both names (two
`LiveClipping` classes, two registries). So the package, imported as `training`, answers
`import clipwatch...` with the very modules it already has (`alias`); imported as `clipwatch`, it
leaves the name `training` alone: that name may be the user's.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

INSTALLED_NAME = "clipwatch"


class Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of `alias` and `alias.x.y` give the modules `canonical` and `canonical.x.y`."""

    def __init__(self, alias: str, canonical: str):
        self.alias, self.canonical = alias, canonical
        self._original_specs: dict[str, object] = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.alias and not fullname.startswith(self.alias + "."):
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(self.canonical + spec.name[len(self.alias):])
        self._original_specs[spec.name] = module.__spec__  # the import system overwrites it
        return module

    def exec_module(self, module) -> None:
        # The module ran already, under its canonical name: keep that name's spec on it.
        module.__spec__ = self._original_specs.pop(module.__spec__.name, module.__spec__)


def alias(canonical: str) -> None:
    """Make `clipwatch` another name for the package imported as `canonical` (no-op when the
    package was imported as `clipwatch` itself)."""
    if canonical == INSTALLED_NAME:
        return
    if any(isinstance(finder, Alias) and finder.alias == INSTALLED_NAME for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, Alias(INSTALLED_NAME, canonical))
