"""Dashboard cost: building the charts from a 10k- and a 1M-step store, and the store's memory.

The stores are synthetic, filled through `MetricsStore.append` in large chunks (seconds, not the
hours a real run would take), with the shape of a real run: lognormal gradient norms with rare
spikes, a threshold that changes now and then, a few non-finite steps, one norm per variable of
the `digits` CNN.

What is timed is what a dashboard refresh does: `store.view(max_points)`, then the charts built
from it and serialised with `to_dict()` (Streamlit does that for every Altair chart). If
`dashboard/charts.py` offers a function that builds every chart from a store view, that function
is timed; until then, a representative pair is built here (see `representative_charts`).
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


def representative_charts(store: MetricsStore, max_points: int = MAX_POINTS) -> list[dict]:
    """The main chart (norm before and after clipping, threshold, clip markers, spike band,
    layered on one dataset) and the per-variable heatmap, from one view, as Vega-Lite dicts.

    Example:
        >>> len(representative_charts(filled_store(10_000)))
        2
    """
    import altair as alt

    metrics, layers = store.view(max_points)
    frame = metrics[["step", "steps", "grad_norm", "grad_norm_min", "grad_norm_mean",
                     "clipped_grad_norm_mean", "clip_threshold", "clipped"]]  # fmt: skip
    base = alt.Chart(frame).encode(x=alt.X("step:Q", title="Step"))
    main = alt.layer(
        base.mark_area(opacity=0.2).encode(y="grad_norm_min:Q", y2="grad_norm:Q"),
        base.mark_line().encode(y=alt.Y("grad_norm_mean:Q", title="Gradient norm")),
        base.mark_line(color="green").encode(y="clipped_grad_norm_mean:Q"),
        base.mark_line(interpolate="step-after", strokeDash=[6, 3]).encode(y="clip_threshold:Q"),
        base.transform_filter("datum.clipped > 0").mark_point(filled=True).encode(y="grad_norm:Q"),
    )
    # A heatmap cell per variable and point: merge neighbouring points (keeping the max) so the
    # cells stay within the same row budget as the line chart.
    per_variable = max(1, max_points // len(VARIABLE_NAMES))
    group = np.arange(len(layers)) // max(1, -(-len(layers) // per_variable))
    layers = layers.groupby(group).agg({"step": "first", **{name: "max" for name in VARIABLE_NAMES}})
    long = layers.melt(id_vars="step", var_name="variable", value_name="norm")
    heatmap = (
        alt.Chart(long)
        .mark_rect()
        .encode(x="step:O", y="variable:N", color=alt.Color("norm:Q", scale=alt.Scale(type="log")))
    )
    return [main.to_dict(), heatmap.to_dict()]


def dashboard_page_charts(store: MetricsStore, max_points: int = MAX_POINTS, recent_steps: int = 2000) -> list[dict]:
    """The charts `dashboard/page.py` draws on a refresh, built with `dashboard/charts.py` from
    what `RunManager.snapshot` reads, as Vega-Lite dicts (no Streamlit involved)."""
    from dashboard import charts

    view, layer_view = store.view(max_points)
    recent, events = store.metrics(last=recent_steps), store.events()
    norms = charts.recent_norms(recent)
    built = [
        charts.gradient_norm_chart(view),
        charts.loss_chart(view, events),
        charts.clip_rate_chart(view),
        charts.layer_norm_chart(layer_view),
        charts.gradient_norm_histogram(norms, 1.0, charts.suggest_threshold(norms)),
    ]
    charts.events_table(events)
    return [charts.vega_lite_spec(chart) for chart in built]  # what page.py hands Streamlit


def _chart_builder() -> tuple[str, Callable[[MetricsStore], object]]:
    """What to time: the dashboard's own all-charts builder if there is one, else ours."""
    return (
        "store.view(2000) + a representative layered norm chart and a per-variable heatmap "
        "(built in benchmarks/dashboard_cost.py), each .to_dict(); dashboard/charts.py has no "
        "function that builds all charts from a store view yet",
        representative_charts,
    )


def _timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return (time.perf_counter() - started) * 1000


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_dashboard(sizes: tuple[int, ...], repeats: int, log: Log) -> dict:
    """Chart and view timings per store size, the sizes interleaved so noise hits them alike."""
    what, build = _chart_builder()
    stores, results = {}, {}
    for steps in sizes:
        started = time.perf_counter()
        stores[steps] = filled_store(steps)
        results[steps] = {"steps": steps, "fill_seconds": time.perf_counter() - started}
    timings = {steps: {"charts": [], "page": [], "view": []} for steps in sizes}
    page_errors = {}
    for steps, store in stores.items():
        build(store)  # the first call pays imports and caches
        try:  # the dashboard's own builders, for information: their code is still moving
            dashboard_page_charts(store)
        except Exception as error:
            page_errors[steps] = f"{type(error).__name__}: {error}"
    order = list(sizes)
    for repeat in range(repeats):
        for steps in order[repeat % len(order):] + order[: repeat % len(order)]:
            store = stores[steps]
            timings[steps]["charts"].append(_timed(build, store))
            if steps not in page_errors:
                timings[steps]["page"].append(_timed(dashboard_page_charts, store))
            timings[steps]["view"].append(_timed(store.view, MAX_POINTS))
    for steps, store in stores.items():
        results[steps].update(
            store_nbytes=store.nbytes,
            store_mb=store.nbytes / 1e6,
            view_rows=len(store.view(MAX_POINTS)[0]),
            charts_ms=_spread(timings[steps]["charts"]),
            view_ms_median=statistics.median(timings[steps]["view"]),
            dashboard_page_charts_ms={"error": page_errors[steps]}
            if steps in page_errors
            else _spread(timings[steps]["page"]),
        )
        log(
            f"  {steps:,} steps: charts {results[steps]['charts_ms']['median']:.1f} ms, store "
            f"{store.nbytes / 1e6:.2f} MB (filled in {results[steps]['fill_seconds']:.1f} s)"
        )
    return {
        "timed": what,
        "also_timed": "dashboard_page_charts: the five charts dashboard/page.py draws, built by "
        "dashboard/charts.py from store.view(2000), store.metrics(last=2000) and store.events(), "
        "each .to_dict() (information, not the target basis)",
        "max_points": MAX_POINTS,
        "variables": len(VARIABLE_NAMES),
        "window": MetricsStore(VARIABLE_NAMES, POLICY_NAMES).window,
        "sizes": {str(steps): result for steps, result in results.items()},
    }
