"""Plots from a summary frame: the metric against trainable parameters (per task, Pareto front
drawn) and the costs (latency over the base model, training throughput, peak memory)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import PeftbenchError


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(r) -> str:
    knob = f" {r.knob}={int(r.knob_value)}" if isinstance(r.knob, str) and pd.notna(r.knob_value) else ""
    return f"{r.config}{knob}"


def pareto_front(params, values, higher: bool = True) -> list[int]:
    """Indices of the points no other point beats on both axes (fewer parameters, better metric),
    in order of parameters."""
    order = sorted(range(len(params)), key=lambda i: (params[i], -values[i] if higher else values[i]))
    front, best = [], -math.inf
    for i in order:
        v = values[i] if higher else -values[i]
        if v > best:
            front.append(i)
            best = v
    return front


def _grid(n: int, width: int = 3):
    cols = min(width, max(1, n))
    return math.ceil(n / cols), cols


def _baseline_name(config: str) -> str:
    return "untuned model (base)" if config == "base" else config  # a generation task's floor


def _baselines(ax, methods: pd.DataFrame, baselines: pd.DataFrame) -> None:
    """A baseline (trivial, or zero trainable parameters) as a dotted line; one far outside the
    methods' band (more than the band's height away) would squeeze the methods into a sliver, so
    the axis stops at the methods and the baseline is written at the edge it lies beyond."""
    std = methods.metric_std.fillna(0)
    lo, hi = (methods.metric_mean - std).min(), (methods.metric_mean + std).max()
    pad = max(hi - lo, 1e-9)
    clipped = []
    for _, b in baselines.iterrows():
        if len(methods) and not lo - pad <= b.metric_mean <= hi + pad:
            clipped.append(b)
        else:
            ax.axhline(b.metric_mean, ls=":", color="0.2", lw=1.2, label=_baseline_name(b.config))
    if not clipped:
        return
    ax.set_ylim(lo - 0.15 * pad, hi + 0.15 * pad)
    for b in clipped:
        below = b.metric_mean < lo
        ax.annotate(f"{'↓' if below else '↑'} {_baseline_name(b.config)}: {b.metric_mean:.3g} (off the axis)",
                    xy=(0.01, 0.01 if below else 0.99), xycoords="axes fraction", fontsize=7, color="0.2",
                    va="bottom" if below else "top")


def check_plottable(summary: pd.DataFrame, metric: bool = True, costs: bool = False) -> None:
    """Refuse (one line) a plot that would be empty: no run with a metric, or with measured costs."""
    for wanted, rows, what in ((metric, _metric_rows(summary), "a metric"),
                               (costs, _cost_rows(summary), "measured costs")):
        if wanted and rows.empty:
            raise PeftbenchError(f"nothing to plot: no run in these records has {what} (each failed: the table's "
                                 "status column and the records' errors say why); plot a folder with ok runs")


def _metric_rows(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary.metric_mean.notna()]


def _cost_rows(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[(summary.get("role", "method") != "baseline") & summary.train_samples_per_s.notna()]


def plot(summary: pd.DataFrame, path) -> None:
    """Per task: the primary metric (mean ± std over seeds) against the method's own trainable
    parameters (log x), one curve per method configuration across budgets, the Pareto front
    dashed and the trivial baseline dotted."""
    plt = _plt()
    check_plottable(summary)
    ok = _metric_rows(summary)
    tasks = list(ok.task.unique())
    rows, cols = _grid(len(tasks))
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.6 * rows), squeeze=False)
    colors = {c: plt.cm.tab10(i % 10) for i, c in enumerate(dict.fromkeys(ok.config))}
    for k, task in enumerate(tasks):
        ax = axes[k // cols][k % cols]
        t = ok[ok.task == task]
        methods = t[(t.get("role", "method") != "baseline") & (t.trainable_params.fillna(0) > 0)]
        for config, g in methods.groupby("config", sort=False):
            g = g.sort_values("trainable_params")
            ax.errorbar(g.trainable_params, g.metric_mean, yerr=g.metric_std.fillna(0), marker="o", capsize=3,
                        label=config, color=colors[config])
        if len(methods) > 1:
            higher = methods.metric_direction.iloc[0] != "lower"
            front = pareto_front(list(methods.trainable_params), list(methods.metric_mean), higher)
            f = methods.iloc[front]
            ax.step(f.trainable_params, f.metric_mean, where="post", ls="--", color="0.35", lw=1, label="Pareto front")
        _baselines(ax, methods, t[(t.get("role", "method") == "baseline") | (t.trainable_params.fillna(0) == 0)])
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters of the method (log scale)")
        metric = t.metric.dropna().iloc[0] if t.metric.notna().any() else "metric"
        ax.set_ylabel(f"{metric} ({'lower' if t.metric_direction.iloc[0] == 'lower' else 'higher'} is better)")
        ax.set_title(f"{task}: {metric} vs trainable parameters\n(mean ± std over seeds)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")
    for k in range(len(tasks), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_costs(summary: pd.DataFrame, path) -> None:
    """Per task (one row of panels): inference latency over the base model (unmerged and merged,
    batch 1 and batch N; same-process ratios), training samples per second and peak memory."""
    plt = _plt()
    check_plottable(summary, metric=False, costs=True)
    rows = _cost_rows(summary)
    tasks = list(rows.task.unique())
    widest = max((int((rows.task == t).sum()) for t in tasks), default=1)
    # one column: latency, throughput and memory of a task one above the other, wide enough for the labels
    fig, grid = plt.subplots(3 * len(tasks), 1, figsize=(max(10, 0.75 * widest), 4.6 * 3 * len(tasks)), squeeze=False)
    axes = [[grid[3 * k][0], grid[3 * k + 1][0], grid[3 * k + 2][0]] for k in range(len(tasks))]
    for k, task in enumerate(tasks):
        t = rows[rows.task == task]
        labels = [_label(r) for r in t.itertuples()]
        x = np.arange(len(t))
        ax = axes[k][0]
        generation = "gen_per_token_b1_ratio" in t and t.gen_per_token_b1_ratio.notna().any()
        prefix, what = ("gen_per_token_", "time per output token") if generation else ("latency_", "inference latency")
        bars = ((f"{prefix}b1_ratio", "unmerged, batch 1"), (f"{prefix}b1_merged_ratio", "merged, batch 1"),
                (f"{prefix}bN_ratio", "unmerged, batch N"), (f"{prefix}bN_merged_ratio", "merged, batch N"))
        for j, (col, name) in enumerate(bars):
            ax.bar(x + (j - 1.5) * 0.2, t[col].astype(float).fillna(0) if col in t else 0, 0.2, label=name)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylim(0.8, None)
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(f"{what} / base model\n(same process, median over seeds)")
        ax.set_title(f"{task}: {what} / base model\n(no bar: not measured, or not mergeable)", fontsize=10)
        ax.legend(fontsize=7)
        ax = axes[k][1]
        ax.bar(x, t.train_samples_per_s.astype(float), color="tab:green")
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("training samples / s (higher is better)")
        ax.set_title(f"{task}: training throughput (median over seeds)", fontsize=10)
        ax = axes[k][2]
        ax.bar(x, t.peak_mem_mb.astype(float), color="tab:purple", label="peak")
        if "peak_mem_delta_mb" in t:
            ax.bar(x, t.peak_mem_delta_mb.astype(float), color="tab:orange", width=0.5, label="growth during training")
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("MiB (lower is better)")
        ax.set_title(f"{task}: peak memory while training", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
