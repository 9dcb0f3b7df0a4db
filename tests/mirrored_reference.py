"""Run in a subprocess by tests/test_keras.py: two logical CPU devices must be configured before
TensorFlow starts, which the test process's own TensorFlow has already done.

One `fit` step of a 3-weight linear model under MirroredStrategy, the two replicas getting
different halves of the batch (so different gradients), with LiveClipping and with Keras' own
`global_clipnorm`; and the single-device reference on the combined batch. Prints JSON.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from training.keras import LiveClipping  # noqa: E402

INPUTS = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [2.0, -1.0, 1.0], [-3.0, 0.0, 2.0]], "float32")
TARGETS = np.array([[1.0], [-2.0], [4.0], [0.5]], "float32")
INITIAL = np.array([[0.5], [-0.2], [0.1]], "float32")
CLIP_THRESHOLD = 0.5


def linear_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign(INITIAL)
    return model


def one_mirrored_step(strategy, clipping_with_keras: bool):
    with strategy.scope():
        model = linear_model()
        if clipping_with_keras:
            clipping, optimizer = None, keras.optimizers.SGD(1.0, global_clipnorm=CLIP_THRESHOLD)
        else:
            clipping = LiveClipping("global_norm", CLIP_THRESHOLD, database=False)
            optimizer = clipping.wrap(keras.optimizers.SGD(1.0))
        model.compile(optimizer=optimizer, loss="mse")
    callbacks = [] if clipping is None else [clipping.callback()]
    model.fit(INPUTS, TARGETS, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return model.layers[0].kernel.numpy().ravel(), clipping, strategy.num_replicas_in_sync


def main():
    # One strategy for both: two MirroredStrategy objects in a process reuse collective keys.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    ours, clipping, replicas = one_mirrored_step(strategy, clipping_with_keras=False)
    keras_own, _, _ = one_mirrored_step(strategy, clipping_with_keras=True)
    model = linear_model()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(INPUTS) - TARGETS))
    gradients = tape.gradient(loss, model.trainable_variables)
    clipped, _ = tf.clip_by_global_norm(gradients, CLIP_THRESHOLD)
    # The replicas' own gradients (each on its half of the batch), to show they differ.
    halves = []
    for part in (slice(0, 2), slice(2, 4)):
        with tf.GradientTape() as tape:
            half_loss = tf.reduce_mean(tf.square(model(INPUTS[part]) - TARGETS[part]))
        halves.append(tape.gradient(half_loss, model.trainable_variables)[0].numpy().ravel().tolist())
    recorded = clipping.metrics()
    print(json.dumps({
        "replicas": replicas,
        "replica_gradients": halves,
        "ours": ours.tolist(),
        "keras_global_clipnorm": keras_own.tolist(),
        "reference": (INITIAL - clipped[0].numpy()).ravel().tolist(),
        "reference_norm": float(tf.linalg.global_norm(gradients)),
        "reference_loss": float(loss),
        "recorded_steps": len(recorded),
        "recorded_norm": float(recorded.grad_norm.iloc[0]),
        "recorded_clipped_norm": float(recorded.clipped_grad_norm.iloc[0]),
        "recorded_loss": float(recorded.loss.iloc[0]),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
