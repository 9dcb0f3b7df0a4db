"""Dashboard cost: building the charts from a 10k- and a 1M-step store, and the store's memory.

The stores are synthetic, filled through `MetricsStore.append` in large chunks (seconds, not the
hours a real run would take), with the shape of a real run: lognormal gradient norms with rare
spikes, a threshold that changes now and then, a few non-finite steps, one norm per variable of
the `digits` CNN.

What is timed is what a dashboard refresh does (`dashboard_page_charts`): read the store as
`RunManager.snapshot` does, build the five charts the Live tab (`dashboard/live_view.py`) draws with
`dashboard/charts.py`, and turn each into the Vega-Lite spec the page hands to Streamlit.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

from training.policies import POLICY_NAMES
from training.store import MetricsStore

MAX_POINTS = 2000
APPEND_CHUNK_STEPS = 50_000
# The digits CNN's trainable variables: the heaviest layer chart of the bundled tasks.
VARIABLE_NAMES = [
    f"{layer}/{kind}" for layer in ("conv1", "conv2", "dense", "logits") for kind in ("kernel", "bias")
]
Log = Callable[[str], None]


def synthetic_rows(first_step: int, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`count` steps of a plausible run, starting after `first_step`."""
    step = np.arange(first_step + 1, first_step + count + 1, dtype=np.int64)
    grad_norm = rng.lognormal(mean=-0.5, sigma=0.4, size=count)
    spikes = rng.random(count) < 1e-3
    grad_norm[spikes] *= rng.uniform(10, 1000, size=int(spikes.sum()))
    clip_threshold = np.where((step // 100_000) % 2 == 0, 1.0, 0.5)
    finite = rng.random(count) > 1e-5
    return {
        "step": step,
        "time_s": 1.7e9 + step * 2e-5,
        "loss": 0.3 + 0.7 * np.exp(-step / 2e5) + rng.normal(0.0, 0.02, count),
        "grad_norm": grad_norm,
        "clipped_grad_norm": np.minimum(grad_norm, clip_threshold),
        "clip_threshold": clip_threshold,
        "clipped": grad_norm > clip_threshold,
        "finite": finite,
        "learning_rate": np.full(count, 1e-3),
        "policy": np.full(count, POLICY_NAMES.index("global_norm"), np.int8),
        "layer_norms": rng.lognormal(-1.5, 0.5, size=(count, len(VARIABLE_NAMES))),
    }


def filled_store(steps: int, seed: int = 0) -> MetricsStore:
    """A store with the default window (the trainer's) that has seen `steps` steps."""
    rng = np.random.default_rng(seed)
    store = MetricsStore(VARIABLE_NAMES, POLICY_NAMES)
    store.record_event(0, "start", None, "global_norm")
    for first in range(0, steps, APPEND_CHUNK_STEPS):
        store.append(synthetic_rows(first, min(APPEND_CHUNK_STEPS, steps - first), rng))
        if first and first % 100_000 == 0:
            store.record_event(first, "clip_threshold", 1.0, 0.5)
    return store


def dashboard_page_charts(
    store: MetricsStore, max_points: int = MAX_POINTS, recent_steps: int = 2000, direct: bool = True
) -> list[dict]:
    """What a refresh of the Live tab (`dashboard/live_view.py`) computes: the store read as `RunManager.snapshot`
    reads it, the five charts and their what-if readouts, each as the Vega-Lite spec the page
    hands to `st.vega_lite_chart` (no Streamlit involved). `direct`: the specs filled into cached
    templates (`dashboard/chart_specs.py`, what the page draws since issue #11); False: built
    through Altair objects (`dashboard/charts.py` + `to_dict`, as before), for comparison.

    Example:
        >>> len(dashboard_page_charts(filled_store(10_000)))
        5
    """
    from dashboard import chart_specs, charts

    view, layer_view = store.view(max_points)
    recent, events = store.metrics(last=recent_steps), store.events()
    norms = charts.recent_norms(recent)
    clip_threshold, suggested = 1.0, charts.suggest_threshold(norms)
    charts.what_if(norms, clip_threshold)
    if suggested is not None:
        charts.what_if(norms, suggested)
    if direct:
        gradient_norm, loss, clip_rate, layer_norm, histogram = (
            chart_specs.gradient_norm_spec, chart_specs.loss_spec, chart_specs.clip_rate_spec,
            chart_specs.layer_norm_spec, chart_specs.gradient_norm_histogram_spec,
        )  # fmt: skip
    else:
        gradient_norm, loss, clip_rate, layer_norm, histogram = (
            charts.gradient_norm_chart, charts.loss_chart, charts.clip_rate_chart,
            charts.layer_norm_chart, charts.gradient_norm_histogram,
        )  # fmt: skip
    built = [
        gradient_norm(view),
        loss(view, events),
        clip_rate(view),
        layer_norm(layer_view),
        histogram(norms, clip_threshold, suggested),
    ]
    charts.events_table(events)
    return built if direct else [charts.vega_lite_spec(chart) for chart in built]


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return (time.perf_counter() - started) * 1000


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_dashboard(sizes: tuple[int, ...], repeats: int, log: Log) -> dict:
    """Chart and view timings per store size, the sizes interleaved so noise hits them alike."""
    stores, results = {}, {}
    for steps in sizes:
        started = time.perf_counter()
        stores[steps] = filled_store(steps)
        results[steps] = {"steps": steps, "fill_seconds": time.perf_counter() - started}
        dashboard_page_charts(stores[steps])  # the first call pays imports and caches
        dashboard_page_charts(stores[steps], direct=False)
    timings = {steps: {"charts": [], "altair": [], "view": []} for steps in sizes}
    order = list(sizes)
    for repeat in range(repeats):
        for steps in order[repeat % len(order):] + order[: repeat % len(order)]:
            store = stores[steps]
            timings[steps]["charts"].append(timed(dashboard_page_charts, store))
            timings[steps]["altair"].append(timed(dashboard_page_charts, store, MAX_POINTS, 2000, False))
            timings[steps]["view"].append(timed(store.view, MAX_POINTS))
    for steps, store in stores.items():
        results[steps].update(
            store_nbytes=store.nbytes,
            store_mb=store.nbytes / 1e6,
            view_rows=len(store.view(MAX_POINTS)[0]),
            charts_ms=_spread(timings[steps]["charts"]),
            altair_charts_ms=_spread(timings[steps]["altair"]),
            direct_vs_altair=statistics.median(
                direct / altair for direct, altair in zip(timings[steps]["charts"], timings[steps]["altair"])
            ),
            view_ms_median=statistics.median(timings[steps]["view"]),
        )
        log(
            f"  {steps:,} steps: charts {results[steps]['charts_ms']['median']:.1f} ms (through Altair "
            f"{results[steps]['altair_charts_ms']['median']:.1f} ms), store "
            f"{store.nbytes / 1e6:.2f} MB (filled in {results[steps]['fill_seconds']:.1f} s)"
        )
    return {
        "timed": "dashboard_page_charts: store.view(2000), store.metrics(last=2000) and "
        "store.events() as RunManager.snapshot reads them, then the five charts dashboard/page.py "
        "draws with their what-if readouts, each as the Vega-Lite spec the page hands to "
        "st.vega_lite_chart, filled into cached templates (dashboard/chart_specs.py); 'through "
        "Altair': the same specs built as Altair objects and to_dict (before issue #11)",
        "max_points": MAX_POINTS,
        "variables": len(VARIABLE_NAMES),
        "window": MetricsStore(VARIABLE_NAMES, POLICY_NAMES).window,
        "sizes": {str(steps): result for steps, result in results.items()},
    }
