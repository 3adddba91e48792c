"""The app layer: scripted runs over the whole library and the pages a person reads.

- `demo.py`: `slimp demo`, the pipeline (synth -> ingest -> pretrain -> embed -> probe ->
  retrieve -> extrapolate) on generated cohorts, on a CPU, in a minute.
- `run_report.py`: `slimp report`, a run dir + its stores + explain output -> one
  self-contained HTML page (`build_run_report`, `write_run_report`).
- `html.py`: the page parts (inline PNGs, tables, the CSP, `external_references`) and
  `render_tables_page` for benchmark tables.

It reads run dirs and stores and calls the evaluation functions; only the CLI imports it.
"""
