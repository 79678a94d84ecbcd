"""One self-contained HTML page: the summary across tasks, a sortable table per task and the plots
inline (PNG as data URIs); no network, no external script."""

from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path

import pandas as pd

from . import overview, plots, table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #f4f4f4; cursor: pointer; user-select: none; }
th.sorted-asc::after { content: " ▲"; } th.sorted-desc::after { content: " ▼"; }
p.note { font-size: 12px; color: #555; max-width: 75em; }
img { max-width: 100%; border: 1px solid #eee; }
"""

# click a header to sort by it (numbers by their leading value, a metric cell by its value, text
# alphabetically); again to reverse
SCRIPT = """
function cellValue(td) {
  // a metric cell ("accuracy ↑ 0.8477") sorts by its number
  const t = td.textContent.trim().replace(/,/g, "").replace(/^[^\\d+-]*[↑↓]\\s*/, "");
  const m = t.match(/^[+-]?\\d+(\\.\\d+)?(e[+-]?\\d+)?/i);
  if (!m) return t.toLowerCase();
  const scale = {k: 1e3, M: 1e6, B: 1e9}[t.charAt(m[0].length)] || 1;
  return parseFloat(m[0]) * scale;
}
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      const body = table.tBodies[0];
      const asc = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach(h => h.classList.remove("sorted-asc", "sorted-desc"));
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      const rows = Array.from(body.rows);
      rows.sort(function (a, b) {
        const x = cellValue(a.cells[col]), y = cellValue(b.cells[col]);
        const empty = (x === "") - (y === "");
        if (empty) return empty;
        if (typeof x === typeof y) return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        return typeof x === "number" ? -1 : 1;
      });
      rows.forEach(r => body.appendChild(r));
    });
  });
});
"""


def _png(draw, summary) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plot.png"
        draw(summary, path)
        return base64.b64encode(path.read_bytes()).decode()


def _notes(markdown: str) -> str:
    """The caption lines of a Markdown table (after the table itself), as paragraphs."""
    lines = markdown.split("\n")
    rest = [ln for ln in lines if ln and not ln.startswith("|")]
    return "".join(f'<p class="note">{html.escape(ln).replace("**", "")}</p>' for ln in rest)


def render_page(summary: pd.DataFrame, title: str = "peftbench results") -> str:
    ov = overview.overview(summary)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    tasks = list(dict.fromkeys(summary.task.dropna()))
    if len(tasks) > 1 and not ov.empty:
        disp = overview.display(ov, mark=lambda t: table.MARK + t).map(table._html_cell)
        parts += ["<h2>Summary across tasks</h2>",
                  disp.to_html(index=False, border=0, escape=False, table_id="summary", classes="sortable"),
                  _notes(overview.to_markdown(ov))]
    buf = io.StringIO()
    for task in tasks:
        t = summary[summary.task == task].reset_index(drop=True)
        buf.write(f'<h2 id="task-{html.escape(task)}">{html.escape(task)}</h2>')
        buf.write(table.to_html(t, table_id=f"table-{task}").replace('class="dataframe"', 'class="dataframe sortable"'))
        buf.write(_notes(table.to_markdown(t)))
    parts.append(buf.getvalue())
    if summary.metric_mean.notna().any():  # else no run has a metric to plot (all failed)
        parts += ["<h2>Metric vs trainable parameters</h2>",
                  f'<img id="plot-metric" alt="metric vs trainable parameters per task" '
                  f'src="data:image/png;base64,{_png(plots.plot, summary)}">']
    if summary.train_samples_per_s.notna().any():
        parts += ["<h2>Costs: latency, throughput, memory</h2>",
                  f'<img id="plot-costs" alt="latency ratios, throughput and peak memory per method" '
                  f'src="data:image/png;base64,{_png(plots.plot_costs, summary)}">']
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(parts) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
