"""The character-level LSTM (examples/tasks/char_lstm.py) against Keras `fit` (issue #9).

Four contenders, measured interleaved like `benchmarks.throughput`: Keras `fit` with the
optimizer's `global_clipnorm` as usually written, `fit` tuned (`steps_per_execution`, XLA), and
Clipwatch with full monitoring reading the same windows from memory (batches gathered
in-graph) and streamed (the same arrays as a `tf.data.Dataset`, which Clipwatch shuffles,
batches, repeats and prefetches). All train the same model, batch size and seed; the data is
the example's first `WINDOWS` windows, so one of `fit`'s epochs stays a few seconds long.
"""

from __future__ import annotations

import dataclasses

from benchmarks.throughput import (
    KERAS_DEFAULT, KERAS_TUNED, MONITORED, KerasFit, Log, TrainerRun, ratios, warm_up_all,
    measure_interleaved, summarize,
)  # fmt: skip

STREAMED = "Clipwatch, full monitoring, streamed"
XLA = "Clipwatch, full monitoring, XLA"
WINDOWS = 1024  # 32 batches of 32 per fit epoch
PLUGIN = "examples/tasks/char_lstm.py"
MIN_TUNED_RATIO = 1.0  # Clipwatch with every step recorded >= the tuned fit
MIN_STREAMED_SHARE = 0.8  # streamed within 20% of in-memory


def _register_variants() -> tuple[str, str, str]:
    """The example with a smaller window count, in memory (without XLA, the example's
    setting, and with XLA) and streamed, registered by name."""
    import tensorflow as tf

    from training import plugins

    task = plugins.load_task(str(plugins.EXAMPLES_FOLDER / "char_lstm.py"))

    def windows(seed):
        inputs, targets = task.make_data(seed)
        return inputs[:WINDOWS], targets[:WINDOWS]

    in_memory = dataclasses.replace(task, name="char_lstm_benchmark", make_data=windows, make_validation_data=None)
    streamed = dataclasses.replace(
        in_memory,
        name="char_lstm_benchmark_streamed",
        make_data=lambda seed: tf.data.Dataset.from_tensor_slices(windows(seed)),
    )
    with_xla = dataclasses.replace(in_memory, name="char_lstm_benchmark_xla", jit_compile=True)
    for variant in (in_memory, streamed, with_xla):
        plugins.register(variant)
    return in_memory.name, streamed.name, with_xla.name


def run_char_lstm(repeats: int, window_seconds: float, warm_up_seconds: float, log: Log, seed: int = 0) -> dict:
    from training.tasks import get_task

    in_memory, streamed, with_xla = _register_variants()
    task = get_task(in_memory)
    trainers = [
        TrainerRun(MONITORED, in_memory, None, seed),
        TrainerRun(STREAMED, streamed, None, seed),
        TrainerRun(XLA, with_xla, None, seed),
    ]
    for trainer in trainers:
        trainer.min_chunks = 3
        trainer.start()
    contenders = [
        KerasFit(KERAS_DEFAULT, in_memory, task.batch_size, seed, tuned=False),
        KerasFit(KERAS_TUNED, in_memory, task.batch_size, seed, tuned=True),
        *trainers,
    ]
    try:
        warm_up_all(contenders, warm_up_seconds, 900.0, log)
        samples = measure_interleaved(contenders, repeats, window_seconds, log)
        chunk_steps = {trainer.label: trainer.trainer.status.chunk_steps for trainer in trainers}
    finally:
        for contender in contenders:
            contender.close()
    rows = {label: summarize(values) for label, values in samples.items()}
    ratios(rows, {"vs_fit_default": KERAS_DEFAULT, "vs_fit_tuned": KERAS_TUNED, "vs_in_memory": MONITORED})
    for label, steps in chunk_steps.items():
        rows[label]["chunk_steps"] = steps
    return {
        "task": "char_lstm",
        "windows": WINDOWS,
        "batch_size": task.batch_size,
        "jit_compile": task.jit_compile,
        "repeats": repeats,
        "window_seconds": window_seconds,
        "rows": rows,
    }


def char_lstm_targets(section: dict, at_least) -> list[dict]:
    rows = section.get("rows", {})
    targets = []
    if MONITORED in rows and KERAS_TUNED in rows:
        targets.append(at_least("char_lstm, full monitoring >= tuned fit", rows[MONITORED]["vs_fit_tuned"], MIN_TUNED_RATIO))
    if STREAMED in rows and MONITORED in rows:
        targets.append(at_least("char_lstm, streamed >= 80% of in-memory", rows[STREAMED]["vs_in_memory"], MIN_STREAMED_SHARE))
    return targets


def char_lstm_lines(section: dict, table, ratio) -> list[str]:
    header = ["contender", "median steps/s", "min", "max", "x fit default", "x tuned fit", "x in-memory"]
    rows = [
        [label, f"{row['median']:,.1f}", f"{row['min']:,.1f}", f"{row['max']:,.1f}",
         ratio(row["vs_fit_default"]), ratio(row["vs_fit_tuned"]), ratio(row["vs_in_memory"])]
        for label, row in section["rows"].items()
    ]  # fmt: skip
    return [
        f"Character LSTM ({PLUGIN}, first {section['windows']} windows, batch "
        f"{section['batch_size']}, XLA: {section['jit_compile']}; {section['repeats']} repeats x "
        f"{section['window_seconds']:g} s)",
        *table(header, rows, right={1, 2, 3, 4, 5, 6}),
    ]
