"""How a `Trainer` is steered from any thread: every command is checked where it enters
(`check_command`, the same check the run database applies) and queued for the training thread,
which applies it between two chunks. Before the thread starts, a setting just configures the run.
"""

from __future__ import annotations

import queue
from dataclasses import replace
from typing import Any, Callable

from ..clipping import policies
from ..clipping.commands import SENT_COMMAND_KINDS, Change, Command, apply_command, check_command
from .config import configured


class RunSteering:
    """The steering half of `Trainer` (a mixin: the trainer owns the queue, lock and status)."""

    def pause(self) -> None:
        self._send(check_command("pause"))

    def resume(self) -> None:
        self._send(check_command("resume"))

    def set_clip_threshold(self, value: Any) -> None:
        self._send(check_command("clip_threshold", value))

    def set_learning_rate(self, value: Any) -> None:
        self._send(check_command("learning_rate", value))

    def set_policy(self, name: str, **params: Any) -> None:
        """Switch policy (or change its parameters); missing parameters keep their values."""
        self._send(self._policy_command(name, params))

    def _policy_command(self, name: Any, params: dict) -> Command:
        policies.validate_policy_name(name)
        with self._lock:
            # Merge with what was last *requested*, so two quick calls do not undo each other.
            current = self._requested_policy_params.get(name, self._config.policy_params[name])
            merged = policies.validate_policy_params(name, {**current, **params})
            self._requested_policy_params[name] = merged
        return check_command("policy", name, merged)

    def send_command(
        self, kind: str, value: Any = None, *, on_applied: Callable[[int | None, str | None], None] | None = None,
        **params: Any,
    ) -> None:
        """A command by its kind, as `RunDatabase.send_command` carries it (the methods above,
        by name; `stop` is `stop()`), checked as they check it. `on_applied(step, error)` is
        called from the training thread once it is applied (`step`: the first step that uses
        it) or refused by the run's state (`error`: why; nothing changed)."""
        if kind == "stop":
            raise ValueError("A 'stop' command ends the run: call stop(). Received: stop")
        command = self._policy_command(value, params) if kind == "policy" else check_command(
            kind, value, params, kinds=SENT_COMMAND_KINDS
        )  # fmt: skip
        self._send(command, on_applied)

    def inject_spike(self, factor: Any) -> None:
        """Multiply the next step's gradients by `factor` (before clipping), for demos."""
        self._send(check_command("spike", factor))

    def set_max_steps_per_second(self, value: Any) -> None:
        """Cap the pace (None: full speed), so a demo unfolds at a speed people can follow."""
        self._send(check_command("max_steps_per_second", value))

    def _send(self, command: Command, on_applied: Callable[[int | None, str | None], None] | None = None) -> None:
        with self._lock:
            state = self._status.state
            if state in ("stopped", "failed"):
                raise RuntimeError(f"The run is {state}; a {command.kind} command cannot change it.")
            if self._thread is None:
                config = configured(self._config, command.kind, command.value, command.params)
                if config is not None:  # before start, a setting configures the run to build
                    self._config = config
                    self._set_status(config=self._config)
                    if on_applied is not None:
                        on_applied(1, None)  # the run's first step uses it
                    return
            self._commands.put((command, on_applied))
            self._wake.set()

    # --- the training thread drains the queue, between two chunks ---------------------------------

    def _apply_commands(self) -> bool:
        """Apply every queued command; return whether there was any."""
        self._wake.clear()
        self._adopt_branches()
        applied = False
        while True:
            try:
                command, on_applied = self._commands.get_nowait()
            except queue.Empty:
                return applied
            if on_applied is None:
                self._apply(command)
            else:  # sent from another process: a refusal is its answer, not the run's end
                try:
                    self._apply(command)
                except (ValueError, TypeError) as error:
                    on_applied(None, str(error))
                else:
                    on_applied(self._steps_done + 1, None)
            applied = True

    def _apply(self, command: Command) -> None:
        config, kind, value = self._config, command.kind, command.value
        state = self._state
        applied = apply_command(
            state.engine, command, state.variables, optimizer=state.optimizer, learning_rate=config.learning_rate
        )
        if applied.pause and self._status.state == "running":
            if self._recorder is not None:
                self._recorder.flush()  # a paused run shows every step it trained
            self._set_status(state="paused", steps_per_second=0.0)
            self._record("pause", None, None)
        elif applied.pause is False and self._status.state == "paused":
            self._set_status(state="running")
            self._record("resume", None, None)
        if applied.rebuild:
            state.engine.build_policies(state.variables)  # a new buffer size or constant: retraces
            self._forks.invalidate(f"the run's {command.value!r} parameters were rebuilt at step {self._steps_done}")
            self._steps.rebuild(self._quick_start)
        elif applied.policy_switched:
            self._steps.policy_switched()
        if kind == "max_steps_per_second":
            applied.changes.append(Change(kind, config.max_steps_per_second, value))
        for change in applied.changes:
            self._record(change.kind, change.old, change.new)
        engine = state.engine
        self._config = replace(
            config,
            clip_threshold=value if kind == "clip_threshold" else config.clip_threshold,
            learning_rate=value if kind == "learning_rate" else config.learning_rate,
            max_steps_per_second=value if kind == "max_steps_per_second" else config.max_steps_per_second,
            policy=engine.policy,
            policy_params=engine.policy_params,
        )
        self._set_status(config=self._config)

