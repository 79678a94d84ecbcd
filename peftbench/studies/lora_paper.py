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


def _column(config: str) -> tuple[str, float]:
    """A lora row's column: its target set, with the learning rate where the row is one of several rates
    the folder holds for it (a rate given by flag, e.g. a search folder: each rate its own column)."""
    targets = _targets_of(config)
    if " (lr " not in config:
        return targets, 0.0
    lr = config.split(" (lr ", 1)[1].split(")", 1)[0]
    return f"{targets} (lr {lr})", float(lr)


def _lora_rows(summary: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The finished lora rows with their column (``targets``: the target set), and the columns in the
    paper's order (rates ascending within a set)."""
    s = summary[(summary.method == "lora") & summary.metric_mean.notna()].copy()
    s["targets"] = [_column(c)[0] for c in s.config]
    sets = {_targets_of(c) for c in s.config}
    place = {t: i for i, t in enumerate((*TARGET_SETS, *sorted(sets - set(TARGET_SETS))))}
    keys = {_column(c)[0]: (place[_targets_of(c)], _column(c)[1]) for c in s.config}  # column -> (set, rate)
    return s, sorted(keys, key=keys.get)


def _flag(value) -> bool:
    """A summary's yes/no cell (numpy bool, None or NaN where it does not apply) as a bool."""
    return not pd.isna(value) and bool(value) if pd.api.types.is_scalar(value) else False


def table(summary: pd.DataFrame, study: str, seeds: bool = False) -> str:
    """Rows: task (targets) or task x rank (rank); columns: target sets; cells: metric ± std, bold for the best
    of the task and ≈ within noise of it, and the rank each set got (targets). With ``seeds``, a targets study
    adds a row per task with each seed's value (a mean ± std hides a diverged seed; – where a seed has none)."""
    s, order = _lora_rows(summary)
    if s.empty:
        return "(no finished lora runs)\n"
    rows = []
    keys = ["task"] if study == "targets" else ["task", "knob_value"]
    for key, g in s.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = {"task": key[0]}
        if study == "rank":
            row["r"] = int(key[1])
        per_seed = {}
        for t in order:
            hit = g[g.targets == t]
            if len(hit):
                h = hit.iloc[0]
                cell = f"{h.metric_mean:.4f}" + (f" ± {h.metric_std:.4f}" if pd.notna(h.metric_std) else "")
                best, near = _flag(h.get("best")), _flag(h.get("within_noise"))
                cell = f"**{cell}**" if best else cell
                if study == "targets":
                    cell += f" (r={int(h.knob_value)}, {int(h.trainable_params):,})"
                row[t] = cell + (" ≈" if near and not best else "")
                per_seed[t] = _seed_values(h)
            else:
                row[t] = ""
        rows.append(row)
        ids = sorted({seed for values in per_seed.values() for seed in values})
        if study == "targets" and seeds and ids:
            rows.append({"task": f"each seed ({', '.join(map(str, ids))})",
                         **{t: ", ".join(f"{per_seed[t][i]:.3f}" if i in per_seed[t] else "–" for i in ids)
                            if t in per_seed else "" for t in order}})
    out = pd.DataFrame(rows)
    metric = s.metric.iloc[0]
    from ..report.table import markdown_lines

    head, sep, *body = markdown_lines(out)
    note = (f"\nCells: {metric} mean ± std over seeds" + (" (the rank the budget gave the set, and its trainable "
            "parameters)" if study == "targets" else "") + "; bold: the best of the task; ≈: within noise of it (the "
            "95% interval of the gap over seeds contains 0); columns: LoRA's target matrices"
            + ("; each seed: its value, seeds in order" if study == "targets" and seeds else "")
            + ". The paper's Table 5 (GPT-3, 18M trainable) / Table 6 shape.\n")
    return "\n".join([head, sep, *body]) + "\n" + note


def _seed_values(row) -> dict[int, float]:
    """seed -> metric of one summary row's finished runs (its group: task, configuration, rank and settings;
    the task's own metric), in seed order."""
    values = row.get("_seeds") if hasattr(row, "get") else None
    return dict(sorted((int(k), float(v)) for k, v in (values or {}).items() if pd.notna(v)))


def plot(summary: pd.DataFrame, study: str, path, runs: pd.DataFrame | None = None) -> None:
    """The study as a figure, per task (mean ± std over seeds, the trivial baseline's value written in a
    corner): ``targets``, the metric per target set (labelled with its rank); ``rank``, the metric against
    r (log scale) and against the trainable parameters (log scale), one line per target set. With ``runs``
    (the records' frame) each seed's value is drawn too (hollow points): a mean ± std hides a seed that
    diverged."""
    from ..errors import PeftbenchError
    from ..report.plots import _grid, _plt

    s, order = _lora_rows(summary)
    if s.empty:
        raise PeftbenchError("no finished lora runs to plot yet; run the study first")
    plt = _plt()
    tasks = list(dict.fromkeys(s.task))
    panels = [(t, x) for t in tasks for x in (("sets",) if study == "targets" else ("r", "params"))]
    rows, cols = _grid(len(panels), width=2)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.4 * rows), squeeze=False)
    colors = {t: plt.cm.tab10(i % 10) for i, t in enumerate(order)}
    for k, (task, x) in enumerate(panels):
        ax, t = axes[k // cols][k % cols], s[s.task == task]
        metric = t.metric.iloc[0]
        if x == "sets":
            t = t.set_index("targets").loc[[o for o in order if o in set(t.targets)]]
            pos = range(len(t))
            for i, (name, r) in zip(pos, t.iterrows()):
                ax.errorbar([i], [r.metric_mean], yerr=[0 if pd.isna(r.metric_std) else r.metric_std], fmt="o",
                            capsize=4, color=colors[name])
                seeds = list(_seed_values(r).values()) if runs is not None else []
                if seeds:
                    ax.scatter([i + 0.15] * len(seeds), seeds, s=18, facecolors="none", edgecolors=colors[name],
                               linewidths=1)
            if runs is not None:
                ax.scatter([], [], s=18, facecolors="none", edgecolors="0.3", label="one seed's value")
                ax.legend(fontsize=8, loc="best")
            ax.set_xticks(list(pos), [f"{name}\nr={int(r.knob_value)}" for name, r in t.iterrows()], fontsize=8)
            ax.set_xlabel("LoRA's target matrices (the rank the one budget gives each set)")
            ax.set_title(f"{task}: which matrices to adapt at one budget\n(mean ± std over seeds"
                         + ("; hollow: each seed)" if runs is not None else ")"), fontsize=10)
        else:
            column = "knob_value" if x == "r" else "trainable_params"
            for name in order:
                g = t[t.targets == name].sort_values(column)
                if len(g):
                    ax.errorbar(g[column], g.metric_mean, yerr=g.metric_std.fillna(0), marker="o", capsize=3,
                                label=name, color=colors[name])
                    for _, r in g.iterrows():
                        seeds = list(_seed_values(r).values()) if runs is not None else []
                        ax.scatter([r[column]] * len(seeds), seeds, s=14, facecolors="none", edgecolors=colors[name],
                                   linewidths=0.8)
            ax.set_xscale("log", base=2 if x == "r" else 10)
            if x == "r":
                ranks = sorted({int(v) for v in t.knob_value})
                ax.set_xticks(ranks, [str(v) for v in ranks])
                ax.set_xlabel("LoRA rank r (log scale)")
            else:
                ax.set_xlabel("trainable parameters of the method (log scale)")
            ax.set_title(f"{task}: {metric} vs {'rank' if x == 'r' else 'trainable parameters'}, per target set"
                         "\n(mean ± std over seeds" + ("; hollow: each seed)" if runs is not None else ")"), fontsize=10)
            ax.legend(title="target matrices", fontsize=8, title_fontsize=8, loc="best")
        trivial = summary[(summary.task == task) & (summary.get("role", "method") == "baseline")]
        if len(trivial) and pd.notna(trivial.metric_mean.iloc[0]):  # a line if it is in view, else its value
            value, (lo, hi) = trivial.metric_mean.iloc[0], ax.get_ylim()
            if lo <= value <= hi:
                ax.axhline(value, ls=":", color="0.2", lw=1.2)
            where = "" if lo <= value <= hi else " (below the axis)" if value < lo else " (above the axis)"
            ax.annotate(f"{trivial.config.iloc[0]}: {value:.3f}{where}", xy=(0.01, 0.01), xycoords="axes fraction",
                        fontsize=7, color="0.3")
        direction = "lower" if t.metric_direction.iloc[0] == "lower" else "higher"
        ax.set_ylabel(f"{metric} ({direction} is better)")
        ax.grid(alpha=0.3, which="both")
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
