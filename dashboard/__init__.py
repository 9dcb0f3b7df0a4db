"""Clipwatch's Streamlit dashboard: one module, one job.

* `page`: the page's entry point, `render()`: sidebar, header and the four tabs.
* `controls`: the sidebar: the run's controls and buttons, the view options, their callbacks.
  `control_state` (what each control shows, its widget key and refusal), `control_commands`
  (the one callback helper: validate -> send -> report; the button guard), `number_fields`
  (number text in, a number out) and `database_setting` (the database path) are re-exported there.
* `operator_controls`: the sidebar's operator-key field, the view-only note, the open-server warning.
* `access`: who may steer the shared run: viewers, and an operator when a key is configured.
* `live_view`: the Live tab: the current run's charts in a timed fragment, its advisor, exports.
* `attached_view`: the Live view of a run another process records (a script with LiveClipping).
* `race_view`: the A/B race tab: two runs overlaid, each steerable on its own.
* `history_view`: the History and Compare tabs: recorded runs, read back from the database.
* `panels`: widgets the tabs share: bordered panels, the advisor's readout, export buttons.
* `charts`: how one run's charts look: pure Altair builders from DataFrames (no Streamlit, no TensorFlow).
  `chart_frames` (the rows each chart draws), `event_frames` (the commands table and the loss
  chart's rules) and `readouts` (headline, what-if, suggested threshold) are re-exported there.
* `chart_specs`: the live charts as Vega-Lite dicts filled into cached templates (no Altair per refresh).
* `shared_charts`: the live charts built once per store change and shared by every session.
* `comparison`: pure builders of charts over several runs (Compare, the race, History's table).
* `advice`: pure builders of the threshold advisor's ghost lines and sentences.
* `export`: runs and charts as CSV, Parquet, PNG, SVG and a self-contained HTML report.
* `run_manager`: the one shared `RunManager` (`get_run_manager()`) composing the three below.
* `live_run`: the live run: one trainer, its commands and its snapshot.
* `race`: the A/B race: two trainers started at once, steered one side at a time.
* `run_library`: the run database setting, recorded runs and the advisor's replays.
* `runtime`: keeps Streamlit's after-each-run Keras/GC clean-up off the training threads.

`live_run`, `race` and `run_library` are the glue: the only modules that hold trainers or the
database (and so run TensorFlow). The views import training's plain names (tasks, policies,
validators) from where `training` defines them.
"""
