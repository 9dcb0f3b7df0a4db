"""Who may steer the shared run: viewers and an operator, when an operator key is configured.

With a key (the `CLIPWATCH_OPERATOR_KEY` environment variable, or `operator_key` in
`.streamlit/secrets.toml`), every browser session starts as a viewer: it sees everything, and
every command that would change something is refused. Entering the key in the sidebar's
"Operator key" field unlocks that session only. Without a key everyone steers, as before.

The check sits on the command path, not only on the widgets: the page reaches the shared
`RunManager` only through `GuardedRunManager`, built with the session's permission, and every
method that is not in `READ_METHODS` checks that permission when it is called. A viewer session
that sends a command anyway (a forged widget event) gets `ViewOnlyError` and nothing changes.

The key is compared in constant time (`hmac.compare_digest`), never logged and never shown;
`MAX_WRONG_KEYS` wrong keys in a session lock that session out for `LOCKOUT_SECONDS`.

No Streamlit calls here except reading the key from `st.secrets` and the server's address from
its options; the widgets live with the other controls.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import streamlit as st

OPERATOR_KEY_VARIABLE = "CLIPWATCH_OPERATOR_KEY"
OPERATOR_KEY_SECRET = "operator_key"
MAX_WRONG_KEYS = 5
LOCKOUT_SECONDS = 60.0
VIEW_ONLY_NOTE = "View only: enter the operator key in the sidebar to steer this run."

# The RunManager's methods a viewer may call: they read, or compute a view (the advisor's
# replay), and change nothing. Every other method is refused to a viewer, so a command added
# later is guarded until someone lists it here on purpose.
READ_METHODS = frozenset({
    "database_status", "fingerprint", "snapshot", "live_metrics", "race_snapshot",
    "list_runs", "live_run_ids", "recorded_run", "recorded_metrics", "recorded_advice",
    "advise_live", "live_advice", "replayed_clip_rate", "fork_snapshot",
    "live_runs", "attached_run_settings", "last_command",  # attached scripts: reading only
})  # fmt: skip
# The manager's parts (`RunManager.live`, `.race`, `.library`) take commands of their own: a
# viewer gets none of them (the page reads through the manager's methods).
PARTS = frozenset({"live", "forks", "race", "library"})


class ViewOnlyError(RuntimeError):
    """A viewer session sent a command that would change something."""


def configured_operator_key() -> str | None:
    """The operator key: $CLIPWATCH_OPERATOR_KEY, else `operator_key` in the secrets file."""
    key = os.environ.get(OPERATOR_KEY_VARIABLE)
    if key:
        return key
    try:
        key = st.secrets.get(OPERATOR_KEY_SECRET)
    except Exception:  # no secrets file, or one that does not parse: no key from there
        return None
    return str(key) if key else None


def server_is_local() -> bool:
    """Whether the server listens on this machine only (an empty address means every one)."""
    address = st.get_option("server.address")
    if not address:
        return False
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name: it may well resolve beyond this machine
        return False


@dataclass
class KeyAttempts:
    """One session's wrong keys (kept in its session state, on the server)."""

    wrong: int = 0
    locked_until: float = 0.0


@dataclass(frozen=True)
class UnlockResult:
    permission: str | None  # the session's new permission, when the key was right
    message: str  # what to tell the user (never the key)


class OperatorGate:
    """Issues and checks session permissions against the operator key; thread-safe.

    Args:
        key: the operator key (None or "": no key, every session may steer).
        clock: seconds, monotonic (tests pass their own to step over the lock-out).
    """

    def __init__(self, key: str | None, clock: Callable[[], float] = time.monotonic):
        self._key = key.encode("utf-8") if key else None
        self._clock = clock
        self._lock = threading.Lock()
        self._permissions: set[str] = set()

    @property
    def key_configured(self) -> bool:
        return self._key is not None

    def allows(self, permission: str | None) -> bool:
        if self._key is None:
            return True
        with self._lock:
            return permission is not None and permission in self._permissions

    def check(self, permission: str | None, action: str) -> None:
        if not self.allows(permission):
            raise ViewOnlyError(f"Refused: {action} needs the operator. {VIEW_ONLY_NOTE}")

    def unlock(self, attempts: KeyAttempts, entered: Any) -> UnlockResult:
        """Compare `entered` with the key (constant time); count wrong keys per session."""
        if self._key is None:
            return UnlockResult(None, "No operator key is set: every session can steer.")
        now = self._clock()
        if now < attempts.locked_until:
            return UnlockResult(None, _locked_message(attempts.locked_until - now))
        entered_bytes = entered.encode("utf-8", "surrogatepass") if isinstance(entered, str) else b""
        if not entered_bytes:
            return UnlockResult(None, "Enter the operator key.")  # not a try
        if hmac.compare_digest(entered_bytes, self._key):
            attempts.wrong, attempts.locked_until = 0, 0.0
            permission = secrets.token_urlsafe(32)
            with self._lock:
                self._permissions.add(permission)
            return UnlockResult(permission, "Operator: this session can steer the run.")
        attempts.wrong += 1
        if attempts.wrong >= MAX_WRONG_KEYS:
            attempts.wrong, attempts.locked_until = 0, now + LOCKOUT_SECONDS
            return UnlockResult(None, _locked_message(LOCKOUT_SECONDS))
        left = MAX_WRONG_KEYS - attempts.wrong
        return UnlockResult(None, f"Wrong operator key ({left} {'try' if left == 1 else 'tries'} left).")

    def lockout_message(self, attempts: KeyAttempts) -> str | None:
        """While `attempts`' session is locked out, what to tell it (else None)."""
        left = attempts.locked_until - self._clock()
        return _locked_message(left) if left > 0 else None

    def revoke(self, permission: str | None) -> None:
        with self._lock:
            self._permissions.discard(permission)


def _locked_message(seconds: float) -> str:
    return (
        f"Too many wrong operator keys: this session is locked out for {seconds:.0f} s more. "
        "It can still watch."
    )


class GuardedRunManager:
    """The shared `RunManager` as one session may use it.

    Reading passes through; a method outside `READ_METHODS` checks the session's permission
    when it is called and raises `ViewOnlyError` for a viewer, before the manager sees it.
    """

    def __init__(self, manager: Any, gate: OperatorGate, permission: str | None):
        self._manager, self._gate, self._permission = manager, gate, permission

    @property
    def can_steer(self) -> bool:
        return self._gate.allows(self._permission)

    def __getattr__(self, name: str) -> Any:
        if name in PARTS:
            self._gate.check(self._permission, f"the run manager's {name} part")
        value = getattr(self._manager, name)
        if name in READ_METHODS or not callable(value):
            return value  # data, properties' values, and the reading methods

        def guarded(*args: Any, **kwargs: Any) -> Any:
            self._gate.check(self._permission, name.replace("_", " "))
            return value(*args, **kwargs)

        return guarded
