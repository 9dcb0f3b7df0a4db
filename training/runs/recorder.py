"""The recorder: a thread that files each finished chunk's rows while the next chunk trains.

The training thread hands over a chunk's outputs and goes straight on to the next chunk; the
recorder thread turns them into rows and is the one owner of everything that records them: the
store's append and summary fold, the run database writer's queue, and the sinks (the CLI's CSV).
Why: that host work sat between chunks on the training thread (0.6 ms of a ~20 ms seed chunk
alone, and several milliseconds more for a CSV sink), while TensorFlow runs a chunk with the GIL
released, so it overlaps for free on a second core.

The hand-off queue is bounded: if the sinks cannot keep up, the training thread waits for them
rather than letting memory grow (every step is still recorded). `close()` drains it, so once a
run's state says it stopped, its store, database queue and sinks hold every step.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable

import numpy as np

Rows = dict[str, np.ndarray]
MAX_PENDING_CHUNKS = 8  # ~160 ms of training at the trainer's 20 ms chunks; bounds memory
_CLOSE = object()


class Recorder:
    """Files rows on its own thread: `store.append`, `writer.append`, then every sink.

    Args:
        consumers: callables that each take one chunk's rows, called in this order.
        name: the thread's name.

    Example:
        >>> filed = []
        >>> recorder = Recorder([filed.append])
        >>> recorder.submit(lambda: {"step": np.arange(1, 4)})
        >>> recorder.close()
        >>> int(filed[0]["step"][-1])
        3
    """

    def __init__(self, consumers: Iterable[Callable[[Rows], None]], name: str = "clipwatch-recorder"):
        self._consumers = tuple(consumers)
        self._pending: queue.Queue = queue.Queue(maxsize=MAX_PENDING_CHUNKS)
        self.error: BaseException | None = None  # the first consumer failure; the run then fails
        self.closed = False  # every submitted chunk is filed and the thread has ended
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, make_rows: Callable[[], Rows]) -> None:
        """Queue one chunk: `make_rows()` runs on the recorder thread (the `.numpy()` copies and
        the per-step columns), then every consumer gets its result. Waits while the queue is full."""
        if self.error is not None:
            raise RuntimeError(f"Recording failed: {type(self.error).__name__}: {self.error}") from self.error
        self._pending.put(make_rows)

    def flush(self) -> None:
        """Wait until every chunk submitted so far is filed (e.g. before a pause shows)."""
        self._pending.join()

    def close(self) -> None:
        """File everything queued, then end the thread (idempotent)."""
        if self._thread.is_alive():
            self._pending.put(_CLOSE)
            self._thread.join()
        self.closed = True
        # Its consumers may hold the run: dropped, the ended run's Trainer is freed as soon as
        # nobody holds it, without a garbage collection (its kept steps: training/loop/step_pool.py).
        self._consumers = ()

    def _run(self) -> None:
        while True:
            item = self._pending.get()
            if item is _CLOSE:
                self._pending.task_done()
                return
            try:
                if self.error is None:  # else drain without recording: the run is failing
                    rows = item()
                    for consume in self._consumers:
                        consume(rows)
            except BaseException as error:  # kept and raised on the training thread
                self.error = error
            finally:
                self._pending.task_done()
