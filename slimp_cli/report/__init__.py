"""One-page reports (`slimp report`): a self-contained HTML page for a run and its stores, and
the same kind of page for benchmark tables (`render_tables_page`). The app layer: it reads run
dirs and stores and calls the evaluation functions; nothing below imports it."""

from .html import external_references, render_tables_page
from .run_report import build_run_report, write_run_report

__all__ = ["build_run_report", "write_run_report", "render_tables_page", "external_references"]
