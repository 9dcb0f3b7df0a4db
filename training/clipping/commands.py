"""The command vocabulary, checked once and applied to the engine in one place.

A command is what a user does to a running job: set the clip threshold, switch the policy or
change its parameters, set the learning rate, pause, resume, stop, inject a spike (and, for
Clipwatch's own loop, cap the pace). Every way in checks it with `check_command` where it enters
(`Trainer`'s methods, `RunDatabase.send_command`), and the training thread applies it with
`apply_command` between steps: the knob vector, the policies' state and the optimizer's learning
rate change there, and what changed comes back as `Change`s for the driver to record. What only
a driver can do (pause its loop, end its run, retrace its step) comes back as flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from . import policies
from .knobs import KNOB

if TYPE_CHECKING:  # the engine (TensorFlow) is the caller's: checking a command needs none
    from .engine import ClipEngine

# Every command kind. `max_steps_per_second` paces Clipwatch's own loop only.
COMMAND_KINDS = (
    "clip_threshold", "policy", "learning_rate", "pause", "resume", "stop", "spike", "max_steps_per_second",
)  # fmt: skip
# Above this the pace cannot be told from full speed, and pace x seconds would overflow to inf.
MAX_STEPS_PER_SECOND = 1e9


def validate_pace(value: Any) -> float | None:
    """A pace for Clipwatch's own loop: None (full speed) or a number in (0, MAX_STEPS_PER_SECOND]."""
    if value is None:
        return None
    pace = policies.validate_positive("max_steps_per_second", value)
    if pace > MAX_STEPS_PER_SECOND:
        raise ValueError(
            f"`max_steps_per_second` must be None (full speed) or a number in (0, "
            f"{MAX_STEPS_PER_SECOND:g}]. Received: max_steps_per_second={value!r}"
        )
    return pace


# What travels through the run database to a run in another process (`RunDatabase.send_command`).
SENT_COMMAND_KINDS = tuple(kind for kind in COMMAND_KINDS if kind != "max_steps_per_second")
_VALUE_CHECKS = {
    "clip_threshold": policies.validate_clip_threshold,
    "learning_rate": lambda value: policies.validate_positive("learning_rate", value),
    "spike": lambda value: policies.validate_positive("factor", value),
    "policy": policies.validate_policy_name,
    "max_steps_per_second": validate_pace,
}


@dataclass(frozen=True)
class Command:
    kind: str
    value: Any = None
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """One recorded event: `kind` changed from `old` to `new`."""

    kind: str
    old: Any
    new: Any


@dataclass
class Applied:
    """What `apply_command` did, and what is left to the driver."""

    changes: list[Change] = field(default_factory=list)
    pause: bool | None = None  # True: pause, False: resume (the driver's loop does it)
    stop: bool = False
    rebuild: bool = False  # a structural parameter changed: rebuild the policies, retrace
    policy_switched: bool = False


def check_command(kind: Any, value: Any = None, params: Mapping[str, Any] | None = None, *,
                  kinds: tuple[str, ...] = COMMAND_KINDS) -> Command:  # fmt: skip
    """A command as it enters: its kind known, its value and parameters checked; ValueError
    naming what was received otherwise. A policy's parameters come back as plain numbers,
    only those given (the applier merges them with the ones in force)."""
    if not isinstance(kind, str) or kind not in kinds:
        raise ValueError(f"Unknown command kind {kind!r}. Allowed: {', '.join(kinds)}")
    params = dict(params or {})
    if kind in _VALUE_CHECKS:
        value = _VALUE_CHECKS[kind](value)  # ValueError naming the value as given
    elif value is not None:
        raise ValueError(f"A {kind!r} command takes no value. Received: value={value!r}")
    if kind == "policy":
        checked = policies.validate_policy_params(value, params)
        params = {key: checked[key] for key in params}
    elif params:
        raise ValueError(
            f"A {kind!r} command takes no parameters (only 'policy' does). Received: "
            + ", ".join(f"{key}={param!r}" for key, param in params.items())
        )
    return Command(kind, value, params)


def apply_command(engine: ClipEngine, command: Command, variables, *, optimizer=None,
                  structural_changes: bool = True, learning_rate: float | None = None) -> Applied:  # fmt: skip
    """Apply a checked `command` to `engine` (and `optimizer`'s learning rate); between steps.

    Args:
        variables: the model's trainable variables (a policy switched to starts afresh on them).
        optimizer: whose learning rate a `learning_rate` command sets.
        structural_changes: whether a parameter that sizes the compiled step (autoclip's window,
            zclip's alpha...) may change: True rebuilds (`Applied.rebuild`); False refuses with
            ValueError and changes nothing (an attached script's step is the user's to trace).
        learning_rate: the learning rate in force, for the event's old value.

    Raises ValueError, before anything changes, for a value the engine's state refuses.
    """
    kind, value, applied = command.kind, command.value, Applied()
    if kind == "clip_threshold":
        applied.changes.append(Change(kind, engine.clip_threshold, value))
        engine.set_knob("clip_threshold", value)
    elif kind == "spike":
        engine.set_knob("spike", value)  # the driver resets it after one step
        applied.changes.append(Change(kind, None, value))
    elif kind == "learning_rate":
        if optimizer is None:
            raise ValueError(
                "The learning rate can change only on an optimizer passed to `wrap`. Received: "
                f"learning_rate={value!r} for a custom loop's own optimizer."
            )
        optimizer.learning_rate = value  # a Keras optimizer assigns it to its variable
        applied.changes.append(Change(kind, learning_rate, value))
    elif kind == "policy":
        _apply_policy(engine, value, command.params, variables, structural_changes, applied)
    elif kind in ("pause", "resume"):
        applied.pause = kind == "pause"
    elif kind == "stop":
        engine.set_knob("stop", 1.0)
        applied.stop = True
    elif kind != "max_steps_per_second":  # the trainer's pace: its loop's, not the engine's
        raise ValueError(f"Unknown command kind {kind!r}. Allowed: {', '.join(COMMAND_KINDS)}")
    return applied


def _apply_policy(engine: ClipEngine, name: str, params: dict, variables, structural_changes: bool,
                  applied: Applied) -> None:  # fmt: skip
    if name not in engine.policy_names:
        raise ValueError(
            f"Policy {name!r} was registered after this run was built; the run offers "
            f"{', '.join(engine.policy_names)}. Received: policy={name!r}"
        )
    old_params = engine.policy_params[name]
    checked = policies.validate_policy_params(name, {**old_params, **params})
    spec = policies.POLICY_PARAMETERS[name]
    structural = [key for key in checked if not spec[key].live and checked[key] != old_params[key]]
    if structural and not structural_changes:
        key = structural[0]
        raise ValueError(
            f"`{key}` of {name!r} sets the size of the compiled step, so it cannot change while "
            f"the script runs. Received: {key}={checked[key]!r}; it is {old_params[key]!r}. Live: "
            f"{', '.join(k for k in spec if spec[k].live) or 'none'}"
        )
    old_policy = engine.policy
    engine.policy = name
    engine.policy_params = {**engine.policy_params, name: checked}
    knobs = engine.knob_values.copy()
    for key in checked:
        if key in KNOB:
            knobs[KNOB[key]] = checked[key]
    knobs[KNOB["policy"]] = engine.policy_names.index(name)
    engine.knob_values = knobs
    if structural:
        applied.rebuild = True  # the driver rebuilds every policy, with fresh states
    elif name != old_policy:
        engine.reset_policy_state(engine.policy_names.index(name), variables)
    if engine.knobs is not None:
        engine.knobs.assign(knobs)
    applied.policy_switched = name != old_policy
    if name != old_policy:
        applied.changes.append(Change("policy", old_policy, name))
    for key in checked:
        if checked[key] != old_params[key]:
            applied.changes.append(Change(f"{name}.{key}", old_params[key], checked[key]))

