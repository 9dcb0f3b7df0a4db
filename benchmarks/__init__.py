"""Clipwatch's performance benchmark (issue #4): `python -m benchmarks [--quick] [--json PATH]`.

It answers one question with numbers: what does live, per-step monitoring of gradient clipping
cost, against how people train with Keras and against the same loop with monitoring off?

* `throughput` — steps per second of Keras `fit` (default and tuned), Clipwatch's compiled chunk
  loop with monitoring off (the ceiling) and with full monitoring, measured interleaved, on the
  `seed` task and on the heavier `digits` task; and every policy against `global_norm`.
* `control` — how long a `set_clip_threshold` takes to reach the recorded steps, and whether
  live changes retrace the compiled chunk.
* `dashboard_cost` — building the charts from a 10k- and a 1M-step store, and the store's memory.
* `report` — the machine line, the tables, the targets with PASS/MISS, and the JSON.

Timings are measured here and only here: tests check the structure of the output, never a speed.
"""
