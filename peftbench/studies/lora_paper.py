"""The LoRA paper's Table 5 (which weight matrices to adapt under one budget) and Table 6 (which
rank) as sweeps: each study writes an ordinary sweep file into its output folder and runs it
(resumable like any sweep, and rerunnable with ``peftbench run --config``), then prints the
paper-shaped table from the records.
"""

from __future__ import annotations

import json

import pandas as pd

#: the paper's Table 5 columns (plus the feed-forward layers)
TARGET_SETS = ("q", "k", "v", "o", "q,k", "q,v", "q,k,v,o", "ffn")
#: the paper's Table 6 shape
RANKS = (1, 2, 4, 8, 64)
RANK_SETS = ("q", "q,v", "q,k,v,o")


def _method(targets: str) -> str:
    return f"lora[target_modules={targets}]"


def _toml_list(values) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def sweep_file(study: str, settings: dict, sets, ranks=None, budget: str | None = None) -> str:
    """The sweep file of a study: ``targets`` (one budget, the rank solved per target set) or
    ``rank`` (explicit ranks x target sets)."""
    lines = [f"# peftbench study {study}: written by the command, rerun with `peftbench run --config` (resumes)",
             "# (precision: what --precision resolved to where the study started, auto included, so that it plans",
             "# the same runs on any machine)",
             'out = "."']
    lines += [f"{k} = {json.dumps(v) if not isinstance(v, list) else _toml_list(v)}"
              for k, v in settings.items() if v is not None]
    methods = _toml_list([_method(s) for s in sets])
    if study == "targets":
        lines += ["", "[[sweep]]", f"methods = {methods}", f"budget = {json.dumps(budget)}"]
    else:
        for r in ranks:
            lines += ["", "[[sweep]]", f"methods = {methods}", f"knob = {{ lora = {int(r)} }}"]
    return "\n".join(lines) + "\n"


def _targets_of(config: str) -> str:
    """The target set of a lora row's label; a label without target_modules has the default (q,v)."""
    if "target_modules=" in config:
        return config.split("target_modules=", 1)[1].split("]", 1)[0].split(" (")[0]
    from peftbench_plugins.lora import LoRAOptions

    return ",".join(LoRAOptions().target_modules)


def table(summary: pd.DataFrame, study: str) -> str:
    """Rows: task (targets) or task x rank (rank); columns: target sets; cells: metric ± std, and the
    rank each set got (targets)."""
    s = summary[(summary.method == "lora") & summary.metric_mean.notna()].copy()
    if s.empty:
        return "(no finished lora runs)\n"
    s["targets"] = [_targets_of(c) for c in s.config]
    order = [t for t in (*TARGET_SETS, *sorted(set(s.targets) - set(TARGET_SETS))) if t in set(s.targets)]
    rows = []
    keys = ["task"] if study == "targets" else ["task", "knob_value"]
    for key, g in s.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = {"task": key[0]}
        if study == "rank":
            row["r"] = int(key[1])
        for t in order:
            hit = g[g.targets == t]
            if len(hit):
                h = hit.iloc[0]
                cell = f"{h.metric_mean:.4f}" + (f" ± {h.metric_std:.4f}" if pd.notna(h.metric_std) else "")
                if study == "targets":
                    cell += f" (r={int(h.knob_value)}, {int(h.trainable_params):,})"
                row[t] = cell
            else:
                row[t] = ""
        rows.append(row)
    out = pd.DataFrame(rows)
    metric = s.metric.iloc[0]
    from ..report.table import markdown_lines

    head, sep, *body = markdown_lines(out)
    note = (f"\nCells: {metric} mean ± std over seeds" + (" (the rank the budget gave the set, and its trainable "
            "parameters)" if study == "targets" else "") + "; columns: LoRA's target matrices. The paper's "
            "Table 5 (GPT-3, 18M trainable) / Table 6 shape.\n")
    return "\n".join([head, sep, *body]) + "\n" + note
