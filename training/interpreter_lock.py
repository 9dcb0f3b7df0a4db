"""How often Python hands the GIL between threads, for the processes Clipwatch runs itself.

Why: a thread that makes many short calls into TensorFlow (tracing a step, or running chunk
after chunk) gives the GIL back on every call and must wait to take it again. When another
thread is running Python (the page's script thread drawing charts, the recorder formatting CSV),
it keeps the GIL for the whole switch interval, 5 ms by default, before it must hand it over: the
caller then waits up to 5 ms after every call. Measured on this 2-core machine, with one thread
looping in pure Python beside:

- tracing char_lstm's full step: 0.89 s alone, 19.9 s with the busy thread at 5 ms, 3.5 s at
  0.5 ms (a run's step counter stands still while its step traces);
- seed training: 18,100-22,800 steps/s with the busy thread at 5 ms, 37,700-38,100 at 0.5 ms;
  the busy thread itself did as much work at 0.5 ms (8,100-8,600 loops/s vs 8,100);
- alone, seed ran at 55,000-65,000 steps/s either way.

So the entry points Clipwatch owns (`streamlit run app.py`, `python -m training`, the
benchmark) switch ten times as often. A library call never changes it: an attached script's
process keeps its own setting.
"""

from __future__ import annotations

import sys

SWITCH_INTERVAL_SECONDS = 0.0005


def switch_threads_often() -> None:
    """Set the interpreter's switch interval to `SWITCH_INTERVAL_SECONDS` (idempotent)."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
