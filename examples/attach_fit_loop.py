"""A loop of `fit(epochs=1)` calls with validation, `predict` between them: one Clipwatch run.

The shape of many keras-io examples: fit one epoch, print a few predictions, fit again. The
whole loop is one run (its steps continue from fit to fit, each epoch's `val_loss` is drawn
beside the training loss); a `stop` from the page ends the fit in progress at its next step,
and `clipping.stopped` ends the loop.

    python examples/attach_fit_loop.py --steps 2000 --steps-per-epoch 100
"""

from __future__ import annotations

import keras

from common import moons_dataset, parse_arguments, report, small_model
from clipwatch.keras import LiveClipping


def extra(parser) -> None:
    parser.add_argument("--steps-per-epoch", type=int, default=100, help="steps of each fit (default 100)")


def main(argv=None) -> None:
    args = parse_arguments(__doc__.splitlines()[0], argv, extra)
    model = small_model()
    validation = moons_dataset().take(4)
    samples = next(iter(moons_dataset()))[0][:4]
    clipping = LiveClipping(policy=args.policy, clip_threshold=args.clip_threshold,  # Clipwatch
                            database=args.db, run_name=args.run_name or "attach_fit_loop example")
    model.compile(
        optimizer=clipping.wrap(keras.optimizers.Adam(1e-2)),  # Clipwatch
        loss="binary_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=args.steps_per_execution,
    )
    epochs = -(-args.steps // args.steps_per_epoch)
    fits = 0
    for epoch in range(epochs):
        steps = min(args.steps_per_epoch, args.steps - epoch * args.steps_per_epoch)
        model.fit(moons_dataset(), epochs=epoch + 1, initial_epoch=epoch, steps_per_epoch=steps,
                  validation_data=validation, verbose=0, callbacks=[clipping.callback()])  # Clipwatch
        fits += 1
        model.predict(samples, verbose=0)  # what such a script prints between its fits
        if clipping.stopped:  # Clipwatch: a stop from the page ends the loop
            break
    clipping.close()  # Clipwatch (the process's exit would close the run too)
    report(clipping, model, args.json, fits=fits, stopped=clipping.stopped)


if __name__ == "__main__":
    main()
