"""The summary across tasks: rows = method configurations, columns = each task's primary metric,
the mean rank and the costs. Built from the per-task summary (``frame.summarize``).

A configuration at its task's main budget (the budget most of that task's rows were run at) is
one row across tasks, by its label; at another budget it is a row of its own (``lora @ 0.1%``).
The trivial baseline of every task (majority class, mean target, untuned model) is one row.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

BASELINE = "trivial baseline / untuned model"
COSTS = (("trainable_pct", "params % base ↓"), ("throughput_vs_full", "samples/s vs full ↑"),
         ("latency_b1_ratio", "b1 latency vs base ↓"), ("latency_b1_merged_ratio", "b1 merged vs base ↓"),
         ("peak_mem_mb", "peak MB ↓"), ("checkpoint_bytes", "ckpt ↓"))
# sizes, not ratios: a median over tasks of several models would mix the models' sizes (with SmolLM2's tasks
# a row's peak MB would rise with how many of its tasks ran on SmolLM2), so these get a column per model
PER_MODEL = ("peak_mem_mb", "checkpoint_bytes")


def _budgeted(b) -> bool:
    return isinstance(b, str) and bool(b)


def _key(r, main_budget, sized: set) -> str:
    if r.get("role") == "baseline":
        return BASELINE
    key = r.config
    if _budgeted(r.budget) and r.budget != main_budget.get(r.task):
        key += f" @ {r.budget}"
    elif not _budgeted(r.budget) and r.config in sized:
        key += f" {r.knob}={r.knob_value:g}"
    return key


def _sized(s: pd.DataFrame) -> set:
    """Labels run at several sizes set directly (a knob, no budget, e.g. a rank study): each size is
    a row of its own, not folded into one under the label."""
    free = s[(s.role != "baseline") & ~s.budget.map(_budgeted) & s.knob_value.notna()]
    return {c for c, g in free.groupby("config") if g.knob_value.nunique() > 1}


def overview(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: ``<task>`` = mean, ``<task>_std``, ``<task>_best`` /
    ``<task>_noise`` (best of the task / within noise of it), ``<task>_rank``; ``mean_rank``,
    ``n_tasks`` and the costs (medians over tasks; sizes over each model's tasks, ``peak_mem_mb@<model>``
    where the tasks ran on several models). The baseline row has no costs (it trained nothing)."""
    if "metric_mean" not in summary:
        return pd.DataFrame()
    s = summary[summary.metric_mean.notna()].copy()
    if s.empty:
        return pd.DataFrame()
    main_budget = {t: g.budget.dropna().mode().iloc[0] if g.budget.notna().any() else None
                   for t, g in s[s.role != "baseline"].groupby("task")}
    sized = _sized(s)
    s["_key"] = [_key(r, main_budget, sized) for _, r in s.iterrows()]
    tasks = list(dict.fromkeys(s.task))
    s["_model"] = [str(m) if pd.notna(m) else "?" for m in s.model] if "model" in s else "?"
    trained = s[s.role != "baseline"]  # a trivial baseline row has no model
    models = sorted(set(trained._model))
    rows: dict[str, dict] = {}
    for task in tasks:
        t = s[s.task == task]
        lower = t.metric_direction.iloc[0] == "lower"
        # two rows of one task under one key (left: one configuration at two of its task's budgets is told
        # apart above, two setups by their labels): the better one stands for the key, and only it is
        # ranked and gives the costs
        t = t.sort_values("metric_mean", ascending=lower, kind="stable").drop_duplicates("_key")
        contenders = t[t.role != "baseline"]
        ranks = contenders.metric_mean.rank(ascending=lower, method="min")
        for i, r in t.iterrows():
            row = rows.setdefault(r._key, {"config": r._key, "_costs": {}})
            row[task], row[f"{task}_std"] = r.metric_mean, r.metric_std
            row[f"{task}_best"] = bool(r.get("best"))
            # True: within noise of the best; False: a gap outside noise; None: no interval (one seed)
            noise = r.get("within_noise")
            row[f"{task}_noise"] = None if noise is None or r.role == "baseline" or row[f"{task}_best"] else bool(noise)
            row[f"{task}_rank"] = ranks.get(i, np.nan)
            for c, _ in COSTS:
                if c in r and pd.notna(r[c]) and r.role != "baseline":
                    column = f"{c}@{r._model}" if c in PER_MODEL and len(models) > 1 else c
                    row["_costs"].setdefault(column, []).append(float(r[c]))
    out = []
    for row in rows.values():
        task_ranks = [row[f"{t}_rank"] for t in tasks if pd.notna(row.get(f"{t}_rank", np.nan))]
        row["mean_rank"] = float(np.mean(task_ranks)) if task_ranks else np.nan
        row["n_tasks"] = sum(t in row for t in tasks)
        for c, _, _ in _cost_cells(models if len(models) > 1 else []):
            values = row["_costs"].get(c)
            row[c] = float(np.median(values)) if values else np.nan
        del row["_costs"]
        out.append(row)
    df = pd.DataFrame(out)
    df["_baseline"], df["_order"] = df.config == BASELINE, range(len(df))
    # rows over fewer tasks after those over more (a mean rank over one task is not one over all); ties
    # in the order the tables list them
    df = df.sort_values(["_baseline", "n_tasks", "mean_rank", "_order"], ascending=[False, False, True, True],
                        na_position="last")
    df = df.drop(columns=["_baseline", "_order"]).reset_index(drop=True)
    df.attrs["tasks"] = tasks
    df.attrs["metrics"] = {t: s[s.task == t].metric.iloc[0] for t in tasks}
    df.attrs["models"] = {t: ", ".join(sorted(set(trained[trained.task == t]._model))) for t in tasks}
    df.attrs["cost_models"] = models if len(models) > 1 else []
    return df


def _count(x) -> str:
    from .table import _count as count

    return count(x)


def _no_interval(r, task) -> bool:
    """A row of a task with no interval of its gap to the best (it or the best has one seed)."""
    return (r.config != BASELINE and not r.get(f"{task}_best") and r.get(f"{task}_noise") is None
            and pd.notna(r.get(task)))


def display(ov: pd.DataFrame, mark=None) -> pd.DataFrame:
    """Readable cells: ``0.8123 ± 0.0040`` per task (best of the task marked, ≈ within noise of it)."""
    mark = mark or (lambda t: t)
    tasks = ov.attrs.get("tasks", [])
    cells = []
    for _, r in ov.iterrows():
        cell = {"method": r.config}
        for t in tasks:
            v = r.get(t)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cell[t] = ""
                continue
            text = f"{v:.4f}" + (f" ± {r[f'{t}_std']:.4f}" if pd.notna(r.get(f"{t}_std")) else "")
            noise = r.get(f"{t}_noise")
            text += " ≈" if noise is True else " ?" if _no_interval(r, t) else ""
            cell[t] = mark(text) if r.get(f"{t}_best") else text
        cell["mean rank ↓"] = f"{r.mean_rank:.1f} ({r.n_tasks})" if pd.notna(r.mean_rank) else ""
        for column, c, name in _cost_cells(ov.attrs.get("cost_models", [])):
            v = r.get(column)
            if pd.isna(v):
                cell[name] = ""
            elif c == "checkpoint_bytes":
                cell[name] = _count(v) + "B"
            elif c == "trainable_pct":
                cell[name] = f"{v:.3f}%"
            elif c == "peak_mem_mb":
                cell[name] = f"{v:,.0f}"
            else:
                cell[name] = f"{v:.2f}x"
        cells.append(cell)
    out = pd.DataFrame(cells)
    metrics, models = ov.attrs.get("metrics", {}), ov.attrs.get("models", {})
    out.columns = [f"{c} ({metrics[c]}{', ' + models[c] if len(set(models.values())) > 1 else ''})"
                   if c in metrics else c for c in out.columns]
    return out.loc[:, [c for c in out.columns if not (out[c] == "").all()]]


def _cost_cells(models):
    """(column, cost, header) in COSTS' order; a size once per model (``peak MB ↓ (smollm2)``) where several."""
    return [(f"{c}@{m}", c, f"{name} ({m})") if m else (c, c, name)
            for c, name in COSTS for m in (models if c in PER_MODEL and models else [None])]


def to_markdown(ov: pd.DataFrame) -> str:
    if ov.empty:  # the overview rows are runs that finished with a metric
        return "(no run finished with a metric: the table without --summary shows each run's status)\n"
    disp = display(ov, mark=lambda t: f"**{t}**")
    from .table import markdown_lines

    head, sep, *body = markdown_lines(disp)
    models = sorted(set(ov.attrs.get("models", {}).values()))
    unknown = any(_no_interval(r, t) for _, r in ov.iterrows() for t in ov.attrs.get("tasks", []))
    per_model = " (peak MB and checkpoint size over each model's tasks)" if ov.attrs.get("cost_models") else ""
    note = ("\nEach task: its primary metric, mean ± std over seeds (bold: the best of the task; ≈: within "
            "noise of it, the 95% interval of the gap containing 0"
            f"{'; ?: no interval, it or the best has one seed' if unknown else ''}). Mean rank: over the tasks "
            "the row has (in brackets; rows over fewer tasks come after), 1 = best of a task. Costs: medians "
            f"over the tasks{per_model}. A configuration at another than "
            "its task's main budget is a row of its own (@ budget). "
            f"Model{'s' if len(models) > 1 else ''}: {', '.join(models)}. Per-task tables give every column.\n")
    return "\n".join([head, sep, *body]) + "\n" + note
