"""Clipwatch's Streamlit dashboard.

* `charts` builds every chart from DataFrames with pure functions (no Streamlit, no TensorFlow).
* `run_manager` is the glue: the one shared run, held through `st.cache_resource`, that every
  browser tab watches and steers. It is the only module here that imports `training`.
* `page` draws the widgets and the layout, reads snapshots and sends commands.
"""
