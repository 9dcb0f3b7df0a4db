"""How a `Trainer` is steered from any thread: every command is checked where it enters
(`check_command`, the same check the run database applies) and queued for the training thread,
which applies it between two chunks. Before the thread starts, a setting just configures the run.
"""

from __future__ import annotations

from typing import Any

from ..clipping import policies
from ..clipping.commands import Command, check_command
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
        policies.validate_policy_name(name)
        with self._lock:
            # Merge with what was last *requested*, so two quick calls do not undo each other.
            current = self._requested_policy_params.get(name, self._config.policy_params[name])
            merged = policies.validate_policy_params(name, {**current, **params})
            self._requested_policy_params[name] = merged
        self._send(check_command("policy", name, merged))

    def inject_spike(self, factor: Any) -> None:
        """Multiply the next step's gradients by `factor` (before clipping), for demos."""
        self._send(check_command("spike", factor))

    def set_max_steps_per_second(self, value: Any) -> None:
        """Cap the pace (None: full speed), so a demo unfolds at a speed people can follow."""
        self._send(check_command("max_steps_per_second", value))

    def _send(self, command: Command) -> None:
        with self._lock:
            state = self._status.state
            if state in ("stopped", "failed"):
                raise RuntimeError(f"The run is {state}; a {command.kind} command cannot change it.")
            if self._thread is None:
                config = configured(self._config, command.kind, command.value, command.params)
                if config is not None:  # before start, a setting configures the run to build
                    self._config = config
                    self._set_status(config=self._config)
                    return
            self._commands.put(command)
            self._wake.set()
