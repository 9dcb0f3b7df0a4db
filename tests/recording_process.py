"""A helper process for tests/test_persistence_faults.py: records a paced `seed` run.

Usage: python tests/recording_process.py DB_PATH STEPS_PER_SECOND. It prints one JSON line of
progress every 0.1 s (trainer step, steps the writer committed, its state and warning) and
stops the run when its stdin closes, printing a last line with `"final": true`.
"""

import json
import sys
import threading

from training import Trainer
from training.persistence import RunDatabase


def report(trainer, final=False):
    status, writer = trainer.status, trainer.writer
    line = {"step": status.step, "state": status.state, "warning": status.warning, "final": final}
    if writer is not None:
        line.update(written=writer.status.last_step_written, writer=writer.status.state)
    if final:
        steps = trainer.metrics()["step"]
        line.update(stored_first=int(steps.iloc[0]), stored_last=int(steps.iloc[-1]), stored=len(steps))
    print(json.dumps(line), flush=True)


def main():
    path, pace = sys.argv[1], float(sys.argv[2])
    trainer = Trainer(task="seed", database=RunDatabase(path))
    trainer.set_max_steps_per_second(pace)
    trainer.start()
    stdin_closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stdin_closed.set()), daemon=True).start()
    while not stdin_closed.wait(0.1):
        report(trainer)
    trainer.stop(timeout=10.0)
    report(trainer, final=True)


if __name__ == "__main__":
    main()
