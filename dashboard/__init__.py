"""Clipwatch's Streamlit dashboard.

* `charts` builds every chart of one run from DataFrames with pure functions (no Streamlit, no
  TensorFlow); `comparison` does the same for several runs at once (Compare, the A/B race, the
  History table), `advice` draws the threshold advisor's ghost lines, and `export` turns runs
  and charts into CSV, Parquet, PNG, SVG and a self-contained HTML report.
* `run_manager` is the glue: the one shared run and A/B race, held through `st.cache_resource`,
  that every browser tab watches and steers, plus the run database and the advisor's replays.
  It is the only module here that imports `training`.
* `page` draws the sidebar, the header and the Live tab; `race_view` the A/B race tab;
  `history_view` the History and Compare tabs; `panels` the widgets they share. They read
  snapshots and send commands.
"""
