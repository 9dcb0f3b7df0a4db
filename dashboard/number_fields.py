"""Number fields: text in, a number out, and a refusal that names the value as typed.

The number controls (threshold, learning rate, policy parameters) are text fields, so the page
always sees what was typed: a browser's number field keeps showing a value it never sends (out
of its range, or `1e999`), which left a value on screen that was not in effect. Pure functions
of strings and numbers: no Streamlit.
"""

from __future__ import annotations

import math
from typing import Any, Callable

SHOWN_TEXT_CHARACTERS = 40  # a refusal quotes this much of what was typed, then cuts it


def number_text(value: Any) -> str:
    """The text a number field shows for `value`: the shortest that reads back as it (20.0 -> "20",
    1e-05 -> "1e-05"), so the field shows exactly the value in effect."""
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def typed_number(text: str, kind: type) -> int | float:
    """The number in a field's `text`, as `kind` (int or float); NaN when it is not a number,
    so the control's validator refuses it and says what is allowed.

    An int field takes a whole number written either way ("5", "5.0", "1e3"); anything else
    goes on as a float for its validator to refuse.
    """
    text = text.strip()
    if kind is int:
        try:
            return int(text)
        except ValueError:
            pass
    try:
        number = float(text)
    except ValueError:
        return math.nan
    return int(number) if kind is int and number.is_integer() else number


def as_typed(message: str, text: str) -> str:
    """`message` (a validator's "... Received: name=value") with the value as it was typed.

    The validator saw the parsed number (`1e999` as inf, `abc` as nan); the person typed text.
    A number is shown as typed, anything else quoted (`''` for an empty field).
    """
    head, received, tail = message.rpartition("Received: ")
    if not received or "=" not in tail:
        return message
    name, shown = tail.split("=", 1)[0], text.strip()
    try:
        float(shown)
        quoted = False
    except ValueError:
        quoted = True
    if len(shown) > SHOWN_TEXT_CHARACTERS:
        shown = f"{shown[:SHOWN_TEXT_CHARACTERS]}... ({len(shown):,} characters)"
    return f"{head}{received}{name}={shown!r}" if quoted else f"{head}{received}{name}={shown}"


def optional_number(text: str, validate: Callable[[Any], Any]) -> Any:
    """The number typed in an optional field, checked by `validate` (None when left empty); a
    refusal names the value as typed (`as_typed`)."""
    if not text.strip():
        return None
    try:
        return validate(typed_number(text, float))
    except ValueError as error:
        raise ValueError(as_typed(str(error), text)) from None


def number_list(text: str, validate: Callable[[Any], Any]) -> list:
    """The numbers typed in a list field ("0.1, 0.3 1"; commas or spaces), each checked by
    `validate`; a refusal names the value as typed."""
    return [optional_number(piece, validate) for piece in text.replace(",", " ").split()]
