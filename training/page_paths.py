"""Where the page (a browser, maybe someone else's) may put the run database: the runs folder only.

The CLI and the Python API run with the user's own rights and take any path. A page shared on a
network must not let a visitor point the server at a file elsewhere (overwrite it, or fill a
disk), so `page_database_path` accepts only files inside the runs folder: the folder of
`CLIPWATCH_DB` if it is set, else `runs/` under the working directory.

Refused, with the reason and the value received:
    * anything that is not text, empty text, text with a NUL character or a lone surrogate;
    * any `..` component (even one that would come back inside);
    * a path that is, or resolves (through symbolic links) to, a place outside the folder;
    * the folder itself.

Example:
    >>> page_database_path("runs/demo.db", runs_folder="runs")  # doctest: +SKIP
    PosixPath('/home/me/clipwatch/runs/demo.db')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .runs.database import DEFAULT_PATH, default_path
from .runs.locations import home_expanded, is_server_location


def runs_folder() -> Path:
    """The folder the page may use: that of `CLIPWATCH_DB` (a file), else `runs/`."""
    default = default_path()
    return (DEFAULT_PATH if is_server_location(default) else default).parent


def page_database_path(text: Any, folder: str | os.PathLike | None = None) -> Path:
    """Return the database path `text` names (resolved), if it lies inside the runs folder.

    Relative paths are relative to the working directory, as everywhere else (`runs/demo.db`).
    Raises ValueError naming `text` and saying why otherwise.
    """
    folder = Path(runs_folder() if folder is None else folder).expanduser()
    real_folder = folder.resolve()

    def refuse(reason: str) -> ValueError:
        return ValueError(
            f"The page can only use a database file inside the runs folder {str(real_folder)!r} "
            f"(e.g. {str(folder / 'demo.db')!r}): {reason}. Received: path={text!r}"
        )

    if not isinstance(text, (str, os.PathLike)):
        raise refuse("a path must be text")
    raw = os.fspath(text)
    if not isinstance(raw, str) or not raw.strip():
        raise refuse("a path must be non-empty text")
    if is_server_location(raw):  # a server (and its password) is the operator's to set
        raise ValueError(
            "The page cannot choose a database server: the operator sets one with --db or "
            "CLIPWATCH_DB. Received: a PostgreSQL connection string"
        )
    if "\x00" in raw:
        raise refuse("a path cannot contain a NUL character")
    try:
        os.fsencode(raw)
    except UnicodeEncodeError:  # a lone surrogate: found by tests/test_inputs.py
        raise refuse("the file system cannot hold that name") from None
    try:
        path = home_expanded(raw.strip())
    except ValueError as error:  # "~name" for a user this machine does not know: found by tests/test_inputs.py
        raise refuse(str(error)) from None
    if ".." in path.parts:
        raise refuse("'..' is not allowed")
    absolute = path if path.is_absolute() else Path.cwd() / path
    try:
        real = absolute.resolve()  # follows every symbolic link on the way
    except (OSError, RuntimeError) as error:  # RuntimeError: a symbolic-link loop
        raise refuse(f"it cannot be resolved ({error})") from None
    if real == real_folder:
        raise refuse("that is the folder itself, not a file in it")
    if not real.is_relative_to(real_folder):
        inside_before_links = absolute.is_relative_to(folder.absolute())
        raise refuse(
            "a symbolic link leads outside it" if inside_before_links else "it is outside that folder"
        )
    return real
