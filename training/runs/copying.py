"""Copying runs between two run databases (a local SQLite experiment into the team's server).

Each copied run gets a new id in the target (ids are the target's own); every row of it comes
along (step chunks byte for byte, events, evaluations, commands), and lineage is kept: a copied
run's `parent_run_id` names its parent's id in the target, so a run is copied with the runs it
was forked from. Live runs are not copied (their process still writes to the source).

Example:
    >>> copied = copy_runs(RunDatabase("runs/laptop.db"), RunDatabase("postgresql://db/runs"))  # doctest: +SKIP
    >>> copied  # source id -> target id  # doctest: +SKIP
    {1: 41, 2: 42}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

from .schema import LIVE_STATES, TABLE_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

    from .database import RunDatabase

# What is copied of each run, table by table: (table, its run column, its own id column if any,
# the order its rows are copied in; None: the order written, the backend's INSERTION_ORDER).
COPIED_TABLES = (("step_chunks", "run_id", None, "first_step"), ("events", "run_id", None, None),
                 ("evaluations", "run_id", None, None), ("commands", "run", "id", "id"))  # fmt: skip
RUN_COLUMNS = tuple(column for column in TABLE_COLUMNS["runs"] if column != "run_id")


def runs_to_copy(source: "RunDatabase", run_ids: Iterable[int] | None, listed: "pd.DataFrame | None" = None) -> list[int]:
    """The ids to copy, parents before children: `run_ids` and their ancestors (all ended runs
    if None); ValueError naming a run that is missing or live. `listed`: `source.list_runs()`,
    if already read."""
    listed = source.list_runs() if listed is None else listed
    runs = listed.set_index("run_id")
    if run_ids is None:  # every ended run whose ancestors have ended too: no lineage is cut
        held_back = set(held_back_by_a_live_ancestor(source, listed))
        return sorted(int(run_id) for run_id in runs.index[~runs.state.isin(LIVE_STATES)] if run_id not in held_back)
    wanted: set[int] = set()
    for run_id in run_ids:
        while run_id is not None and run_id not in wanted:
            if run_id not in runs.index:
                raise ValueError(f"No run with run_id={run_id!r} in {source.location!r}")
            if runs.state[run_id] in LIVE_STATES:
                raise ValueError(
                    f"Run {run_id} is live (state {runs.state[run_id]!r}): copy it once it has ended."
                )
            wanted.add(int(run_id))
            parent = runs.parent_run_id[run_id]
            run_id = None if parent is None or parent != parent else int(parent)  # NaN: no parent
    return sorted(wanted)


def held_back_by_a_live_ancestor(source: "RunDatabase", listed: "pd.DataFrame | None" = None) -> list[int]:
    """The ended runs with a live ancestor: copied alone, a branch's parent would be missing in
    the target (found by probing: such branches were copied with no parent and a fork step)."""
    runs = (source.list_runs() if listed is None else listed).set_index("run_id")

    def ancestors(run_id) -> list:
        found = []
        parent = runs.parent_run_id[run_id]
        while parent is not None and parent == parent and int(parent) in runs.index and int(parent) not in found:
            found.append(int(parent))
            parent = runs.parent_run_id[int(parent)]
        return found

    ended = runs.index[~runs.state.isin(LIVE_STATES)]
    return sorted(int(run_id) for run_id in ended if any(runs.state[a] in LIVE_STATES for a in ancestors(run_id)))


def copy_runs(
    source: "RunDatabase",
    target: "RunDatabase",
    run_ids: Iterable[int] | None = None,
    *,
    listed: "pd.DataFrame | None" = None,
    on_copied: Callable[[int, int], None] | None = None,
) -> dict[int, int]:
    """Copy runs (see the module) from `source` to `target`; returns {source id: target id}.
    Each run is copied in one transaction of the target: a failure leaves no half run, and the
    runs copied before it are in the target (`on_copied(source id, target id)` is called as
    each one is). `listed`: `source.list_runs()`, if already read."""
    copied: dict[int, int] = {}
    listed = source.list_runs() if listed is None else listed  # a dead run as interrupted, even in a source read only
    rows = listed.set_index("run_id")
    for run_id in runs_to_copy(source, run_ids, listed):  # `run_ids` and their ancestors, checked
        copied[run_id] = _copy_run(source, target, run_id, copied, rows.loc[run_id])
        if on_copied is not None:
            on_copied(run_id, copied[run_id])
    return copied


def _copy_run(source: "RunDatabase", target: "RunDatabase", run_id: int, copied: dict[int, int], listed) -> int:
    """`listed`: the run's row of `source.list_runs()`, whose state and error it is copied with."""
    reading, writing = source.backend, target.backend
    with reading.connection() as connection:
        _, [row] = reading.rows(connection, f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE run_id = ?", (run_id,))
        error = listed["error"] if isinstance(listed["error"], str) else None  # pandas' NaN for NULL
        run = {**dict(zip(RUN_COLUMNS, row)), "state": listed["state"], "error": error}
        rows = {
            table: reading.rows(
                connection,
                f"SELECT {', '.join(_columns(table, own_id))} FROM {table} WHERE {run_column} = ?"
                f" ORDER BY {order or reading.INSERTION_ORDER}",
                (run_id,),
            )[1]
            for table, run_column, own_id, order in COPIED_TABLES
        }
    if run["parent_run_id"] is not None:
        run["parent_run_id"] = copied.get(run["parent_run_id"])
    with writing.transaction() as connection:
        cursor = writing.execute(
            connection,
            f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))}) RETURNING run_id",
            tuple(run.values()),
        )
        (new_id,) = cursor.fetchone()
        for table, run_column, own_id, _ in COPIED_TABLES:
            columns = _columns(table, own_id)
            position = columns.index(run_column)
            value_position = columns.index("value") if table == "commands" else None
            renumbered = []
            for row in rows[table]:
                row = list(row)
                row[position] = new_id
                if value_position is not None:
                    row[value_position] = writing.encode_value(reading.decode_value(row[value_position]))
                renumbered.append(tuple(bytes(value) if isinstance(value, memoryview) else value for value in row))
            writing.execute_many(
                connection,
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                renumbered,
            )
    return int(new_id)


def _columns(table: str, own_id: str | None) -> tuple[str, ...]:
    """The columns of `table` that are copied: all but its own id (the target numbers it)."""
    return tuple(column for column in TABLE_COLUMNS[table] if column != own_id)
