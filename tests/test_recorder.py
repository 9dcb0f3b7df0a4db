"""The recorder thread: files every chunk in order, drains on close, and a failing sink fails the run."""

import threading

import numpy as np
import pytest
from support import wait_until

from training import Trainer
from training.recorder import MAX_PENDING_CHUNKS, Recorder


def test_chunks_are_filed_in_order_by_every_consumer_and_close_drains_them():
    store, sink = [], []
    recorder = Recorder([store.append, sink.append])
    for first in range(0, 1000, 10):
        recorder.submit(lambda first=first: {"step": np.arange(first + 1, first + 11)})
    recorder.close()
    for filed in (store, sink):
        assert np.concatenate([rows["step"] for rows in filed]).tolist() == list(range(1, 1001))
    assert recorder.error is None


def test_a_slow_consumer_holds_the_producer_back_instead_of_queueing_without_bound():
    release = threading.Event()
    recorder = Recorder([lambda rows: release.wait()])
    submitted = []

    def produce():
        for index in range(MAX_PENDING_CHUNKS + 5):
            recorder.submit(lambda: {"step": np.arange(1)})
            submitted.append(index)

    producer = threading.Thread(target=produce)
    producer.start()
    # One chunk is being filed and MAX_PENDING_CHUNKS wait: the producer blocks on the next.
    wait_until(lambda: len(submitted) == MAX_PENDING_CHUNKS + 1, timeout=10, what="the queue to fill")
    producer.join(0.2)
    assert producer.is_alive() and len(submitted) == MAX_PENDING_CHUNKS + 1
    release.set()
    producer.join(10)
    recorder.close()
    assert len(submitted) == MAX_PENDING_CHUNKS + 5


def test_a_failing_sink_fails_the_run_with_its_error():
    def broken_sink(rows):
        raise OSError("disk full")

    trainer = Trainer(task="seed", sinks=(broken_sink,))
    trainer.start()
    wait_until(lambda: trainer.status.state == "failed", what="the run to fail")
    assert "disk full" in trainer.status.error
    with pytest.raises(RuntimeError, match="failed"):
        trainer.start()
