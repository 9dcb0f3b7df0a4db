"""`python -m training.runs copy SOURCE TARGET [--run ID]`: copy runs between two run databases.

SOURCE and TARGET are each a SQLite file's path or a PostgreSQL connection string (as `--db`
takes). Prints one line per copied run (`run 3 -> 41: name`) as it is copied; a database that
cannot be used, a run that cannot be copied, or a database error midway (a damaged file, a
server gone) exits with status 2 and one message, the runs printed before it copied whole.
Locations are shown redacted (no password).
"""

from __future__ import annotations

import argparse
import sys

from .backend import PICK_ANOTHER_PATH
from .copying import copy_runs, runs_to_copy
from .database import DatabaseError, RunDatabase
from .locations import missing_database_file, same_database_file, without_password
from .schema import LIVE_STATES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.runs", description="Manage run databases.")
    commands = parser.add_subparsers(dest="command", required=True)
    copy = commands.add_parser(
        "copy", help="copy runs from SOURCE to TARGET (new ids there; lineage kept)",
        description="Copy ended runs from SOURCE to TARGET, each with new ids in TARGET; a run "
        "comes with the runs it was forked from, so its lineage is kept.",
    )  # fmt: skip
    copy.add_argument("source", help="a SQLite file or a PostgreSQL URL (postgresql://user@host:port/dbname)")
    copy.add_argument("target", help="the same kinds; created if new")
    copy.add_argument("--run", type=int, action="append", dest="runs", metavar="ID",
                      help="copy only this run (and its ancestors); repeatable (default: every ended run)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for label, location in (("SOURCE", args.source), ("TARGET", args.target)):
        if not location.strip():
            parser.error(f"{label} needs a SQLite file's path or a PostgreSQL URL, not empty text. Received: {location!r}")
    if missing_database_file(args.source):  # a mistyped SOURCE must not become a new, empty database
        parser.error(f"SOURCE: there is no run database at {args.source!r}: nothing to copy.")
    if same_database_file(args.source, args.target):  # however spelled: the copy went into SOURCE
        parser.error(f"SOURCE and TARGET are the same database file ({args.source!r} and {args.target!r})")
    side, opened = "SOURCE", []
    try:
        source = RunDatabase(args.source, read_only=True)  # read, never written: a read-only file works
        opened.append(source)
        listed = source.list_runs()  # read once: what is wanted, held back and copied agree
        names = listed.set_index("run_id").name
        wanted = runs_to_copy(source, args.runs, listed)  # before TARGET is opened: a refused copy creates no database
        side = "TARGET"
        target = RunDatabase(args.target)
        opened.append(target)
        if source.backend.identity() == target.backend.identity():  # however spelled: a copy into SOURCE
            parser.error(f"SOURCE and TARGET are the same database ({source.location!r} and {target.location!r})")

        def copied_one(old: int, new: int) -> None:
            print(f"run {old} -> {new}: {names[old]}", flush=True)

        copied = copy_runs(source, target, wanted, listed=listed, on_copied=copied_one)
    except DatabaseError as error:  # said of the side it is about, without the run database's --db advice
        parser.error(f"{side}: {str(error).removesuffix(' ' + PICK_ANOTHER_PATH)}")
    except ValueError as error:
        parser.error(str(error))
    except Exception as error:  # the driver's own (a damaged file, a server gone): one message, not a traceback
        if not any(isinstance(error, database.errors) for database in opened):
            raise
        text = " ".join(str(error).split()) or type(error).__name__
        for location in (args.source, args.target):
            text = without_password(text, location)
        locations = " to ".join(repr(database.location) for database in opened)  # shown redacted
        parser.error(f"the copy stopped on a database error ({locations}): {type(error).__name__}: {text}. "
                     "The runs printed above were copied whole; no other run was.")  # fmt: skip
    print(f"copied {len(copied)} run(s) from {source.location!r} to {target.location!r}", file=sys.stderr)
    # By default every ended run is wanted but those runs_to_copy held back (a live ancestor).
    ended = listed.run_id[~listed.state.isin(LIVE_STATES)]
    held_back = [] if args.runs is not None else sorted(set(map(int, ended)) - set(wanted))
    if held_back:
        print(f"left out {len(held_back)} ended run(s) forked from a live run (their lineage would be cut): "
              f"{', '.join(map(str, held_back))}; copy them once it has ended", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
