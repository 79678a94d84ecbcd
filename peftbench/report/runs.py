"""One row per run record file (``peftbench report --runs``), learning-rate search runs included: which file
is which run, e.g. to pick the two records ``peftbench analyze subspace`` compares, or the one it reads for
``delta``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

COLUMNS = ["record", "role", "status", "task", "config", "options", "size", "seed", "lr", "metric", "value", "params",
           "checkpoint", "commit"]


def _shown(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it (as a user would type it)."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return str(path)
    return str(path) if relative.startswith("..") else relative


def _checkpoint(path: Path, rec: dict) -> str:
    """Where ``peftbench analyze`` finds the run's checkpoint (the folder's own copy first), or ``-``."""
    from ..records import checkpoint_file

    found = checkpoint_file(path, rec)
    return _shown(found) if found else "-"


def _options(options) -> str:
    """A method's options as ``k=v`` words (lists comma-joined), e.g. ``alpha=16.0 target_modules=q,v``."""
    return " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                    for k, v in sorted((options or {}).items()) if v is not None)


def record_files(dirs, warn=None) -> list[tuple[Path, dict]]:
    """(path, record) of every record file in or below ``dirs`` (a run folder, its records/, a tree of them;
    search/ folders too), each file once, whatever its name; unreadable ones through ``warn``."""
    from ..records import read_record

    files = set()
    for d in map(Path, dirs):
        files |= {p.resolve() for p in d.rglob("*.json") if p.parent.name == "records" and not p.name.startswith(".")}
        if d.name == "records" or not any(d.rglob("records")):  # records/ itself, or a folder of record files
            files |= {p.resolve() for p in d.glob("[!.]*.json")}
    found = []
    for path in sorted(files):
        try:
            rec = read_record(path)
        except ValueError as e:
            if warn and path.parent.name == "records":  # other JSON files of a folder are not records
                warn(f"{e}; left out")
            continue
        found.append((path, rec))
    return found


def runs_frame(entries) -> pd.DataFrame:
    """``entries``: (record path, record) pairs. Sorted by task, final runs before search runs, configuration,
    options, size and seed."""
    rows = []
    for path, rec in entries:
        spec, metrics = rec.get("spec") or {}, rec.get("metrics") or {}
        metric = next(iter(metrics), None)
        knob = f"{spec['knob']}={spec.get('knob_value')}" if spec.get("knob") else ""
        options = _options(spec.get("options"))
        role = "search" if spec.get("role") == "search" else "final"  # a learning-rate search run, or a reported one
        rows.append({"record": _shown(Path(path)), "role": role, "status": rec.get("status"), "task": spec.get("task"),
                     "config": spec.get("label"), "options": options, "size": knob, "seed": spec.get("seed"),
                     "lr": spec.get("lr"), "metric": metric, "value": metrics.get(metric),
                     "params": (rec.get("params") or {}).get("method"), "checkpoint": _checkpoint(Path(path), rec),
                     "commit": str((rec.get("env") or {}).get("git_commit") or "")[:7],
                     "_order": (str(spec.get("task")), role != "final", str(spec.get("label")), options,
                                spec.get("knob_value") or 0, spec.get("seed") or 0, spec.get("lr") or 0)})
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "_order"], dtype=object)  # an int stays an int beside a None
    return frame.iloc[sorted(range(len(frame)), key=lambda i: frame["_order"].iloc[i])][COLUMNS].reset_index(drop=True)


def render(frame: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return json.dumps(json.loads(frame.to_json(orient="records")), indent=1) + "\n"

    def cell(column, v):
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return ""
        if column == "value":
            return f"{v:.4f}"
        if column == "lr":
            return f"{v:.3g}"
        if column == "params":
            return f"{int(v):,}"
        return str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(c, r[c]) for c in COLUMNS) + " |" for _, r in frame.iterrows()]
    return "\n".join(lines) + "\n"
