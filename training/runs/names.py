"""A run's name: what History can show as typed, checked where a name enters."""

from __future__ import annotations

import unicodedata
from typing import Any

MAX_RUN_NAME_LENGTH = 200  # characters, after stripping surrounding spaces
# Reorder how the text around them displays (a name could show reversed in History).
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
SHOWN_NAME_LENGTH = 10_000  # a refused name is shown whole up to this many characters, then cut


def is_storable_text(value: Any) -> bool:
    """Whether SQLite can store `value` as TEXT: a str that encodes as UTF-8 (no lone surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(value: Any) -> str:
    """`value`'s repr, cut when very long (a million-character name makes no message)."""
    if not isinstance(value, str) or len(value) <= SHOWN_NAME_LENGTH:
        return repr(value)
    return f"{repr(value)[:200]}... ({len(value):,} characters)"


def validate_run_name(value: Any) -> str:
    """A run's name, stripped of surrounding spaces; ValueError naming the value otherwise.

    Allowed: text of 1 to MAX_RUN_NAME_LENGTH characters (after stripping) that SQLite can
    store, with no control characters (NUL, newlines, tabs...), line or paragraph separators,
    or bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069: they reverse how a
    name displays).
    """
    allowed = (
        f"non-empty text of at most {MAX_RUN_NAME_LENGTH} characters, without control characters "
        "(NUL, newlines, tabs), line separators or bidirectional overrides (U+202A-U+202E, "
        "U+2066-U+2069)"
    )
    if not is_storable_text(value) or not value.strip() or len(value.strip()) > MAX_RUN_NAME_LENGTH:
        raise ValueError(f"A run's name must be {allowed}. Received: name={shown(value)}")
    bad = next(
        (c for c in value if c in BIDI_CONTROLS or c in "\u2028\u2029" or unicodedata.category(c) == "Cc"),
        None,
    )
    if bad is not None:
        raise ValueError(
            f"A run's name must be {allowed}; it holds {bad!r}. Received: name={shown(value)}"
        )
    return value.strip()
