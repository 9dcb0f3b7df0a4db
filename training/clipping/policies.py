"""Gradient-clipping policies: small, pure TensorFlow functions with one call shape.

Every policy is a `ClipPolicy(name, init, update)` built by a factory that closes over the
policy's structural settings (sizes of buffers, smoothing constants):

    state = policy.init(variables)
    clipped, state, stats = policy.update(gradients, state, settings, variables)

* `settings` is a `ClipSettings` of scalar tensors, the live knobs. The trainer reads them from
  `tf.Variable`s, so changing a knob mid-run never retraces the compiled step.
* `state` is a tuple of tensors (the adaptive history); it is passed in and returned, never kept.
* `stats` is a `ClipStats`: what the policy measured. Policies know nothing of threads or
  logging; the caller decides what to record.

Norms are computed with a per-tensor scale so that 1e30-sized gradients do not overflow and
1e-30-sized ones do not underflow in float32 (plain `tf.norm` gets both wrong).

Example:
    >>> policy = make_policy("global_norm")
    >>> grads = [tf.constant([3.0, 4.0])]
    >>> clipped, _, stats = policy.update(grads, policy.init([]), default_settings(1.0), None)
    >>> float(stats.grad_norm), float(stats.clipped_grad_norm)
    (5.0, 1.0)
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from ..lazy_import import tf  # TensorFlow at first use: the page's first paint imports this

State = tuple  # a tuple of tensors; () for stateless policies


class ClipSettings(NamedTuple):
    """The live knobs, as float32 scalar tensors."""

    clip_threshold: Any  # c for fixed policies; the cap for zclip
    percentile: Any  # autoclip
    clip_factor: Any  # agc
    z_threshold: Any  # zclip


class ClipStats(NamedTuple):
    """What one policy step measured (float32 / bool scalars, plus one norm per variable)."""

    grad_norm: Any  # global L2 norm before clipping
    clipped_grad_norm: Any  # global L2 norm after clipping
    clip_threshold: Any  # the threshold used this step (agc: its clip factor; inf: none)
    clipped: Any  # whether anything was scaled down
    variable_norms: Any  # [num_variables] L2 norm of each gradient before clipping


class ClipPolicy(NamedTuple):
    name: str
    init: Callable[[Sequence[tf.Variable]], State]
    update: Callable[..., tuple[list, State, ClipStats]]


class Parameter(NamedTuple):
    """One policy parameter: its default, the allowed range, and whether it is a live knob."""

    default: float
    kind: type  # float or int
    low: float
    high: float
    low_inclusive: bool
    high_inclusive: bool
    live: bool  # live knobs change without a retrace; the others rebuild the compiled step

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest value accepted, both included.

        For a float parameter these are float32 numbers: the compiled step holds it as float32,
        where a subnormal flushes to 0 and a value past the range's end rounds onto it (alpha =
        1 - 1e-9 is 1 in float32), so the range is cut to the float32 normals inside it.
        """
        if self.kind is int:
            low = self.low if self.low_inclusive else math.floor(self.low) + 1
            high = self.high if self.high_inclusive else math.ceil(self.high) - 1
            return low, high
        low, high = np.float32(self.low), np.float32(self.high)
        if not self.low_inclusive:
            low = np.nextafter(low, np.float32(math.inf))
        if not self.high_inclusive:
            high = np.nextafter(high, np.float32(-math.inf))
        return max(float(low), FLOAT32_SMALLEST_NORMAL), min(float(high), FLOAT32_MAX)

    def allowed(self) -> str:
        left = "[" if self.low_inclusive else "("
        right = "]" if self.high_inclusive else ")"
        if self.kind is int:
            return f"an integer in {left}{self.low:g}, {self.high:g}{right}"
        low, high = self.bounds()
        return (
            f"a number in {left}{self.low:g}, {self.high:g}{right} that float32 holds: "
            f"from {low!r} to {high!r}, both included"
        )


_POSITIVE = dict(low=0.0, high=math.inf, low_inclusive=False, high_inclusive=False)

# Per policy, the parameters it accepts besides the clip threshold; filled, with the factories,
# from `REGISTRY` at the end of this module (and by `register_policy`).
POLICY_PARAMETERS: dict[str, dict[str, Parameter]] = {}
POLICY_NAMES: tuple[str, ...] = ()
LIVE_PARAMETERS = ("percentile", "clip_factor", "z_threshold")
MISSING_VARIABLES_MESSAGE = (
    "The `agc` policy scales each gradient by the norm of its weight, so it needs the model's "
    "variables: call update(gradients, state, settings, variables) with variables, not None."
)


# --- validation (plain Python, used wherever a value enters) ----------------------------------


# The compiled step holds every knob as float32, and XLA on CPU flushes subnormals to zero:
# a float64 value outside [FLOAT32_SMALLEST_NORMAL, FLOAT32_MAX] would reach it as 0 or inf.
FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e38
FLOAT32_SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)  # 1.2e-38
_FLOAT32_RANGE = f"between {FLOAT32_SMALLEST_NORMAL:.2g} and {FLOAT32_MAX:.2g} (float32)"


def _as_number(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number. Received: {name}={value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float64, e.g. 10**400
        raise ValueError(
            f"`{name}` must be a number {_FLOAT32_RANGE}. Received: {name}={value!r}"
        ) from None


def _in_float32_range(number: float) -> bool:
    """Whether the compiled step sees `number` (a finite float) as neither 0 nor inf."""
    return number == 0 or FLOAT32_SMALLEST_NORMAL <= abs(number) <= FLOAT32_MAX


def validate_positive(name: str, value: Any) -> float:
    """Return `value` as a float if it is a finite number > 0, else raise ValueError.

    Numbers the compiled step cannot hold in float32 (below 1.2e-38 or above 3.4e38) are
    refused too: they would reach it as 0 or inf.
    """
    number = _as_number(name, value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(
            f"`{name}` must be a finite number greater than 0. Received: {name}={value!r}"
        )
    if not _in_float32_range(number):
        raise ValueError(
            f"`{name}` must be a finite number greater than 0, {_FLOAT32_RANGE}. "
            f"Received: {name}={value!r}"
        )
    return number


def validate_clip_threshold(value: Any) -> float:
    """The clip threshold must be a finite number > 0; zero, negatives, NaN and inf are refused."""
    return validate_positive("clip_threshold", value)


def validate_policy_name(name: Any) -> str:
    if not isinstance(name, str) or name not in POLICY_PARAMETERS:
        raise ValueError(
            f"Unknown clipping policy {name!r}. Valid policies: {', '.join(POLICY_NAMES)}"
        )
    return name


def validate_policy_params(name: str, params: dict[str, Any]) -> dict[str, float]:
    """Check `params` against policy `name`; return them with defaults filled in."""
    spec = POLICY_PARAMETERS[validate_policy_name(name)]
    unknown = sorted(map(repr, set(params) - set(spec)))
    if unknown:
        valid = ", ".join(spec) or "none (it takes only the clip threshold)"
        raise ValueError(
            f"Unknown parameter(s) {', '.join(unknown)} for policy {name!r}. Valid: {valid}"
        )
    checked = {}
    for key, parameter in spec.items():
        value = params.get(key, parameter.default)
        number = _as_number(key, value)
        low, high = parameter.bounds()  # float parameters: as the float32 the step computes with
        good = math.isfinite(number) and low <= number <= high
        if parameter.kind is int:  # in range first: int(nan) and int(inf) raise their own errors
            good = good and number == int(number)
        if not good:
            raise ValueError(f"`{key}` must be {parameter.allowed()}. Received: {key}={value!r}")
        checked[key] = int(number) if parameter.kind is int else number
    return checked


def default_settings(clip_threshold: float = 1.0, **live: float) -> ClipSettings:
    """Settings as constants, for tests and one-off calls."""
    values = {key: live.get(key) for key in LIVE_PARAMETERS}
    for policy in POLICY_PARAMETERS.values():
        for key, parameter in policy.items():
            if key in values and values[key] is None:
                values[key] = parameter.default
    return ClipSettings(
        clip_threshold=tf.constant(clip_threshold, tf.float32),
        **{key: tf.constant(value, tf.float32) for key, value in values.items()},
    )


# --- numerics -----------------------------------------------------------------------------------


def safe_norm(tensor, axis=None, keepdims=False):
    """L2 norm, scaled by the largest magnitude first so it neither overflows nor underflows.

    NaN or inf entries give a NaN norm, which the trainer treats as a non-finite step. Said
    explicitly, not left to the arithmetic: XLA's max drops a NaN (max(0, NaN) = 0 on CPU), so
    [0, NaN] had a scale of 0, took the all-zeros branch and measured 0, a finite norm whose NaN
    update then reached the weights.
    """
    tensor = tf.cast(tensor, tf.float32)
    scale = tf.reduce_max(tf.abs(tensor), axis=axis, keepdims=True)
    empty = scale <= 0  # all zeros (or an empty tensor)
    safe_scale = tf.where(empty, tf.ones_like(scale), scale)
    norm = scale * tf.sqrt(tf.reduce_sum(tf.square(tensor / safe_scale), axis=axis, keepdims=True))
    norm = tf.where(empty, tf.zeros_like(norm), norm)
    finite = tf.reduce_all(tf.math.is_finite(tensor), axis=axis, keepdims=True)
    norm = tf.where(finite, norm, tf.fill(tf.shape(norm), float("nan")))
    if not keepdims:
        norm = tf.squeeze(norm, axis=axis) if axis is not None else tf.reshape(norm, [])
    return norm


def _variable_norms(gradients) -> tf.Tensor:
    return tf.stack([safe_norm(g) for g in gradients])


def _scale_all(gradients, scale):
    return [g * tf.cast(scale, g.dtype) for g in gradients]


def _scale_down(norm, clip_threshold):
    """c / max(norm, c), written so that c = inf gives 1 rather than inf / inf."""
    clip = norm > clip_threshold
    return tf.where(clip, clip_threshold / tf.where(clip, norm, 1.0), 1.0)


def _clip_to_global_norm(gradients, variable_norms, clip_threshold):
    """g * c / max(||g||, c): tf.clip_by_global_norm's rule, with overflow-safe norms."""
    grad_norm = safe_norm(variable_norms)
    scale = _scale_down(grad_norm, clip_threshold)
    return _scale_all(gradients, scale), ClipStats(
        grad_norm=grad_norm,
        clipped_grad_norm=grad_norm * scale,
        clip_threshold=clip_threshold,
        clipped=grad_norm > clip_threshold,
        variable_norms=variable_norms,
    )


# --- the policies ---------------------------------------------------------------------------


def _no_state(variables) -> State:
    return ()


def no_clipping() -> ClipPolicy:
    """No clipping; still measures the norms."""

    def update(gradients, state, settings, variables=None):
        variable_norms = _variable_norms(gradients)
        grad_norm = safe_norm(variable_norms)
        return list(gradients), state, ClipStats(
            grad_norm, grad_norm, tf.constant(math.inf), tf.constant(False), variable_norms
        )

    return ClipPolicy("none", _no_state, update)


def global_norm() -> ClipPolicy:
    """Scale all gradients together so their global L2 norm is at most c.

    References: Pascanu et al. 2013, "On the difficulty of training recurrent neural networks".
    """

    def update(gradients, state, settings, variables=None):
        clipped, stats = _clip_to_global_norm(
            gradients, _variable_norms(gradients), settings.clip_threshold
        )
        return clipped, state, stats

    return ClipPolicy("global_norm", _no_state, update)


def per_tensor_norm() -> ClipPolicy:
    """Scale each gradient tensor on its own to L2 norm at most c (Keras `clipnorm`)."""

    def update(gradients, state, settings, variables=None):
        c = settings.clip_threshold
        variable_norms = _variable_norms(gradients)
        scales = _scale_down(variable_norms, c)
        clipped = [g * tf.cast(scales[i], g.dtype) for i, g in enumerate(gradients)]
        return clipped, state, ClipStats(
            grad_norm=safe_norm(variable_norms),
            clipped_grad_norm=safe_norm(variable_norms * scales),
            clip_threshold=c,
            clipped=tf.reduce_any(variable_norms > c),
            variable_norms=variable_norms,
        )

    return ClipPolicy("per_tensor_norm", _no_state, update)


def clip_by_value() -> ClipPolicy:
    """Clip every element to [-c, c] (Keras `clipvalue`)."""

    def update(gradients, state, settings, variables=None):
        c = settings.clip_threshold
        variable_norms = _variable_norms(gradients)
        clipped = [tf.clip_by_value(g, -tf.cast(c, g.dtype), tf.cast(c, g.dtype)) for g in gradients]
        any_clipped = tf.reduce_any(
            tf.stack([tf.reduce_any(tf.abs(tf.cast(g, tf.float32)) > c) for g in gradients])
        )
        return clipped, state, ClipStats(
            grad_norm=safe_norm(variable_norms),
            clipped_grad_norm=safe_norm(_variable_norms(clipped)),
            clip_threshold=c,
            clipped=any_clipped,
            variable_norms=variable_norms,
        )

    return ClipPolicy("value", _no_state, update)


def percentile_of(values, count, percentile):
    """The `percentile` (0-100) of the first `count` entries of `values`, linear interpolation.

    Matches `numpy.percentile(values[:count], percentile)`.
    """
    valid = tf.range(tf.shape(values)[0]) < count
    return _percentile_of_sorted(
        tf.sort(tf.where(valid, values, tf.fill(tf.shape(values), math.inf))), count, percentile
    )


def _percentile_of_sorted(ordered, count, percentile):
    rank = percentile / 100.0 * tf.cast(tf.maximum(count - 1, 0), tf.float32)
    lower = tf.cast(tf.floor(rank), tf.int32)
    upper = tf.minimum(lower + 1, tf.maximum(count - 1, 0))
    low_value, high_value = tf.gather(ordered, lower), tf.gather(ordered, upper)
    return low_value + (rank - tf.cast(lower, tf.float32)) * (high_value - low_value)


def autoclip(window: int = 1000) -> ClipPolicy:
    """Clip at the p-th percentile of the pre-clip global norms of the previous `window` steps.

    c_t = percentile({||g_s||: t - window <= s < t}, p); the first step is not clipped.
    State: (history ring [window], the same values sorted and padded with inf, steps seen).
    Keeping a sorted copy makes each step O(window) elementwise work instead of a sort.

    References: Seetharaman et al. 2020, "AutoClip: Adaptive Gradient Clipping for Source
    Separation Networks".
    """

    def init(variables) -> State:
        return (
            tf.zeros([window], tf.float32),
            tf.fill([window], math.inf),
            tf.constant(0, tf.int32),
        )

    def update(gradients, state, settings, variables=None):
        history, ordered, seen = state
        count = tf.minimum(seen, window)
        threshold = tf.cond(
            seen > 0,
            lambda: _percentile_of_sorted(ordered, count, settings.percentile),
            lambda: tf.constant(math.inf),
        )
        clipped, stats = _clip_to_global_norm(gradients, _variable_norms(gradients), threshold)

        # Slide the window: drop the norm leaving it (once full), insert the new one in order.
        positions, slot, norm = tf.range(window), seen % window, stats.grad_norm
        leaving = history[slot]
        drop_at = tf.argmax(tf.cast(tf.equal(ordered, leaving), tf.int32), output_type=tf.int32)
        shifted_left = tf.concat([ordered[1:], [math.inf]], 0)
        ordered = tf.where((seen >= window) & (positions >= drop_at), shifted_left, ordered)
        insert_at = tf.reduce_sum(tf.cast(ordered < norm, tf.int32))
        shifted_right = tf.concat([[math.inf], ordered[:-1]], 0)
        ordered = tf.where(
            positions < insert_at, ordered, tf.where(positions == insert_at, norm, shifted_right)
        )
        history = tf.tensor_scatter_nd_update(history, [[slot]], [norm])
        return clipped, (history, ordered, seen + 1), stats

    return ClipPolicy("autoclip", init, update)


def _unitwise_norm(tensor):
    """Norm per output unit: over all axes but the last; a 1-D tensor is one unit."""
    if tensor.shape.rank <= 1:
        return safe_norm(tensor, keepdims=True)
    return safe_norm(tensor, axis=list(range(tensor.shape.rank - 1)), keepdims=True)


def agc(eps: float = 1e-3) -> ClipPolicy:
    """Adaptive gradient clipping, unit-wise, relative to the weight's norm.

    max_i = clip_factor * max(||W_i||, eps);  G_i <- G_i * max_i / ||G_i||  if ||G_i|| > max_i.
    The recorded clip threshold is the clip factor.

    References: Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without
    Normalization" (NFNets).
    """

    def update(gradients, state, settings, variables=None):
        if variables is None:
            raise ValueError(MISSING_VARIABLES_MESSAGE)
        clip_factor = settings.clip_factor
        clipped, any_clipped = [], []
        for gradient, variable in zip(gradients, variables):
            max_norm = clip_factor * tf.maximum(_unitwise_norm(variable), eps)
            grad_norm = _unitwise_norm(gradient)
            trigger = grad_norm > max_norm
            scale = tf.where(trigger, max_norm / tf.maximum(grad_norm, 1e-6), 1.0)
            clipped.append(gradient * tf.cast(scale, gradient.dtype))
            any_clipped.append(tf.reduce_any(trigger))
        variable_norms = _variable_norms(gradients)
        return clipped, state, ClipStats(
            grad_norm=safe_norm(variable_norms),
            clipped_grad_norm=safe_norm(_variable_norms(clipped)),
            clip_threshold=clip_factor,
            clipped=tf.reduce_any(tf.stack(any_clipped)),
            variable_norms=variable_norms,
        )

    return ClipPolicy("agc", _no_state, update)


def zclip(alpha: float = 0.97, warmup_steps: int = 25, eps: float = 1e-6) -> ClipPolicy:
    """Z-score clipping against an EMA of the gradient norm, capped by the clip threshold.

    Warm-up: the first `warmup_steps` norms are clipped at the cap and collected; then
    mean and variance start from their mean and (population) variance. After warm-up, with
    z = (||g|| - mean) / (std + eps):
        spike (z > z_thr):  c = min(mean + z_thr**2 * std / z, cap)     ("adaptive scaling")
        otherwise:          c = cap
    The EMA takes the adaptive threshold on a spike and the raw norm otherwise:
        mean <- alpha * mean + (1 - alpha) * x;  var <- alpha * var + (1 - alpha) * (x - mean)**2
    (the new mean in the variance update, as in the reference implementation).
    State: (mean, var, steps seen, warm-up buffer).

    References: Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training".
    """

    def init(variables) -> State:
        return (
            tf.constant(0.0),
            tf.constant(0.0),
            tf.constant(0, tf.int32),
            tf.zeros([warmup_steps], tf.float32),
        )

    def update(gradients, state, settings, variables=None):
        mean, variance, seen, buffer = state
        cap, z_threshold = settings.clip_threshold, settings.z_threshold
        variable_norms = _variable_norms(gradients)
        grad_norm = safe_norm(variable_norms)
        warming_up = seen < warmup_steps

        std = tf.sqrt(variance)
        z_score = (grad_norm - mean) / (std + eps)
        spike = tf.logical_and(tf.logical_not(warming_up), z_score > z_threshold)
        adaptive = mean + z_threshold * z_threshold * std / tf.maximum(z_score, eps)
        threshold = tf.where(spike, tf.minimum(adaptive, cap), cap)
        clipped, stats = _clip_to_global_norm(gradients, variable_norms, threshold)

        # Warm-up: collect, and start the EMA from the buffer once it is full.
        buffer = tf.tensor_scatter_nd_update(
            buffer, [[tf.minimum(seen, warmup_steps - 1)]], [tf.where(warming_up, grad_norm, 0.0)]
        )
        just_filled = tf.equal(seen + 1, warmup_steps)
        warm_mean = tf.reduce_mean(buffer)
        warm_variance = tf.reduce_mean(tf.square(buffer - warm_mean))
        ema_input = tf.where(spike, adaptive, grad_norm)
        ema_mean = alpha * mean + (1.0 - alpha) * ema_input
        ema_variance = alpha * variance + (1.0 - alpha) * tf.square(ema_input - ema_mean)
        new_mean = tf.where(warming_up, tf.where(just_filled, warm_mean, mean), ema_mean)
        new_variance = tf.where(
            warming_up, tf.where(just_filled, warm_variance, variance), ema_variance
        )
        return clipped, (new_mean, new_variance, seen + 1, buffer), stats

    return ClipPolicy("zclip", init, update)


class PolicyEntry(NamedTuple):
    """A policy in the registry: its factory and the parameters it takes."""

    factory: Callable[..., ClipPolicy]  # structural parameters -> ClipPolicy
    parameters: dict[str, Parameter]  # besides the clip threshold
    reads_clip_threshold: bool = True  # False: it picks its own (a threshold sweep means nothing)


# The registry: adding a policy is one factory above and one line here. Every driver (the
# trainer's compiled chunk, LiveClipping's optimizer) builds its policies from it.
REGISTRY: dict[str, PolicyEntry] = {
    "none": PolicyEntry(no_clipping, {}, reads_clip_threshold=False),
    "global_norm": PolicyEntry(global_norm, {}),
    "per_tensor_norm": PolicyEntry(per_tensor_norm, {}),
    "value": PolicyEntry(clip_by_value, {}),
    "autoclip": PolicyEntry(autoclip, {
        "percentile": Parameter(10.0, float, 0.0, 100.0, False, True, live=True),
        "window": Parameter(1000, int, 1, 1_000_000, True, True, live=False),
    }, reads_clip_threshold=False),
    "agc": PolicyEntry(agc, {
        "clip_factor": Parameter(0.01, float, **_POSITIVE, live=True),
        "eps": Parameter(1e-3, float, **_POSITIVE, live=False),
    }, reads_clip_threshold=False),
    "zclip": PolicyEntry(zclip, {
        "z_threshold": Parameter(2.5, float, **_POSITIVE, live=True),
        "alpha": Parameter(0.97, float, 0.0, 1.0, False, False, live=False),
        "warmup_steps": Parameter(25, int, 1, 1_000_000, True, True, live=False),
        "eps": Parameter(1e-6, float, **_POSITIVE, live=False),
    }),
}  # fmt: skip


def _publish_registry() -> None:
    """POLICY_PARAMETERS (the same dict object, updated in place) and POLICY_NAMES from REGISTRY."""
    global POLICY_NAMES
    POLICY_PARAMETERS.clear()
    POLICY_PARAMETERS.update({name: entry.parameters for name, entry in REGISTRY.items()})
    POLICY_NAMES = tuple(REGISTRY)


def register_policy(
    name: str, factory: Callable[..., ClipPolicy], parameters: dict | None = None, *, reads_clip_threshold: bool = True
) -> None:
    """Add a policy at run time (a plug-in's own, or a test's): every driver built after this
    call offers it. Its live parameters can only be the existing live knobs (LIVE_PARAMETERS);
    any other parameter is structural (a change rebuilds the step). `reads_clip_threshold=False`:
    it picks its own threshold, so a threshold sweep of it is refused (its branches would train
    alike), as for autoclip and agc."""
    if not isinstance(reads_clip_threshold, bool):
        raise ValueError(f"reads_clip_threshold must be True or False. Received: reads_clip_threshold={reads_clip_threshold!r}")
    parameters = dict(parameters or {})
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"A policy name must be an identifier. Received: name={name!r}")
    if name in REGISTRY:
        raise ValueError(f"Policy {name!r} is registered already. Registered: {', '.join(POLICY_NAMES)}")
    live = [key for key, parameter in parameters.items() if parameter.live and key not in LIVE_PARAMETERS]
    if live:
        raise ValueError(
            f"A live parameter must be one of {', '.join(LIVE_PARAMETERS)}. Received: {', '.join(live)}"
        )
    REGISTRY[name] = PolicyEntry(factory, parameters, reads_clip_threshold=reads_clip_threshold)
    _publish_registry()


def unregister_policy(name: str) -> None:
    """Remove a policy added by `register_policy` (the built-in ones stay)."""
    if name in _BUILT_IN:
        raise ValueError(f"{name!r} is a built-in policy; only registered ones can be removed.")
    REGISTRY.pop(name, None)
    _publish_registry()


_BUILT_IN = frozenset(REGISTRY)
_publish_registry()


def refuse_a_threshold_sweep(policy: str) -> None:
    """ValueError if `policy` does not read the clip threshold: its branches would all train
    alike (found by probing: an autoclip sweep's rows were identical, and a "best" was named)."""
    if not REGISTRY[policy].reads_clip_threshold:
        readers = ", ".join(name for name, entry in REGISTRY.items() if entry.reads_clip_threshold)
        raise ValueError(
            f"A threshold sweep needs a policy that reads the clip threshold ({readers}); {policy!r} does not, so "
            f"every branch would train alike. Switch the run's policy first, or fork with other settings. "
            f"Received: policy={policy!r}"
        )


def make_policy(name: str, **params: Any) -> ClipPolicy:
    """Build policy `name`; `params` may hold any of its parameters, live or structural."""
    checked = validate_policy_params(name, params)
    structural = {
        key: value for key, value in checked.items() if not POLICY_PARAMETERS[name][key].live
    }
    return REGISTRY[name].factory(**structural)
