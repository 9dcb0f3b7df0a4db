"""What a run database's backend provides: connections, transactions, its dialect and types.

`RunDatabase` and `RunWriter` write their SQL once, with `?` placeholders, and run it through
a backend: `SqliteBackend` (a file) or `PostgresBackend` (a server). A backend says only what
differs between the two: how to connect and begin a write, its column types for the one schema
(`schema.SCHEMA_TEMPLATE`), its insertion-order column, how a command's value is stored, how a
store is recognised, created or upgraded, and how a run's writer keeps its connection through
faults (`writer_link`).
"""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .schema import ADDED_COLUMNS, BUSY_SECONDS, DatabaseError, added_column_statement

# How a run's database is chosen again (a copy's SOURCE and TARGET are not chosen there).
PICK_ANOTHER_PATH = "Pick another path (CLI --db, the CLIPWATCH_DB variable, or the UI's settings)."


class WriteFault(Exception):
    """The database cannot be written right now; the message says why (the writer retries)."""


class FinalWriteFault(WriteFault):
    """The database cannot be written by this writer again."""


class Backend:
    """The part of a run database that depends on which database it is (see the module).

    Subclasses set TYPES (the schema's type tokens), BEGIN (how a write transaction starts),
    INSERTION_ORDER (the column that orders events and evaluations as written) and `errors`
    (the driver's exception classes), and implement `connect`, `prepare` and `writer_link`.
    """

    TYPES: dict[str, str] = {}
    BEGIN = "BEGIN"
    INSERTION_ORDER = "rowid"
    errors: tuple[type[BaseException], ...] = ()
    shown = ""  # the location as it may be shown (`locations.redacted`)

    # --- connections and statements ------------------------------------------------------------

    def connect(self, busy_seconds: float = BUSY_SECONDS):
        """A new connection in autocommit mode (transactions are begun explicitly)."""
        raise NotImplementedError

    def dialect(self, statement: str) -> str:
        """`statement` (written with `?` placeholders) as this database's driver takes it."""
        return statement

    def execute(self, connection, statement: str, parameters: Iterable[Any] = ()):
        cursor = connection.cursor()
        # A numpy number (a run id taken from list_runs()) as the Python one: sqlite3 bound an
        # int64 as bytes, so `metrics(run_id)` matched no row and said nothing.
        cursor.execute(self.dialect(statement), tuple(_plain(value) for value in parameters))
        return cursor

    def execute_many(self, connection, statement: str, rows: list[tuple]) -> None:
        if rows:
            connection.cursor().executemany(self.dialect(statement), rows)

    @contextlib.contextmanager
    def connection(self, busy_seconds: float = BUSY_SECONDS) -> Iterator[Any]:
        """A connection for a few statements, closed after."""
        with contextlib.closing(self.connect(busy_seconds)) as connection:
            yield connection

    @contextlib.contextmanager
    def transaction(self, busy_seconds: float = BUSY_SECONDS) -> Iterator[Any]:
        """A connection inside one write transaction: committed on success, else rolled back."""
        with self.connection(busy_seconds) as connection:
            self.execute(connection, self.BEGIN)
            try:
                yield connection
            except BaseException:
                with contextlib.suppress(*self.errors):
                    self.execute(connection, "ROLLBACK")
                raise
            self.execute(connection, "COMMIT")

    def write_transaction(self, what: str, write: Callable[[Any], Any]) -> Any:
        """Run `write(connection)` in one write transaction and return its result (`what` says
        what it does, for a backend that reports waiting for another writer)."""
        with self.transaction() as connection:
            return write(connection)

    def rows(self, connection, statement: str, parameters: Iterable[Any] = ()) -> tuple[list[str], list[tuple]]:
        """(column names, rows) of a query."""
        cursor = self.execute(connection, statement, parameters)
        return [column[0] for column in cursor.description], cursor.fetchall()

    # --- what is stored differently ------------------------------------------------------------

    def encode_value(self, value: Any) -> Any:
        """A command's value (a number, text or None) as its column stores it."""
        return value

    def decode_value(self, stored: Any) -> Any:
        return stored

    # --- waking a command's reader -------------------------------------------------------------

    def notify_command(self, connection, run_id: int) -> None:
        """Inside `send_command`'s transaction: wake the readers of run `run_id`'s commands
        (nothing here: they poll)."""

    def wait_for_command(self, run_id: int, timeout: float, stop: threading.Event) -> None:
        """Return when a command for `run_id` may have arrived, `stop` is set, or after
        `timeout` seconds (here: the timeout; polling finds it)."""
        stop.wait(timeout)

    # --- the schema ----------------------------------------------------------------------------

    def table_columns(self, connection) -> dict[str, tuple[str, ...]]:
        """Each of the store's tables and its column names, in order."""
        raise NotImplementedError

    def add_missing_columns(self, connection) -> None:
        """Upgrade an older store: add each column of ADDED_COLUMNS its tables lack."""
        tables = self.table_columns(connection)
        for version in sorted(ADDED_COLUMNS):
            for table, column, type_token in ADDED_COLUMNS[version]:
                if column not in tables.get(table, ()):
                    self.execute(connection, added_column_statement(self.TYPES, table, column, type_token))

    def prepare(self) -> None:
        """Recognise the store (refusing one that is not Clipwatch's or is newer), and create or
        upgrade its tables; DatabaseError saying why it cannot be used."""
        raise NotImplementedError

    def writer_link(self, busy_seconds: float) -> "WriterLink":
        raise NotImplementedError

    def identity(self) -> tuple:
        """What names this store however its location is spelled (two equal identities: one
        store), e.g. so a copy never goes into its own source."""
        raise NotImplementedError

    # --- messages ------------------------------------------------------------------------------

    def cannot_use(self, reason: str) -> DatabaseError:
        return DatabaseError(f"Cannot use the run database at {self.shown!r}: {reason}. {PICK_ANOTHER_PATH}")

    def newer_schema(self, version: int) -> DatabaseError:
        from .schema import SCHEMA_VERSION

        return self.cannot_use(
            f"it was made by a newer Clipwatch (schema version {version}; this one knows "
            f"versions up to {SCHEMA_VERSION}). Upgrade Clipwatch to open it"
        )

    def older_schema_read_only(self, version: int) -> DatabaseError:
        """An older store opened to be read only: refused, not upgraded in place."""
        from .schema import SCHEMA_VERSION

        return self.cannot_use(
            f"its schema is version {version}, older than this Clipwatch's {SCHEMA_VERSION}, and it is "
            "opened to be read only: open it once where it may be written, and it is upgraded"
        )


class WriterLink:
    """A run writer's connection through faults: `connection(last_step_written)` returns a
    usable connection and a notice (a fault it repaired, else None), or raises WriteFault;
    `discard()` drops it after a failed write; `reason(error)` says what a driver error means."""

    def connection(self, last_step_written: int) -> tuple[Any, str | None]:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError

    def reason(self, error: BaseException) -> str:
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def json_value(value: Any) -> str | None:
    """A command's value as JSON text (None stays NULL): how a typed column stores any value."""
    return None if value is None else json.dumps(value, allow_nan=False)


def value_from_json(stored: str | None) -> Any:
    return None if stored is None else json.loads(stored)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
