"""How commands print: aligned columns, CSV, the budget solutions; where they write (checked first)."""

from __future__ import annotations

from pathlib import Path

import click


def check_file_targets(**paths) -> None:
    """Each file a command will write (``flag=path``, e.g. ``plot=...``; None: not asked for) must have an
    existing folder and not be a folder itself: said in one line before any work, not after it."""
    from ..errors import PeftbenchError

    for flag, path in paths.items():
        if not path:
            continue
        name = "--" + flag.replace("_", "-")
        if Path(path).is_dir():
            raise PeftbenchError(f"{name} {path} is a folder; give a file path")
        if not Path(path).resolve().parent.is_dir():
            raise PeftbenchError(f"{name} {path}: its folder does not exist; create it or give another path")


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
