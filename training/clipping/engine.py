"""The compiled clipping core, written once for both drivers.

`Trainer` (Clipwatch's own loop) calls `ClipEngine.clip` inside its compiled chunk, once per
step; `LiveClipping` (a user's Keras optimizer) calls it inside the optimizer's `apply`. Both get
the same policy dispatch, the same clip, the same non-finite rule and the same step record:

    engine = ClipEngine("autoclip", clip_threshold=1.0, policy_params=params)
    engine.build(model.trainable_variables)            # the knobs and every policy's state
    knobs, states = engine.knobs.read_value(), engine.read_states()
    step = engine.clip(gradients, variables, loss, knobs, states, spike=knobs[KNOB["spike"]])
    engine.write_states(step.states)                   # (the trainer carries them in its loop)
    record = step_record(loss, step)                   # the per-step metrics row

The live knobs (threshold, the policies' live parameters, the policy in force, a pending spike,
a stop flag) are one float32 vector in one `tf.Variable`: one read per step, one all-reduce under
tf.distribute, and a change never retraces. Every policy is built (from the registry in
`policies`), and `tf.switch_case` picks the one in force; a driver that wants one policy alone
(the trainer's quick step) passes `only_policy`.

`TrainingState` is the one home of what a run is made of at a step: the model and optimizer
variables, the engine (knobs and policy states) and the step count. `snapshot()` copies it to
host arrays and `restore()` puts a copy back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from ..lazy_import import tf  # TensorFlow at first use (training/lazy_import.py)

from . import policies
from .knobs import KNOB, KNOBS, STEP_RECORD  # noqa: F401  (the engine's layouts, re-exported)

MakeVariable = Callable[[Any, str, Any], Any]  # (value, name, dtype) -> a tf.Variable


def variable_name(variable) -> str:
    """A variable's name as the store and the database show it (its path without the model's)."""
    path = getattr(variable, "path", variable.name)
    parts = path.split("/")
    return "/".join(parts[1:]) if len(parts) > 2 else path


def plain_variable(value, name: str, dtype) -> tf.Variable:
    return tf.Variable(value, dtype=dtype, trainable=False, name=f"clipwatch_{name}")


class ClipStep(NamedTuple):
    """What one step of the engine returns (tensors)."""

    clipped: list  # the clipped gradients
    states: tuple  # every policy's state after the step (unchanged where the step was not finite)
    stats: policies.ClipStats
    finite: Any  # bool: loss (when known) and pre-clip norm finite; a non-finite step changes nothing
    policy_index: Any  # int32: the policy that clipped


class ClipEngine:
    """The live knobs, every policy with its state, and the clip of one step.

    Args:
        policy: the policy in force, a name in `policies.POLICY_NAMES`.
        clip_threshold: c (the cap for zclip).
        policy_params: per policy, all its parameters (validated, defaults filled in).

    The host side keeps what was last applied (`policy`, `policy_params`, `knob_values`), so
    events name the old value without reading the graph.
    """

    def __init__(self, policy: str, clip_threshold: float, policy_params: dict[str, dict[str, float]]):
        self.policy = policies.validate_policy_name(policy)
        # The policies this run offers: the registry as it is now (a policy registered later is
        # not in this run's compiled step, nor in its store's or database's policy codes).
        self.policy_names = policies.POLICY_NAMES
        self.policy_params = {
            name: dict(policy_params.get(name) or policies.validate_policy_params(name, {}))
            for name in self.policy_names
        }
        values = np.zeros(len(KNOBS), np.float32)
        values[KNOB["clip_threshold"]] = policies.validate_clip_threshold(clip_threshold)
        values[KNOB["percentile"]] = self.policy_params["autoclip"]["percentile"]
        values[KNOB["clip_factor"]] = self.policy_params["agc"]["clip_factor"]
        values[KNOB["z_threshold"]] = self.policy_params["zclip"]["z_threshold"]
        values[KNOB["policy"]] = self.policy_names.index(policy)
        values[KNOB["spike"]] = 1.0
        self.knob_values = values
        self.knobs: tf.Variable | None = None
        self.policies: list[policies.ClipPolicy] = []
        self.policy_states: list[tuple[tf.Variable, ...]] = []
        self._make_variable: MakeVariable = plain_variable

    @classmethod
    def with_defaults(cls, policy: str, clip_threshold: float, **params: Any) -> "ClipEngine":
        """An engine whose policy takes `params` and every other policy its defaults."""
        policies.validate_policy_name(policy)
        all_params = {name: policies.validate_policy_params(name, {}) for name in policies.POLICY_NAMES}
        all_params[policy] = policies.validate_policy_params(policy, params)
        return cls(policy, clip_threshold, all_params)

    @property
    def clip_threshold(self) -> float:
        return float(self.knob_values[KNOB["clip_threshold"]])

    # --- building (outside any trace) --------------------------------------------------------

    def build(self, variables, make_variable: MakeVariable = plain_variable) -> None:
        """Create the knob vector and every policy with its state variables for `variables`."""
        self._make_variable = make_variable
        self.knobs = make_variable(self.knob_values, "knobs", tf.float32)
        self.build_policies(variables)

    def build_policies(self, variables) -> None:
        """(Re)build every policy from its structural parameters, with fresh state variables.

        A compiled step that closed over the old ones must be traced anew.
        """
        self.policies = [
            policies.make_policy(name, **self.policy_params[name]) for name in self.policy_names
        ]
        self.policy_states = [
            tuple(
                self._make_variable(value, f"{policy.name}_state", tf.convert_to_tensor(value).dtype)
                for value in policy.init(variables)
            )
            for policy in self.policies
        ]

    def reset_policy_state(self, index: int, variables) -> None:
        """Policy `index` starts afresh (a policy switched to starts with an empty history)."""
        for variable, value in zip(self.policy_states[index], self.policies[index].init(variables)):
            variable.assign(value)

    def set_knob(self, name: str, value: float) -> None:
        """Set one knob, host mirror and variable (outside the graph)."""
        self.knob_values = self.knob_values.copy()
        self.knob_values[KNOB[name]] = value
        if self.knobs is not None:
            self.knobs.assign(self.knob_values)

    # --- in the graph ------------------------------------------------------------------------

    def read_states(self) -> tuple:
        return tuple(tuple(variable.read_value() for variable in state) for state in self.policy_states)

    def write_states(self, states) -> None:
        for state_variables, values in zip(self.policy_states, states):
            for variable, value in zip(state_variables, values):
                variable.assign(value)

    @staticmethod
    def settings(knobs) -> policies.ClipSettings:
        return policies.ClipSettings(*(knobs[KNOB[name]] for name in policies.ClipSettings._fields))

    def clip(self, gradients, variables, loss, knobs, states, spike=1.0, only_policy: int | None = None) -> ClipStep:
        """Clip one step's `gradients` with the policy in force.

        Args:
            gradients, variables: dense gradients and the values of their variables (AGC reads them).
            loss: the step's loss, or None when the driver does not know it.
            knobs: the knob vector as read for this step (or chunk).
            states: every policy's state, as `read_states()` returns it.
            spike: the factor the gradients are multiplied by before clipping (a demo spike).
            only_policy: apply this policy alone instead of switching on the knob.
        """
        settings = self.settings(knobs)
        gradients = [gradient * tf.cast(spike, gradient.dtype) for gradient in gradients]
        policy_index = tf.cast(knobs[KNOB["policy"]], tf.int32)

        def apply_policy(index):
            clipped, state, stats = self.policies[index].update(gradients, states[index], settings, variables)
            return clipped, states[:index] + (state,) + states[index + 1 :], stats

        if only_policy is None:
            branches = [lambda index=index: apply_policy(index) for index in range(len(self.policies))]
            clipped, new_states, stats = tf.switch_case(policy_index, branches)
        else:
            clipped, new_states, stats = apply_policy(only_policy)
            policy_index = tf.constant(only_policy, tf.int32)
        finite = tf.math.is_finite(stats.grad_norm)
        if loss is not None:
            finite = tf.logical_and(finite, tf.math.is_finite(loss))
        # A non-finite step leaves the adaptive history alone: no state changes.
        new_states = tf.nest.map_structure(lambda new, old: tf.where(finite, new, old), new_states, states)
        # And it clips nothing: its update is skipped, so it records no clip and no clipped norm
        # (`per_tensor_norm` and `value` had counted a skipped step as clipped, `global_norm` not).
        nan = tf.constant(math.nan, stats.clipped_grad_norm.dtype)
        stats = stats._replace(
            clipped=tf.logical_and(stats.clipped, finite), clipped_grad_norm=tf.where(finite, stats.clipped_grad_norm, nan)
        )
        return ClipStep(clipped, new_states, stats, finite, policy_index)


def step_record(loss, step: ClipStep) -> dict[str, Any]:
    """One step's metrics (scalars in `STEP_RECORD` order, then one norm per variable)."""
    stats = step.stats
    return {
        "loss": tf.cast(loss, tf.float32),
        "grad_norm": stats.grad_norm,
        "clipped_grad_norm": stats.clipped_grad_norm,
        "clip_threshold": tf.cast(stats.clip_threshold, tf.float32),
        "clipped": stats.clipped,
        "finite": step.finite,
        "layer_norms": stats.variable_norms,
    }


@dataclass
class TrainingState:
    """Everything a run is at a step: the one home a snapshot is taken from and restored to.

    `model` and `optimizer` are None for an attached run until its first step (the user's script
    owns them); `step` counts the steps trained.
    """

    engine: ClipEngine
    model: Any = None
    optimizer: Any = None
    step: int = 0
    # The driver's own loop variables, snapshot with the rest: the data seed (batches are drawn
    # by seed and step) and the count of consecutive non-finite steps.
    data_seed: Any = None
    loop_variables: list = field(default_factory=list)
    # One compiled read and one compiled write of every tracked variable: a snapshot or restore is
    # one call, not one eager op per variable (seed: ~30 variables, taken tens of times a second).
    _copier: Any = field(default=None, repr=False, compare=False)

    @property
    def variables(self) -> list:
        return [] if self.model is None else list(self.model.trainable_variables)

    def tracked(self) -> list[tf.Variable]:
        """Every variable a snapshot holds, in a fixed order."""
        tracked = [] if self.model is None else list(self.model.variables)
        if self.optimizer is not None:
            tracked += list(self.optimizer.variables)  # `iterations` (Adam's bias correction) first
        if self.engine.knobs is not None:
            tracked.append(self.engine.knobs)
        for state in self.engine.policy_states:
            tracked += list(state)
        if self.data_seed is not None:
            tracked.append(self.data_seed)
        return tracked + list(self.loop_variables)

    def snapshot(self) -> dict[str, Any]:
        """A host copy: every variable's value, the step and the engine's host settings."""
        return {
            "step": self.step,
            "values": [np.asarray(value) for value in self._copy().read()],
            "policy": self.engine.policy,
            "policy_params": {name: dict(params) for name, params in self.engine.policy_params.items()},
            "knob_values": self.engine.knob_values.copy(),
        }

    def _copy(self) -> "_VariableCopier":
        tracked = self.tracked()
        if self._copier is None or not self._copier.holds(tracked):
            self._copier = _VariableCopier(tracked)  # the variables changed (a rebuild): trace anew
        return self._copier

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Put `snapshot` back (the same model, optimizer and policies, built)."""
        copier = self._copy()
        if len(copier.variables) != len(snapshot["values"]):
            raise ValueError(
                f"The snapshot holds {len(snapshot['values'])} variables; this run has {len(copier.variables)}."
            )
        copier.write(snapshot["values"])
        self.step = int(snapshot["step"])
        self.engine.policy = snapshot["policy"]
        self.engine.policy_params = {name: dict(params) for name, params in snapshot["policy_params"].items()}
        self.engine.knob_values = snapshot["knob_values"].copy()


class _VariableCopier:
    """Reads or writes a fixed list of variables in one compiled call each."""

    def __init__(self, variables: list):
        self.variables = list(variables)
        self.read = tf.function(lambda: [tf.identity(variable) for variable in self.variables])
        self._write = tf.function(lambda values: [v.assign(x) for v, x in zip(self.variables, values)])

    def holds(self, variables: list) -> bool:
        return len(variables) == len(self.variables) and all(a is b for a, b in zip(variables, self.variables))

    def write(self, values) -> None:
        self._write([tf.convert_to_tensor(value, variable.dtype) for variable, value in zip(self.variables, values)])
