"""The benchmark report's building blocks: a target's verdict row and a plain-text table.

Pure functions shared by `benchmarks.report` and `benchmarks.speed_report` (kept apart from both
so neither imports the other).
"""

from __future__ import annotations


def target(name: str, measured: str, passed: bool, by: str, value: float | None, noisy: bool = False) -> dict:
    """`noisy`: the repeats disagree too much for the verdict to mean much (said in the table)."""
    return {"target": name, "measured": measured, "passed": passed, "by": by, "value": value, "noisy": noisy}


def share_at_least(name: str, share: float, repeats: tuple[float, float], limit: float) -> dict:
    """A target that a paired ratio (median over repeats, `repeats` its range) reaches `limit`."""
    low, high = repeats
    points = (share - limit) * 100
    return target(
        name,
        f"{share:.1%} (repeats {low:.0%}..{high:.0%})",
        share >= limit,
        f"{points:.1f} percentage points to spare" if points >= 0 else f"short by {-points:.1f} percentage points",
        share,
    )


def at_least(name: str, value: float, limit: float) -> dict:
    margin = value / limit - 1
    by = f"{margin:+.0%} vs the target" if margin >= 0 else f"short by {-margin:.0%}"
    return target(name, f"{value:.2f}x", value >= limit, by, value)


def at_most(name: str, value: float, limit: float, unit: str = "s", digits: int = 2, extra: str = "") -> dict:
    """A target that `value` (in `unit`) is at most `limit`; `extra` follows the measured value."""
    spare = limit - value
    by = f"{spare:.{digits}f} {unit} to spare" if spare >= 0 else f"over by {-spare:.{digits}f} {unit}"
    return target(name, f"{value:.{digits}f} {unit}{extra}", spare >= 0, by, value)


def at_most_cost(name: str, ratio: float, ratio_range: tuple[float, float], limit: float) -> dict:
    """A cost target: `1 - ratio` (the share of speed lost) at most `limit`, with its repeats' range."""
    cost = 1 - ratio
    low, high = (1 - value for value in reversed(ratio_range))
    points = (limit - cost) * 100
    by = f"{points:.1f} percentage points to spare" if points >= 0 else f"over by {-points:.1f} percentage points"
    noisy = low < 0 < high and high - low > 2 * limit
    if noisy:
        by += "; the repeats disagree on the sign"
    return target(name, f"{cost:.1%} (repeats {low:.0%}..{high:.0%})", cost <= limit, by, cost, noisy)


def table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells):
        return "  ".join(
            str(cell).rjust(width) if index in right else str(cell).ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(header), line(["-" * width for width in widths]), *(line(row) for row in rows)]
