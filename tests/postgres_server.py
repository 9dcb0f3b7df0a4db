"""A throwaway PostgreSQL cluster for the tests: started once per session, removed after.

Debian's PostgreSQL binaries refuse to run as root, so as root the cluster belongs to the
`postgres` user (`runuser`), in a temporary folder it owns, listening on a free TCP port of
127.0.0.1 and on a Unix socket in that folder. Authentication is `trust` (nothing leaves the
machine's loopback); `make_database()` creates a fresh database per test.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

BINARIES = Path("/usr/lib/postgresql/15/bin")
START_SECONDS = 60


def binaries_missing() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (BINARIES / name).exists()]
    if missing:
        return f"no PostgreSQL binaries in {BINARIES} (missing {', '.join(missing)}): apt-get install postgresql"
    return None


def free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One cluster: `start()`, `url(dbname)`, `make_database()`, `restart()`, `remove()`."""

    def __init__(self, fsync: bool = False):
        self.fsync = fsync  # off for the tests (nothing to keep); on for a benchmark's honest cost
        self.folder = Path(tempfile.mkdtemp(prefix="clipwatch-postgres-"))
        self.data, self.sockets = self.folder / "data", self.folder / "sockets"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        for folder in (self.data, self.sockets):
            folder.mkdir()
        if os.geteuid() == 0:
            self.folder.chmod(0o755)
            for path in (self.folder, self.data, self.sockets):
                shutil.chown(path, "postgres", "postgres")

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=START_SECONDS)

    def start(self) -> "PostgresServer":
        self._run(str(BINARIES / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
                  "--no-sync", "-E", "UTF8")  # fmt: skip
        self._pg_ctl("start")
        return self

    def _pg_ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync={'on' if self.fsync else 'off'}"
        self._run(str(BINARIES / "pg_ctl"), "-D", str(self.data), "-o", options, "-w",
                  "-t", str(START_SECONDS), "-l", str(self.folder / "server.log"), action)  # fmt: skip

    def restart(self) -> None:
        """Stop the server (fast: connections are cut) and start it again."""
        self._pg_ctl("restart")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def make_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"clipwatch_{uuid.uuid4().hex[:12]}"
        self._administer(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of `url` (made by `make_database`), cutting its connections."""
        self._administer(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    def _administer(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(statement)

    def remove(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run(str(BINARIES / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


BACKENDS = ("sqlite", "postgresql")


def fresh_location(backend: str, folder: Path, request) -> Path | str:
    """A new, empty run database of `backend` for a test: a file in `folder`, or a new
    database on the session's cluster (the `postgres_server` fixture), dropped after the test
    (each holds about 8 MB: a session's worth would fill a small /tmp)."""
    if backend == "sqlite":
        return folder / "runs.db"
    server = request.getfixturevalue("postgres_server")
    url = server.make_database()
    request.addfinalizer(lambda: server.drop_database(url))
    return url
