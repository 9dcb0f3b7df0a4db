"""Streamed tf.data training: an endless dataset trains without being materialised, and so does
one that reads TFRecord files the test writes."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from support import wait_until

from training import Trainer, plugins
from training.streaming import training_batches
from support import write_plugin


@pytest.fixture
def tiny_task(tmp_path):
    return plugins.load_task(str(write_plugin(tmp_path, "tiny.py")))


def finished(trainer):
    trainer.start()
    wait_until(lambda: trainer.status.state not in ("idle", "running"), what="the run to end")
    assert trainer.status.state == "stopped", trainer.status.error
    return trainer


def test_an_endless_dataset_trains_and_is_read_only_as_far_as_needed(tiny_task):
    produced = [0]

    def examples():
        rng = np.random.default_rng(0)
        while True:
            produced[0] += 1
            row = rng.normal(size=4).astype(np.float32)
            yield row, np.array([row.sum()], np.float32)

    def make_data(seed):
        signature = (tf.TensorSpec((4,), tf.float32), tf.TensorSpec((1,), tf.float32))
        return tf.data.Dataset.from_generator(examples, output_signature=signature).repeat()

    task = dataclasses.replace(tiny_task, make_data=make_data, batch_size=8, shuffle_buffer=64)
    assert int(make_data(0).cardinality()) == int(tf.data.INFINITE_CARDINALITY)
    trainer = finished(Trainer(task=task, max_steps=400))
    metrics = trainer.metrics()
    assert metrics.step.tolist() == list(range(1, 401))
    assert metrics.loss.tail(50).mean() < 0.5 * metrics.loss.head(20).mean()
    # Read ahead is bounded: the shuffle buffer plus a few prefetched batches, never "all of it".
    assert 400 * 8 <= produced[0] <= 400 * 8 + 64 + 64 * 8
    clipped = metrics[metrics.clipped]
    assert (metrics.clipped_grad_norm <= metrics.clip_threshold * (1 + 1e-5)).all()
    assert ((metrics.grad_norm > metrics.clip_threshold) == metrics.clipped).all() and len(clipped)


def test_a_dataset_reading_tfrecord_files_trains(tiny_task, tmp_path):
    paths = [str(tmp_path / f"part{index}.tfrecord") for index in range(2)]
    rng = np.random.default_rng(1)
    for path in paths:
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(200):
                row = rng.normal(size=4).astype(np.float32)
                feature = {
                    "inputs": tf.train.Feature(float_list=tf.train.FloatList(value=row)),
                    "target": tf.train.Feature(float_list=tf.train.FloatList(value=[row.sum()])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())

    def parse(record):
        spec = {"inputs": tf.io.FixedLenFeature([4], tf.float32), "target": tf.io.FixedLenFeature([1], tf.float32)}
        example = tf.io.parse_single_example(record, spec)
        return example["inputs"], example["target"]

    def make_data(seed):
        return tf.data.TFRecordDataset(paths).map(parse)

    task = dataclasses.replace(tiny_task, make_data=make_data, make_validation_data=make_data, evaluation_interval=100)
    trainer = finished(Trainer(task=task, max_steps=300))
    metrics = trainer.metrics()
    assert len(metrics) == 300 and metrics.finite.all()
    assert metrics.loss.tail(50).mean() < 0.5 * metrics.loss.head(20).mean()
    assert trainer.evaluations().query("name == 'val_loss'").step.tolist() == [100, 200, 300]


def test_the_streamed_order_follows_the_run_seed():
    def first_batch(seed):
        dataset = tf.data.Dataset.range(1000).map(lambda x: (x, x))
        return next(iter(training_batches(dataset, seed, 5, 100)))[0].numpy().tolist()

    assert first_batch(0) == first_batch(0)
    assert first_batch(0) != first_batch(1)
