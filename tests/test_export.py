"""Exports: metrics round-trip through CSV and Parquet, charts render to PNG and SVG, and the HTML
report stands alone (config, events, and the charts' JavaScript inlined).

The metrics come from a real short run of the seed task (one Trainer for the module).
"""

from __future__ import annotations

import io
import re
import struct
import xml.etree.ElementTree as ElementTree

import pandas as pd
import pytest

from dashboard import charts, export, panels
from training import Trainer

from support import wait_until

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def finished_run():
    """A real run of the seed task of at least 400 steps with one threshold change mid-run:
    (metrics, events, view, layer view). Unbounded and stopped by the fixture, so the change
    can never arrive after the run has ended, however loaded the machine."""
    trainer = Trainer(task="seed", policy="global_norm", clip_threshold=0.5)
    trainer.set_max_steps_per_second(1000)
    trainer.start()
    try:
        wait_until(lambda: trainer.status.step >= 100, timeout=120, what="100 steps")
        trainer.set_clip_threshold(0.25)
        wait_until(lambda: trainer.status.step >= 400, timeout=120, what="400 steps")
    finally:
        trainer.stop()
    assert trainer.status.state == "stopped", trainer.status
    view, layer_view = trainer.store.view()
    return trainer.metrics(), trainer.events(), view, layer_view


def test_csv_round_trips_to_the_same_frame(finished_run):
    metrics = finished_run[0]
    assert isinstance(metrics["policy"].dtype, pd.CategoricalDtype)  # the store's own types
    data = export.metrics_csv(metrics)
    expected = export.export_frame(metrics)
    read = pd.read_csv(io.BytesIO(data))
    assert list(read.columns) == list(metrics.columns)
    # Every value comes back exactly once read into the original column types.
    pd.testing.assert_frame_equal(read.astype(expected.dtypes.to_dict()), expected)
    assert len(read) >= 400
    assert read["policy"].tolist() == ["global_norm"] * len(read)
    assert read["step"].tolist() == list(range(1, len(read) + 1))


def test_parquet_round_trips_to_the_same_frame_and_types(finished_run):
    metrics = finished_run[0]
    read = pd.read_parquet(io.BytesIO(export.metrics_parquet(metrics)))
    pd.testing.assert_frame_equal(read, export.export_frame(metrics))  # dtypes included
    assert str(read["loss"].dtype) == "float32" and str(read["clipped"].dtype) == "bool"


def test_exports_refuse_what_is_not_a_metrics_frame():
    with pytest.raises(ValueError, match="Received: list"):
        export.metrics_csv([1, 2, 3])
    with pytest.raises(ValueError, match=r"Received columns: \['loss'\]"):
        export.metrics_parquet(pd.DataFrame({"loss": [1.0]}))
    with pytest.raises(ValueError, match="Received: DataFrame"):
        export.chart_png(pd.DataFrame({"step": [1]}))


def test_a_chart_exports_as_png_and_as_svg(finished_run):
    view = finished_run[2]
    chart = charts.gradient_norm_chart(view)
    png = export.chart_png(chart)
    assert png[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert width >= 2 * export.EXPORT_WIDTH and height >= 2 * 340  # drawn at scale 2

    svg = export.chart_svg(chart)
    root = ElementTree.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    paths = root.findall(".//{http://www.w3.org/2000/svg}path")
    assert len(paths) > 5  # the lines, the band, the axes: marks were drawn
    assert "Gradient norm (global L2)" in svg


def test_the_html_report_is_self_contained(finished_run):
    metrics, events, view, layer_view = finished_run
    figures = panels.run_figures(view, layer_view, events)
    report = export.html_report(
        title="baseline <b>run</b>",
        config={"Task": "seed", "Policy": "global_norm", "Clip threshold": 0.5, "Seed": 0},
        summary={"Steps": 400, "Final loss": float(metrics["loss"].iloc[-1])},
        charts=figures,
        events=charts.events_table(events),
    )
    # The config and the summary.
    assert "<th>Task</th><td>seed</td>" in report
    assert "<th>Clip threshold</th><td>0.5</td>" in report
    assert "<th>Steps</th><td>400</td>" in report
    # The events, with the threshold change and its old and new values.
    change = re.search(r"<tr><td>(\d+)</td><td>[0-9:]+</td><td>clip_threshold</td><td>0.5</td><td>0.25</td></tr>", report)
    assert change, "the clip_threshold event row is missing"
    assert int(change.group(1)) == int(events.query("kind == 'clip_threshold'")["step"].iloc[0])
    # The charts: one element and one vegaEmbed call each, with the JavaScript inlined.
    for index in range(len(figures)):
        assert f'<div class="chart" id="chart-{index}"></div>' in report
        assert f"vegaEmbed('#chart-{index}'" in report
    assert len(report) > 500_000  # Vega, Vega-Lite and Vega-Embed are in the page itself
    assert re.search(r"<script[^>]*\bsrc\s*=", report) is None  # nothing is fetched
    assert re.search(r"""(src|href)\s*=\s*["']https?://""", report) is None
    # Text from the run is escaped, never markup.
    assert "baseline &lt;b&gt;run&lt;/b&gt;" in report and "<b>run</b>" not in report


def test_a_chart_spec_cannot_close_the_reports_script_early():
    frame = pd.DataFrame({"step": [1, 2], "loss": [1.0, 2.0], "label": ["</script><script>x()", "a"]})
    chart = charts.alt.Chart(frame).mark_text().encode(x="step:Q", y="loss:Q", text="label:N")
    report = export.html_report("t", {}, {}, {"Labels": chart}, pd.DataFrame({"Step": []}))
    assert "</script><script>x()" not in report
    assert "<\\/script><script>x()" in report  # still the same string once parsed as JSON
