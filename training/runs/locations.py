"""Where a run database is: a SQLite file's path, or a PostgreSQL server's URL, and how to show it.

One setting names the database everywhere (`--db`, `CLIPWATCH_DB`, `LiveClipping(database=...)`,
`RunDatabase(...)`): a path is a SQLite file; a libpq connection string is a PostgreSQL
database, either a URL (`postgresql://user@host:port/dbname`, `postgres://...`) or keywords
(`host=... port=... dbname=...`). libpq reads the rest as `psql` does (PGPASSWORD, ~/.pgpass,
the other PG* variables, sslmode).

A password written into the setting must never be shown: every place that shows a location
(the page, logs, errors, the CLI's summary, exported files) shows `redacted(location)`, and
text that may quote it (a driver's error) passes through `without_password(text, location)`.

Example:
    >>> redacted("postgresql://ana:s3cret@db.lab:5432/runs")
    'postgresql://ana:***@db.lab:5432/runs'
    >>> redacted("host=db.lab password='s3 cret' dbname=runs")
    'host=db.lab password=*** dbname=runs'
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

URL_SCHEMES = ("postgresql://", "postgres://")
HIDDEN = "***"
# The libpq keywords a keyword string starts with (`host=db dbname=runs`); a file path does not
# look like `keyword=`.
_KEYWORD_START = re.compile(
    r"^\s*(host|hostaddr|port|dbname|user|password|passfile|service|sslmode|options|"
    r"application_name|connect_timeout)\s*=",
    re.IGNORECASE,
)
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"((?:^|[?&])password=)([^&#]*)", re.IGNORECASE)


def home_expanded(path: str | os.PathLike) -> Path:
    """`path` with `~` and `~user` expanded as a shell does (only a shell expands them: a setting
    in an environment file or a script would otherwise name a folder called "~"). ValueError
    saying why for `~name` of no user of this machine (pathlib raises RuntimeError, "Could not
    determine home directory.")."""
    path = Path(path)
    try:
        return path.expanduser()
    except RuntimeError:
        raise ValueError(f"{path.parts[0]!r} names no user of this machine") from None


def missing_database_file(location: Any) -> bool:
    """Whether `location` names a database file that is not there: to read runs from it would
    create an empty one. A server, or a `~name` of no user (which RunDatabase refuses, naming it),
    is not "missing"."""
    if is_server_location(location):
        return False
    try:
        return not home_expanded(location).exists()
    except ValueError:
        return False


def same_database_file(first: Any, second: Any) -> bool:
    """Whether two locations name one file however spelled (`a.db`, `x/../a.db`, a symlink to it,
    `~/a.db`). Servers, and a `~name` of no user, are never "the same file" here."""
    if is_server_location(first) or is_server_location(second):
        return False
    try:
        first_path, second_path = home_expanded(first), home_expanded(second)
    except ValueError:
        return False
    try:
        return os.path.samefile(first_path, second_path)
    except OSError:  # one of them does not exist yet
        return os.path.realpath(first_path) == os.path.realpath(second_path)


def is_server_location(location: Any) -> bool:
    """Whether `location` names a PostgreSQL database (a URL or a keyword string), not a file."""
    if not isinstance(location, str):
        return False
    return location.strip().lower().startswith(URL_SCHEMES) or bool(_KEYWORD_START.match(location))


def redacted(location: str | os.PathLike) -> str:
    """`location` as it may be shown: any password replaced by ***; a path unchanged."""
    text = os.fspath(location)
    if not is_server_location(text):
        return text
    if not text.strip().lower().startswith(URL_SCHEMES):
        return _KEYWORD_PASSWORD.sub(lambda match: match.group(1) + HIDDEN, text)
    parts = urllib.parse.urlsplit(text.strip())
    netloc = parts.netloc
    if "@" in netloc:
        credentials, hosts = netloc.rsplit("@", 1)
        if ":" in credentials:
            credentials = credentials.split(":", 1)[0] + ":" + HIDDEN
        netloc = f"{credentials}@{hosts}"
    query = _QUERY_PASSWORD.sub(lambda match: match.group(1) + HIDDEN, parts.query)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def passwords_in(location: str) -> list[str]:
    """The password texts written in `location` (as typed and as decoded), longest first."""
    found = []
    if location.strip().lower().startswith(URL_SCHEMES):
        parts = urllib.parse.urlsplit(location.strip())
        credentials = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else ""
        if ":" in credentials:
            found.append(credentials.split(":", 1)[1])
        found += [match.group(2) for match in _QUERY_PASSWORD.finditer(parts.query)]
    else:
        found += [match.group(2).strip("'") for match in _KEYWORD_PASSWORD.finditer(location)]
    found += [urllib.parse.unquote(password) for password in found]
    return sorted({password for password in found if password}, key=len, reverse=True)


def without_password(text: str, location: str | os.PathLike) -> str:
    """`text` (e.g. a driver's error message) with every password of `location` hidden."""
    location = os.fspath(location)
    if not is_server_location(location):
        return text
    for password in passwords_in(location):
        text = text.replace(password, HIDDEN)
    return text.replace(location, redacted(location))


def server_address(parameters: dict[str, str]) -> tuple[str, str]:
    """(host, port) that libpq will try for these connection parameters (`conninfo_to_dict`),
    with libpq's defaults: PGHOST / PGPORT, else the local socket and 5432."""
    host = parameters.get("host") or parameters.get("hostaddr") or os.environ.get("PGHOST") or "the local socket"
    port = parameters.get("port") or os.environ.get("PGPORT") or "5432"
    return host, port
