"""Reports from run records alone: records as rows and one summary row per configuration (``frame``),
per-task tables (``table``), the gap to the best row with a
confidence interval (``stats``), the summary across tasks (``overview``), plots (``plots``) and one
self-contained HTML page (``page``)."""

from .frame import CSV_COLUMNS, duplicate_seeds, records_frame, record_row, summarize  # noqa: F401
from .table import display_frame, render, to_html, to_latex, to_markdown  # noqa: F401
from . import overview, page, plots  # noqa: F401
from .plots import plot  # noqa: F401


def record_folders(path):
    """``path`` (a run's --out folder or its records/) and every run folder below it; learning-rate
    search runs (``search/records``) stay out of the tables."""
    from pathlib import Path

    path = Path(path)
    below = sorted(p.parent for p in path.rglob("records")
                   if p.is_dir() and p.parent != path and p.parent.name != "search")
    if (path / "records").is_dir() or (not below and any(path.glob("*.json"))):  # a run folder, or records/ itself
        return [path, *below]
    return below
