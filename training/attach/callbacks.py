"""The Keras callback of `training.keras.LiveClipping`: how `fit` and `evaluate` reach the run.

Every batch end copies the ring out and applies commands (`AttachedRun._between_batches`); a
fit's start applies the commands that came while no fit ran (a pause holds its first step); its
epoch logs (`loss`, `accuracy`, every `val_*`) and `evaluate()`'s results become the run's
evaluations. After a `stop`, the fit in progress ends at the next step (`stop_training`) and
every later fit returns at once: its train function takes no step and no validation runs.
"""

from __future__ import annotations

import keras

# evaluate()'s positional arguments up to `callbacks` (x, y, batch_size, verbose, sample_weight,
# steps, callbacks): a call passing that many positionally is left alone.
_EVALUATE_CALLBACKS_POSITION = 6


class LiveClippingCallback(keras.callbacks.Callback):
    """Drains the ring and applies commands between batches; records the epoch logs."""

    def __init__(self, clipping):
        super().__init__()
        self._clipping = clipping
        self._begin_step = 0
        self._steps_done = 0
        self._in_fit = False
        self._replaced: dict[str, object] = {}  # model attributes a stopped fit replaced
        self._fit_start = (0, 0)  # the optimizer's step count and the steps recorded, as the fit began

    def set_model(self, model):
        super().set_model(model)
        clipping = self._clipping
        if clipping._strategy is None:
            clipping._strategy = model.distribute_strategy
        steps_per_execution = int(getattr(model, "steps_per_execution", 1) or 1)
        if clipping._ring_steps < 2 * steps_per_execution:
            raise ValueError(
                f"`ring_steps` must be at least twice steps_per_execution. Received: ring_steps="
                f"{clipping._ring_steps}, steps_per_execution={steps_per_execution}"
            )
        if model.built:
            clipping._ensure_built(model.trainable_variables)
        clipping._watch_loss_scale(getattr(model, "optimizer", None))  # compile's, under mixed precision
        _record_evaluate(model, clipping)

    def on_train_begin(self, logs=None):
        clipping = self._clipping
        self._in_fit = True
        clipping._ensure_built(self.model.trainable_variables)
        clipping._begin(self.model)
        # A LossScaleOptimizer skips the update of a step whose scaled gradients overflowed:
        # there the graph's own count says how many steps ran, not the batch numbers.
        self._count_in_graph = isinstance(self.model.optimizer, keras.optimizers.LossScaleOptimizer)
        if clipping._began:
            self._steps_done = clipping._steps_done()
            clipping._between_batches(self._steps_done)  # commands sent between fits; a pause holds
        if clipping.stopped:
            self._take_no_step()
        self._fit_start = (_iterations(self.model), int(clipping._steps.numpy()))

    def on_train_batch_begin(self, batch, logs=None):
        self._begin_step = batch

    def on_train_batch_end(self, batch, logs=None):
        clipping = self._clipping
        if not clipping._began:
            return  # a stopped attachment's fit
        if self._count_in_graph:
            self._steps_done = clipping._steps_done()
        else:  # Keras passes the first and the last step of the execution: no count to read
            self._steps_done += batch - self._begin_step + 1
        if clipping._between_batches(self._steps_done):
            self.model.stop_training = True
            self._replace("_should_eval", lambda epoch, validation_freq: False)  # no validation after stop

    def on_epoch_end(self, epoch, logs=None):
        if self._clipping._began and logs:
            self._clipping.record_evaluation(**_numbers(logs))

    def on_test_end(self, logs=None):
        # fit's own validation is in its epoch logs (as val_*); evaluate()'s results are named
        # as fit names validation results, so the page draws them beside the training loss.
        if not self._in_fit and self._clipping._built and logs:
            self._clipping.record_evaluation(**{f"val_{name}": value for name, value in _numbers(logs).items()})

    def on_train_end(self, logs=None):
        self._in_fit = False
        for name, value in self._replaced.items():
            if value is None:
                object.__delattr__(self.model, name)
            else:
                object.__setattr__(self.model, name, value)
        self._replaced = {}
        clipping = self._clipping
        iterations, recorded = self._fit_start
        taken = _iterations(self.model) - iterations
        if taken > 0 and int(clipping._steps.numpy()) == recorded:  # found by probing: silent, 0 steps
            clipping._warn_once(
                "unwrapped", f"fit took {taken} step(s) and none was clipped or recorded: compile the model with "
                "optimizer=clipping.wrap(...), or call clipping.clip(...) in its train_step. Received: optimizer="
                f"{type(self.model.optimizer).__name__}, not the one this LiveClipping wrapped",
            )  # fmt: skip
        if clipping._stop:
            clipping.close()
        elif clipping._began:  # every step of this fit in memory (`metrics()`) and handed to the writer
            clipping._drain(clipping._steps_done())

    def _take_no_step(self) -> None:
        """A fit on a stopped attachment returns at once: Keras enters its first epoch before it
        reads `stop_training`, so its train function is replaced for this fit by one that
        trains nothing, and validation is skipped."""
        self.model.stop_training = True
        self._replace("train_function", lambda iterator: {})
        self._replace("_should_eval", lambda epoch, validation_freq: False)

    def _replace(self, name: str, value) -> None:
        if name not in self._replaced:
            self._replaced[name] = self.model.__dict__.get(name)  # None: the class's own
        object.__setattr__(self.model, name, value)


def _iterations(model) -> int:
    """The optimizer's step count (0 without one)."""
    optimizer = getattr(model, "optimizer", None)
    return 0 if optimizer is None else int(optimizer.iterations.numpy())


def _numbers(logs: dict) -> dict[str, float]:
    numbers = {}
    for name, value in logs.items():
        try:
            numbers[name] = float(value)
        except (TypeError, ValueError):
            continue  # not a number (Keras logs only numbers; a user's callback may add others)
    return numbers


def _record_evaluate(model, clipping) -> None:
    """Make `model.evaluate(...)` record its results without the callback passed to it (once
    per model): the callback is added to the call's list. fit's own validation call (cached
    dataset, the fit's callback list) is left as it is."""
    if getattr(model, "_clipwatch_evaluate", None) is clipping:
        return
    original = model.evaluate

    def evaluate(*args, **kwargs):
        callbacks = kwargs.get("callbacks")
        if (
            not kwargs.get("_use_cached_eval_dataset")
            and len(args) <= _EVALUATE_CALLBACKS_POSITION
            and (callbacks is None or isinstance(callbacks, (list, tuple)))
            and not any(isinstance(c, LiveClippingCallback) and c._clipping is clipping for c in callbacks or ())
        ):
            kwargs["callbacks"] = [*(callbacks or ()), LiveClippingCallback(clipping)]
        return original(*args, **kwargs)

    # object.__setattr__: Keras' attribute tracking must not see (nor save) these.
    object.__setattr__(model, "evaluate", evaluate)
    object.__setattr__(model, "_clipwatch_evaluate", clipping)
