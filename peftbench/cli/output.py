"""How commands print: aligned columns, CSV, the budget solutions."""

from __future__ import annotations

import click


def format_rows(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]


def echo_csv(header, rows) -> None:
    """CSV on stdout (quoting labels such as lora[target_modules=q,v])."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    click.echo(buf.getvalue(), nl=False)


def print_rows(rows):
    for line in format_rows(rows):
        click.echo(line)


def budget_rows(solutions):
    rows = [("budget", "method", "knob", "knob_value", "params", "budget_params", "deviation_pct", "fixed")]
    for btext, s in solutions:
        rows.append((btext, s.method, s.knob or "-", "-" if s.knob_value is None else str(s.knob_value),
                     f"{s.params:,}", f"{s.budget:,}", f"{s.deviation_pct:+.1f}", "fixed" if s.fixed else ""))
    return rows
