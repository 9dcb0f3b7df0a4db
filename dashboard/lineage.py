"""Runs and their branches (issue #21): which run was forked from which, at which step.

Pure functions over `RunDatabase.list_runs()` (its `parent_run_id` and `fork_step` columns) and
`run_info()` dicts, so History can list each run's branches under it and Compare can overlay a
lineage from the step where it split. No Streamlit here.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

BRANCH_MARK = "└ "  # before a branch's name in History's list, indented by its depth


def _optional_int(value: Any) -> int | None:
    """A nullable integer cell (`parent_run_id`, `fork_step`) as an int, or None (NULL reads
    back as None, NaN or pd.NA)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return int(value)


def parents(runs: pd.DataFrame) -> dict[int, int | None]:
    """run id -> the id of the run it was forked from (None: not a branch, or its parent is gone)."""
    run_ids = {int(run_id) for run_id in runs["run_id"]}
    column = runs["parent_run_id"] if "parent_run_id" in runs else [None] * len(runs)
    found = {int(run_id): _optional_int(parent) for run_id, parent in zip(runs["run_id"], column)}
    return {run_id: parent if parent in run_ids else None for run_id, parent in found.items()}


def lineage_order(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with each run's branches right under it (in the order they were forked, theirs
    under them), the runs that are no branch in their given order (newest first, as listed);
    a `depth` column says how many forks deep each row is (0: not a branch)."""
    parent_of = parents(runs)
    children: dict[int, list[int]] = {}
    for run_id in sorted(parent_of):
        if parent_of[run_id] is not None:
            children.setdefault(parent_of[run_id], []).append(run_id)
    order: list[tuple[int, int]] = []

    def visit(run_id: int, depth: int) -> None:
        order.append((run_id, depth))
        for child in children.get(run_id, []):
            visit(child, depth + 1)

    for run_id in (int(run_id) for run_id in runs["run_id"]):
        if parent_of[run_id] is None:
            visit(run_id, 0)
    position = {run_id: index for index, run_id in enumerate(runs["run_id"].astype(int))}
    ordered = runs.iloc[[position[run_id] for run_id, _ in order]].reset_index(drop=True)
    return ordered.assign(depth=[depth for _, depth in order])


def branches_of(runs: pd.DataFrame, run_id: int) -> list[int]:
    """The ids of the runs forked from `run_id` (directly), oldest first."""
    return sorted(child for child, parent in parents(runs).items() if parent == int(run_id))


def with_branches(ordered: pd.DataFrame, run_id: int, limit: int) -> list[int]:
    """`run_id` and the runs forked from it (and from those), in History's order, at most `limit`.
    `ordered` is `lineage_order(runs)` (History holds it already; a plain list is ordered here)."""
    if "depth" not in ordered:
        ordered = lineage_order(ordered)
    ids = ordered["run_id"].astype(int).tolist()
    start = ids.index(int(run_id))
    depth = int(ordered["depth"].iloc[start])
    family = [ids[start]]
    for index in range(start + 1, len(ids)):
        if int(ordered["depth"].iloc[index]) <= depth:
            break
        family.append(ids[index])
    return family[:limit]


def forked_from(parent_run_id: Any, fork_step: Any) -> str:
    """History's "Forked from" cell: "#3 at step 2,000", or "" for a run that is no branch."""
    parent = _optional_int(parent_run_id)
    if parent is None:
        return ""
    return f"#{parent} at step {int(fork_step):,}" if _optional_int(fork_step) is not None else f"#{parent}"


def split_step(infos: Sequence[Mapping[str, Any]]) -> int | None:
    """The earliest step at which one compared run was forked from another compared run (None:
    no compared run is a branch of another): where overlaying them starts to say something."""
    compared = {int(info["run_id"]) for info in infos}
    steps = [
        int(info["fork_step"]) for info in infos
        if _optional_int(info.get("parent_run_id")) in compared and _optional_int(info.get("fork_step")) is not None
    ]  # fmt: skip
    return min(steps) if steps else None
