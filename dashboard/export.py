"""Exports of a run: per-step metrics as CSV and Parquet, a sweep's table as CSV, charts as PNG and SVG, a report as HTML.

Pure functions that return bytes or text (no Streamlit, no TensorFlow), so every export can be
checked in a unit test and handed to `st.download_button` as it is. Charts are rendered by
vl-convert, which needs neither a browser nor a network connection; the HTML report inlines the
Vega, Vega-Lite and Vega-Embed JavaScript, so it opens offline and keeps the charts interactive.
"""

from __future__ import annotations

import datetime
import functools
import html
import io
import json
import math
from typing import Any, Mapping

import altair as alt
import numpy as np
import pandas as pd
import vl_convert

from dashboard import fork_charts

EXPORT_WIDTH = 900  # pixels; charts on the page stretch to their column, a file needs a size
PNG_SCALE = 2  # sharp on high-density screens and in slides
REQUIRED_METRIC_COLUMNS = ("step",)


def _vega_lite_version() -> str:
    """The Vega-Lite version Altair writes its specs for, in vl-convert's spelling ("v6_4")."""
    from altair.utils._importers import vl_version_for_vl_convert

    return vl_version_for_vl_convert()


# --- per-step metrics ----------------------------------------------------------------------------


def export_frame(metrics: pd.DataFrame) -> pd.DataFrame:
    """`metrics` as written to a file: one row per step, the policy as plain text.

    The live store hands out `policy` as a category and the database as text; files get text
    either way, so a CSV and a Parquet export of the same run read back the same.
    """
    if not isinstance(metrics, pd.DataFrame):
        raise ValueError(
            f"Exports take a pandas DataFrame of per-step metrics. Received: {type(metrics).__name__}"
        )
    missing = [column for column in REQUIRED_METRIC_COLUMNS if column not in metrics.columns]
    if missing:
        raise ValueError(
            f"Per-step metrics need the columns {list(REQUIRED_METRIC_COLUMNS)}. Received columns: "
            f"{list(metrics.columns)}"
        )
    frame = metrics.reset_index(drop=True).copy()
    if "policy" in frame:
        frame["policy"] = frame["policy"].astype(str)  # pandas' own text type, as files read back
    return frame


def metrics_csv(metrics: pd.DataFrame) -> bytes:
    """Every row of `metrics` as UTF-8 CSV with a header line (floats written to round-trip)."""
    return export_frame(metrics).to_csv(index=False).encode("utf-8")


def metrics_parquet(metrics: pd.DataFrame) -> bytes:
    """Every row of `metrics` as a Parquet file (column types kept exactly)."""
    buffer = io.BytesIO()
    export_frame(metrics).to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()


SWEEP_COLUMNS = ("sweep_id", "fork_step", "clip_threshold", "run_id", "branch_id", "final_loss", "mean_loss",
                 "clip_rate", "within_noise", "best", "noise_floor", "baseline_mean_loss")  # fmt: skip


def sweep_csv(result: Mapping[str, Any]) -> bytes:
    """A finished sweep (`Trainer.sweep_result`) as UTF-8 CSV: one row per threshold, in the
    order swept, with the sweep's noise floor and baseline repeated on each row so a row read
    alone still says whether its threshold beat the run's own noise. ValueError for a sweep
    still waiting or running (its losses are not known yet)."""
    rows = list(result.get("sweep") or [])
    if not result.get("done") or not rows:
        raise ValueError(
            f"sweep {result.get('sweep_id')!r} is not finished (done={result.get('done')!r}, "
            f"{len(rows)} thresholds): only a finished sweep can be exported"
        )
    table = fork_charts.sweep_frame(result).assign(
        sweep_id=result.get("sweep_id"),
        fork_step=result.get("fork_step"),
        run_id=pd.array([row.get("run_id") for row in rows], dtype="Int64"),  # none without a database
        within_noise=[bool(row.get("within_noise")) for row in rows],
        # As trained: a diverged branch's inf stays inf here (the chart's frame drops it).
        final_loss=[float(row["final_loss"]) for row in rows],
        mean_loss=[float(row["mean_loss"]) for row in rows],
        noise_floor=result.get("noise_floor"),
        baseline_mean_loss=result.get("baseline_mean_loss"),
    )
    frame = table[list(SWEEP_COLUMNS)]
    return frame.to_csv(index=False).encode("utf-8")


# --- charts --------------------------------------------------------------------------------------


def chart_spec(chart: alt.TopLevelMixin, width: int = EXPORT_WIDTH) -> dict[str, Any]:
    """The Vega-Lite spec of `chart` with a fixed width (on the page it stretches instead)."""
    if not isinstance(chart, alt.TopLevelMixin):
        raise ValueError(f"Exports take an Altair chart. Received: {type(chart).__name__}")
    spec = chart.to_dict()
    if spec.get("width") in (None, "container"):
        if "hconcat" not in spec and "vconcat" not in spec and "concat" not in spec:
            spec["width"] = width
    spec.setdefault("background", "white")
    return spec


def chart_png(chart: alt.TopLevelMixin, scale: float = PNG_SCALE) -> bytes:
    """`chart` as a PNG image, `scale` times its size in pixels."""
    return vl_convert.vegalite_to_png(chart_spec(chart), scale=scale, vl_version=_vega_lite_version())


def chart_svg(chart: alt.TopLevelMixin) -> str:
    """`chart` as an SVG document."""
    return vl_convert.vegalite_to_svg(chart_spec(chart), vl_version=_vega_lite_version())


# --- the HTML report -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _javascript_bundle() -> str:
    """Vega, Vega-Lite and Vega-Embed in one script that sets `window.vegaEmbed` (about 1 MB)."""
    return vl_convert.javascript_bundle(vl_version=_vega_lite_version())


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return "–" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (dict, list, tuple)):
        return html.escape(json.dumps(value, sort_keys=True, default=str))
    return html.escape(str(value))


def _key_value_table(rows: Mapping[str, Any], css_class: str) -> str:
    body = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{_cell(value)}</td></tr>" for key, value in rows.items()
    )
    return f'<table class="{css_class}">{body}</table>'


def _frame_table(frame: pd.DataFrame, css_class: str) -> str:
    if len(frame) == 0:
        return f'<p class="{css_class} empty">None.</p>'
    head = "".join(f"<th>{html.escape(str(column))}</th>" for column in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(value)}</td>" for value in row) + "</tr>"
        for row in frame.itertuples(index=False, name=None)
    )
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element (no "</script>" can close it early)."""
    return json.dumps(value, allow_nan=False).replace("</", "<\\/").replace("<!--", "<\\!--")


_REPORT_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1000px; color: #262730; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } .generated { color: #6b6b7b; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #d6d6de; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f7; }
.chart { margin: 0.5rem 0 1.5rem; } .vega-embed { width: 100%; }
"""


def html_report(
    title: str,
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    charts: Mapping[str, alt.TopLevelMixin],
    events: pd.DataFrame,
    generated_at: datetime.datetime | None = None,
) -> str:
    """One self-contained HTML page about a run: config, summary numbers, charts and events.

    Args:
        title: the page's heading (e.g. the run's name).
        config: what the run was started with, shown as a two-column table.
        summary: the final numbers (steps, final loss, clip rate, ...), shown the same way.
        charts: heading -> Altair chart; each is drawn interactively by the inlined Vega-Embed.
        events: the run's events table (its columns become the table's header).
        generated_at: the time printed under the heading (default: now).

    Returns:
        The HTML document as text. It loads nothing from the network: the JavaScript that draws
        the charts is inlined.
    """
    if not isinstance(events, pd.DataFrame):
        raise ValueError(f"`events` must be a pandas DataFrame. Received: {type(events).__name__}")
    generated_at = generated_at or datetime.datetime.now()
    specs = {f"chart-{index}": chart_spec(chart) for index, chart in enumerate(charts.values())}
    chart_sections = "".join(
        f'<h3>{html.escape(str(name))}</h3><div class="chart" id="{element_id}"></div>'
        for name, element_id in zip(charts, specs)
    )
    embed_calls = "\n".join(
        f"vegaEmbed('#{element_id}', {_script_json(spec)}, {{renderer: 'svg', actions: false}})"
        ".catch(function (error) { document.getElementById('" + element_id + "').textContent = "
        "'This chart could not be drawn: ' + error; });"
        for element_id, spec in specs.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_REPORT_STYLE}</style>
<script type="text/javascript">
{_javascript_bundle()}
</script>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="generated">Clipwatch report, generated {generated_at:%Y-%m-%d %H:%M:%S}.</p>
<h2>Configuration</h2>
{_key_value_table(config, "config")}
<h2>Summary</h2>
{_key_value_table(summary, "summary")}
<h2>Charts</h2>
{chart_sections}
<h2>Events</h2>
{_frame_table(events, "events")}
<script type="text/javascript">
{embed_calls}
</script>
</body>
</html>
"""


__all__ = [
    "chart_png",
    "chart_spec",
    "chart_svg",
    "export_frame",
    "html_report",
    "metrics_csv",
    "metrics_parquet",
]
