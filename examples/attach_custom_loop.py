"""A custom `GradientTape` loop with Clipwatch attached: `clip` before the update, `sync` after.

    python examples/attach_custom_loop.py --steps 2000
"""

from __future__ import annotations

import keras
import tensorflow as tf

from common import moons_dataset, parse_arguments, report, small_model
from clipwatch.keras import LiveClipping


def main(argv=None) -> None:
    args = parse_arguments(__doc__.splitlines()[0], argv)
    model = small_model()
    optimizer = keras.optimizers.Adam(1e-2)
    loss_function = keras.losses.BinaryCrossentropy()
    clipping = LiveClipping(policy=args.policy, clip_threshold=args.clip_threshold,  # Clipwatch
                            database=args.db, run_name=args.run_name or "attach_custom_loop example")

    @tf.function
    def train_step(inputs, targets):
        with tf.GradientTape() as tape:
            loss = loss_function(targets, model(inputs, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        gradients = clipping.clip(gradients, model.trainable_variables, loss=loss)  # Clipwatch
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))

    for inputs, targets in moons_dataset().take(args.steps):
        train_step(inputs, targets)
        if clipping.sync():  # Clipwatch: records the step, applies commands; True on `stop`
            break
    clipping.close()
    report(clipping, model, args.json)


if __name__ == "__main__":
    main()
