"""`fit` under MirroredStrategy on two logical CPU devices, with Clipwatch attached.

Clipwatch sums the replicas' gradients first and clips that sum once, so the recorded
`grad_norm` is the norm of the update every replica applies (Keras' own `global_clipnorm`
clips each replica's part before the sum).

    python examples/attach_mirrored.py --steps 500
"""

from __future__ import annotations

import keras
import tensorflow as tf

from common import moons_dataset, parse_arguments, report, small_model
from clipwatch.keras import LiveClipping


def main(argv=None) -> None:
    args = parse_arguments(__doc__.splitlines()[0], argv)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = small_model()
        clipping = LiveClipping(policy=args.policy, clip_threshold=args.clip_threshold,  # Clipwatch
                                database=args.db, run_name=args.run_name or "attach_mirrored example")
        model.compile(optimizer=clipping.wrap(keras.optimizers.Adam(1e-2)),  # Clipwatch
                      loss="binary_crossentropy", steps_per_execution=args.steps_per_execution)
    model.fit(moons_dataset(), epochs=1, steps_per_epoch=args.steps, verbose=0,
              callbacks=[clipping.callback()])  # Clipwatch
    report(clipping, model, args.json, replicas=strategy.num_replicas_in_sync)


if __name__ == "__main__":
    main()
