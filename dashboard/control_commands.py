"""How a control or a button becomes a command: validate -> send -> report, written once.

Every control's callback hands what its widget holds to `control_command`, which sends it to
the run (or checks it for the next one) through the control's own action; a refused value
shows its message under the control, naming the value as typed, while the control goes back to
the value in effect. Buttons go through `action`, which drops a repeated click (`first_click`),
and apply only in the run's states `run_button_refusals` allows. Nothing here loops, sleeps or
starts a thread.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import streamlit as st

from dashboard.control_state import accept, clear_errors, new_widget, report, widget_key
from dashboard.live_run import ACTIVE_STATES
from dashboard.number_fields import as_typed, number_text, typed_number

REPEAT_SECONDS = 0.75  # a repeat of the same button command within this is dropped
_LAST_ACTION = "_last_action"  # (command, time.monotonic()) of the last button command


def control_command(
    name: str, key: str, action: Callable[[Any], Any], number_kind: type | None = None,
    current_key: str | None = None,
) -> None:
    """The one control callback: validate -> send -> report.

    Takes what widget `key` of control `name` now holds (a number field's text as a number of
    `number_kind`, see `typed_number`) and hands it to `action`, which validates and sends it or
    raises. Any earlier refusal goes (the message shown is always about this input). A refused
    value shows why under the control, naming the value as typed, and the control gets a new
    widget back at the value in effect; an accepted one becomes the control's value, shown as
    it is taken. `current_key`: the widget key the control has now (default `widget_key(name)`).
    """
    state = st.session_state
    if key != (widget_key(name) if current_key is None else current_key):
        return  # a replaced widget's late value: the control shows something newer
    clear_errors()
    typed = state[key]
    value = typed if number_kind is None else typed_number(typed, number_kind)
    try:
        action(value)
    except (ValueError, RuntimeError) as error:
        report(name, error if number_kind is None else as_typed(str(error), typed))
        new_widget(name)  # back at the value in effect
        return
    accept(name, value)
    if number_kind is not None and number_text(value) != typed:
        new_widget(name)  # "1e-3" shows as 0.001, " 0.5 " as 0.5, "5.0" in an integer field as 5


def first_click(command: str, last_action_key: str = _LAST_ACTION) -> bool:
    """False for a repeat of `command` from this tab within `REPEAT_SECONDS` (else records it).

    A click that lands while a timed refresh is running can reach its callback twice
    (Streamlit replays button triggers of an interrupted run): one click, one command.
    """
    state = st.session_state
    now = time.monotonic()
    last_command, last_time = state.get(last_action_key, (None, -math.inf))
    if command == last_command and now - last_time < REPEAT_SECONDS:
        return False
    state[last_action_key] = (command, now)
    return True


def action(name: str, command: str, run: Callable[[], Any], refusal: Callable[[], str | None] = lambda: None) -> None:
    """Run a button's command (Start, Stop, Inject spike, ...); show a refusal under `name`.

    `refusal()`: why the command does not apply now (None: it does), checked at the click, since
    a browser can send a click on a button drawn before the run's state changed.
    """
    if not first_click(command):
        return
    clear_errors()
    try:
        why_not = refusal()
        if why_not is not None:
            raise RuntimeError(why_not)
        run()
    except (ValueError, RuntimeError) as error:
        report(name, error)


def run_button_refusals(state: str, steps: int, run_number: int, race_is_active: bool) -> dict[str, str | None]:
    """Why each run button does not apply now (None: it does), from one read of the run.

    `state` and `steps`: the run's status ("none" before the first run). A run is starting from
    Start until its first step: then only Stop applies (Pause, Resume and a spike would wait for
    a step nobody can see yet) and Start does not, so one Start is one run. (Start, Stop, Start...
    pressed 62 times in 23 s had left 13 History rows, 8 without a step: the run database now
    drops a run stopped before its first step.)
    """
    active = state in ACTIVE_STATES
    starting = active and state != "paused" and steps == 0
    run = f"Run {run_number}"
    phase = "starting (no step yet)" if starting else state
    not_now = f"{run} is {phase}" if run_number else "There is no run yet"
    return {
        "start": f"{run} is still {phase}: press Stop before starting a new run." if active
        else "An A/B race is on: stop it (A/B race tab) before starting a run." if race_is_active
        else None,
        "stop": None if active else f"{not_now}: there is nothing to stop. Press Start for a new run.",
        "pause": None if state == "running" and not starting else f"{not_now}: Pause applies to a run that trains.",
        "resume": None if state == "paused" else f"{not_now}: Resume applies to a paused run.",
        "inject_spike": None if active and not starting
        else f"{not_now}: a spike applies to a run that has started training.",
    }  # fmt: skip


def send_or_check(live: bool, send: Callable[[Any], Any], check: Callable[[Any], Any], value: Any) -> None:
    """While the run is on (`live`) send `value` to it; between runs only check it for the next."""
    (send if live else check)(value)
