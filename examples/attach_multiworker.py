"""Two workers (two processes on localhost) under MultiWorkerMirroredStrategy, Clipwatch attached.

Run without `--worker` to start both workers on free localhost ports and wait for them:

    python examples/attach_multiworker.py --steps 500

The chief (worker 0) records the run and polls the commands; its knobs travel to the other
worker inside each step's all-reduce, so both always clip with the same threshold.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def launch(argv: list[str]) -> int:
    """Start worker 0 and worker 1 of a two-worker cluster; return the first non-zero status."""
    ports = ",".join(str(port) for port in _free_ports(2))
    workers = [
        subprocess.Popen([sys.executable, __file__, *argv, "--worker", str(index), "--ports", ports])
        for index in range(2)
    ]
    return max(worker.wait() for worker in workers)


def train(args) -> None:
    ports = args.ports.split(",")
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
        "task": {"type": "worker", "index": args.worker},
    })  # fmt: skip
    import keras
    import tensorflow as tf

    from common import BATCH_SIZE, moons_dataset, report, small_model
    from clipwatch.keras import LiveClipping

    # A custom loop: Keras 3's `fit` fails under MultiWorkerMirroredStrategy before its first
    # step (keras-team/keras#20585); the optimizer's `apply_gradients` is the same code path.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = small_model()
        clipping = LiveClipping(policy=args.policy, clip_threshold=args.clip_threshold,  # Clipwatch
                                database=args.db, run_name=args.run_name or "attach_multiworker example")
        optimizer = clipping.wrap(keras.optimizers.Adam(1e-2))  # Clipwatch
        optimizer.build(model.trainable_variables)
        clipping.build(model.trainable_variables)  # Clipwatch: its variables, outside strategy.run
    loss_function = keras.losses.BinaryCrossentropy(reduction=None)
    global_batch = BATCH_SIZE * strategy.num_replicas_in_sync
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    batches = iter(strategy.experimental_distribute_dataset(
        moons_dataset(global_batch).with_options(options)))  # fmt: skip

    @tf.function
    def train_step(inputs, targets):
        def replica_step(inputs, targets):
            with tf.GradientTape() as tape:
                per_example = loss_function(targets, model(inputs, training=True))
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
                loss = optimizer.scale_loss(loss)  # as `fit` does; Clipwatch records the loss
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))

        strategy.run(replica_step, args=(inputs, targets))

    for _ in range(args.steps):
        train_step(*next(batches))
        if clipping.sync():  # Clipwatch: every worker sees the chief's `stop` after the same step
            break
    clipping.close()
    path = args.json and f"{args.json}.worker{args.worker}"
    report(clipping, model, path, worker=args.worker)


def main(argv=None) -> None:
    from common import parse_arguments

    def extra(parser):
        parser.add_argument("--worker", type=int, default=None, help="this process's worker index")
        parser.add_argument("--ports", default=None, help="the two workers' localhost ports")

    argv = sys.argv[1:] if argv is None else argv
    args = parse_arguments(__doc__.splitlines()[0], argv, extra)
    if args.worker is None:
        sys.exit(launch(argv))
    train(args)


if __name__ == "__main__":
    main()
