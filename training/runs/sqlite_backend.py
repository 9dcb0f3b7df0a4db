"""The run database in an embedded SQLite file (WAL mode): the default, needing nothing.

A file is recognised before anything is written to it: Clipwatch stamps its databases with
SQLite's `application_id` (APPLICATION_ID, "CLPW") and `user_version` (SCHEMA_VERSION). An
empty file is stamped; an unstamped file with exactly Clipwatch's tables (made before the stamp)
is stamped and used; an older version gains the columns it lacks; anything else (another
application's `runs` table, a newer schema, not SQLite at all) is refused with a
`DatabaseError` and left byte-for-byte unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from .backend import Backend, FinalWriteFault, WriteFault, WriterLink
from .locations import home_expanded
from .schema import (
    APPLICATION_ID, BUSY_SECONDS, FIRST_TABLE_COLUMNS, NO_PAGE_CAP, REPORT_WAIT_EVERY_SECONDS, SCHEMA_STATEMENTS,
    SCHEMA_VERSION, SQLITE_HEADER, SQLITE_TYPES, START_WAIT_SECONDS, TABLE_COLUMNS, WRITER_BUSY_SECONDS, DatabaseError,
    table_columns,
)  # fmt: skip

log = logging.getLogger("training.persistence")


class SqliteBackend(Backend):
    """One SQLite file; every connection is a new one (they are cheap), in autocommit mode.

    `max_pages` caps the file (SQLite's `max_page_count`, 4 KiB pages), read before each of a
    writer's commits; `writer_busy_seconds` is how long a write waits for another process's
    write lock before it reports the wait and retries.
    """

    TYPES = SQLITE_TYPES
    BEGIN = "BEGIN IMMEDIATE"  # the write lock first: a busy file waits here, not mid-transaction
    INSERTION_ORDER = "rowid"
    errors = (sqlite3.Error,)

    def __init__(
        self,
        path: str | os.PathLike,
        max_pages: int | None,
        writer_busy_seconds: float = WRITER_BUSY_SECONDS,
        read_only: bool = False,
    ):
        self.shown = str(path)  # as given, until it is expanded: the refusal below quotes it
        self.max_pages, self.writer_busy_seconds, self.read_only = max_pages, writer_busy_seconds, read_only
        try:  # "~/runs.db" (CLIPWATCH_DB, LiveClipping(database=...)) is in the home folder, not in a new "~"
            self.path = home_expanded(path)
        except ValueError as error:
            raise self.cannot_use(str(error)) from None
        self.shown = str(self.path)

    def connect(self, busy_seconds: float = BUSY_SECONDS) -> sqlite3.Connection:
        if self.read_only:
            return self._connect_read_only(busy_seconds)
        connection = sqlite3.connect(self.path, timeout=busy_seconds, isolation_level=None, check_same_thread=False)
        connection.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
        connection.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints
        connection.execute(f"PRAGMA max_page_count={int(self.max_pages or NO_PAGE_CAP)}")
        return connection

    def _connect_read_only(self, busy_seconds: float) -> sqlite3.Connection:
        """A connection that cannot write the file, and leaves nothing beside it. A WAL database
        read with `mode=ro` gets a -wal and a -shm file made beside it, left there after (a
        reader may not remove them), or cannot be read at all where none can be made (a
        read-only folder or mount). So, unless a -wal file is there (a writer has it open, or
        ended uncleanly: its steps are only there), the file is read as immutable: nothing is
        made, nothing is locked."""
        wal = self.path.with_name(self.path.name + "-wal")
        mode = "mode=ro" if wal.exists() else "immutable=1"
        uri = f"{self.path.resolve().as_uri()}?{mode}"
        connection = sqlite3.connect(uri, uri=True, timeout=busy_seconds, isolation_level=None, check_same_thread=False)
        connection.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
        return connection

    def table_columns(self, connection) -> dict[str, tuple[str, ...]]:
        return table_columns(connection)

    # --- recognising, stamping, upgrading ------------------------------------------------------

    def prepare(self) -> None:
        if self.read_only:
            return self._recognise_read_only()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._check_header()
            if self.path.exists() and not os.access(self.path, os.W_OK):  # as the writer checks
                raise self.cannot_use("the file is read-only")
            with self.connection() as connection:
                version = self._recognise(connection)  # refuses a foreign file: nothing written yet
                connection.execute("PRAGMA journal_mode=WAL")
                if version != SCHEMA_VERSION:
                    self.write_transaction("set up the database", self._stamp)
        except DatabaseError:
            raise
        except (OSError, ValueError, sqlite3.Error) as error:  # ValueError: a NUL in the path
            raise self.cannot_use(str(error)) from error

    def identity(self) -> tuple:
        status = os.stat(self.path)  # a symbolic link or another spelling: the same file
        return ("sqlite", status.st_dev, status.st_ino)

    def _recognise_read_only(self) -> None:
        """`prepare` for a database that is only read (a copy's source): recognised, never
        stamped, upgraded or switched to WAL."""
        try:
            if not self.path.is_file():
                raise self.cannot_use("there is no run database file there")
            self._check_header()
            with self.connection() as connection:
                version = self._recognise(connection)
        except DatabaseError:
            raise
        except (OSError, ValueError, sqlite3.Error) as error:
            raise self.cannot_use(str(error)) from error
        if version is None:
            raise self.cannot_use("it is an empty file, not a run database")
        if version != SCHEMA_VERSION:
            raise self.older_schema_read_only(version)

    def _not_ours(self, reason: str) -> DatabaseError:
        return self.cannot_use(f"it is not a Clipwatch database ({reason}); it was left unchanged")

    def _check_header(self) -> None:
        """Refuse a file that is not SQLite at all, before SQLite opens it."""
        try:
            with open(self.path, "rb") as file:
                header = file.read(len(SQLITE_HEADER))
        except FileNotFoundError:
            return  # a new database
        if header and header != SQLITE_HEADER:
            raise self._not_ours("it is not an SQLite file")

    def _recognise(self, connection: sqlite3.Connection) -> int | None:
        """The file's schema version (None: a new, empty file); DatabaseError if it is not ours."""
        application_id = connection.execute("PRAGMA application_id").fetchone()[0]
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if application_id == APPLICATION_ID:
            if version > SCHEMA_VERSION:
                raise self.newer_schema(version)
            return version
        if application_id != 0:
            raise self._not_ours(
                f"its application_id is {application_id:#010x}, Clipwatch's is {APPLICATION_ID:#010x}"
            )
        if connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0] == 0 and version == 0:
            return None
        tables = table_columns(connection)
        known = TABLE_COLUMNS if tables.get("runs") == TABLE_COLUMNS["runs"] else FIRST_TABLE_COLUMNS
        theirs = sorted(name for name, columns in tables.items() if known.get(name) != columns)
        if version != 0 or theirs or "runs" not in tables:
            described = ", ".join(theirs[:5]) + (", ..." if len(theirs) > 5 else "")
            raise self._not_ours(
                f"user_version {version} without Clipwatch's application_id" if version != 0
                else f"tables Clipwatch does not make: {described}" if theirs
                else "no runs table"
            )  # fmt: skip
        return 0  # made by Clipwatch before the stamp

    def _stamp(self, connection: sqlite3.Connection) -> None:
        """Create the tables (in a new file), add the columns an older one lacks, and stamp it."""
        version = self._recognise(connection)
        if version == SCHEMA_VERSION:  # another process stamped it meanwhile
            return
        if version is None:
            for statement in SCHEMA_STATEMENTS:
                connection.execute(statement)
        else:
            self.add_missing_columns(connection)
        connection.execute(f"PRAGMA application_id={APPLICATION_ID}")
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def write_transaction(self, what: str, write: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `write(connection)` in one write transaction and return its result.

        While another process holds the write lock, wait for it as a run's writer does: try for
        `writer_busy_seconds`, log that we wait (then every REPORT_WAIT_EVERY_SECONDS), retry,
        and give up with a DatabaseError after START_WAIT_SECONDS.
        """
        started = time.monotonic()
        next_report = 0.0
        while True:
            with self.connection(busy_seconds=self.writer_busy_seconds) as connection:
                try:
                    connection.execute(self.BEGIN)  # waits busy_seconds for the lock
                except sqlite3.OperationalError as error:
                    if "locked" not in str(error) and "busy" not in str(error):
                        raise
                else:
                    try:
                        result = write(connection)
                    except BaseException:
                        connection.execute("ROLLBACK")
                        raise
                    connection.execute("COMMIT")
                    if next_report > 0:
                        log.warning("The run database %r is free again: done (%s).", self.shown, what)
                    return result
            waited = time.monotonic() - started
            if waited > START_WAIT_SECONDS:
                raise self.cannot_use(f"another process has held its write lock for over {START_WAIT_SECONDS:g} s")
            if waited >= next_report:
                log.warning(
                    "Waiting for the run database %r to %s: another process has held its write "
                    "lock for %.0f s; retrying.", self.shown, what, waited,
                )  # fmt: skip
                next_report = waited + REPORT_WAIT_EVERY_SECONDS

    def writer_link(self, busy_seconds: float) -> "SqliteWriterLink":
        return SqliteWriterLink(self, busy_seconds)


class SqliteWriterLink(WriterLink):
    """A writer's connection to the file, checked before each commit: the file still there (a
    deleted one is rebuilt at its path from the copy still open, SQLite's backup), the same file
    (a replaced one is never mixed with), writable, and the page cap as it is now."""

    def __init__(self, backend: SqliteBackend, busy_seconds: float):
        self.backend, self.busy_seconds = backend, busy_seconds
        self._connection: sqlite3.Connection | None = None
        self._file_identity: tuple[int, int] | None = None

    def connection(self, last_step_written: int) -> tuple[sqlite3.Connection, str | None]:
        path, notice = self.backend.path, None
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            stat = None
        identity = None if stat is None else (stat.st_dev, stat.st_ino)
        if self._file_identity is not None and identity != self._file_identity:
            if identity is not None:
                raise FinalWriteFault("the file was replaced by another one; not mixing two databases")
            self._rebuild_deleted_file()
            notice = (
                f"The run database file {str(path)!r} was deleted after step {last_step_written}; it "
                "was rebuilt at its path from the copy still open, with every run and step it held, "
                "none lost."
            )
        elif not os.access(path, os.W_OK):
            raise WriteFault("the file is read-only")
        if self._connection is None:
            self._connection = self.backend.connect(busy_seconds=self.busy_seconds)
            stat = os.stat(path)
            self._file_identity = (stat.st_dev, stat.st_ino)
        # The cap can change while the run records (room made on the disk): apply it each time.
        self._connection.execute(f"PRAGMA max_page_count={int(self.backend.max_pages or NO_PAGE_CAP)}")
        return self._connection, notice

    def _rebuild_deleted_file(self) -> None:
        """Copy the deleted database (still open through our connection) back to its path."""
        path = self.backend.path
        if self._connection is None:
            raise FinalWriteFault("the file was deleted while no copy of it was open")
        path.parent.mkdir(parents=True, exist_ok=True)
        rebuilt = path.with_name(path.name + ".rebuilding")
        with contextlib.closing(sqlite3.connect(rebuilt)) as copy:
            self._connection.backup(copy)
        self._connection.close()  # its checkpoint goes to the deleted file, not the new one
        self._connection = None
        os.replace(rebuilt, path)

    def discard(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def reason(self, error: BaseException) -> str:
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            return f"another process has held its write lock for over {self.busy_seconds:g} s"
        return str(error)
