"""Clipwatch's performance benchmark (issues #4 and #5): `python -m benchmarks [--quick] [--json PATH]`.

It answers one question with numbers: what does live, per-step monitoring of gradient clipping
cost, against how people train with Keras and against the same loop with monitoring off?

* `throughput` — steps per second of Keras `fit` (default and tuned), Clipwatch's compiled chunk
  loop with monitoring off (the ceiling) and with full monitoring, measured interleaved, on the
  `seed` task and on the heavier `digits` task; and every policy against `global_norm`.
* `persistence_cost` — steps per second of the seed trainer with full monitoring with and
  without a run database (issue #5: persistence may cost at most 5%).
* `control` — how long a `set_clip_threshold` takes to reach the recorded steps, and whether
  live changes retrace the compiled chunk.
* `dashboard_cost` — building the charts from a 10k- and a 1M-step store, and the store's memory.
* `report` — the machine line, the tables, the targets with PASS/MISS, and the JSON.

Timings are measured here and only here: tests check the structure of the output, never a speed.
"""
