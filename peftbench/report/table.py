"""Per-task comparison tables from a summary (``frame.summarize``): the human-readable columns with
↑/↓ markers and bold best values, the caption that defines them, and Markdown, LaTeX, HTML, CSV
and JSON renderings.
"""

from __future__ import annotations

import math

import pandas as pd

from .frame import _edge_words, _size
from .stats import LEVEL

def _n(x, fmt="{:,.0f}"):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _count(x):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    x = float(x)
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.0f}"


def _ratio(ms, ratio):
    if ms is None or ratio is None or any(isinstance(v, float) and math.isnan(v) for v in (ms, ratio)):
        return ""
    return f"{ms:.1f} ({ratio:.2f}x)"


def _gap(r) -> str:
    if r.get("best") is True:
        return "best"
    if pd.isna(r.get("gap_to_best")):
        return ""
    if pd.isna(r.get("gap_ci_low")):
        return f"{r.gap_to_best:+.4f}"
    return f"{r.gap_to_best:+.4f} [{r.gap_ci_low:+.4f}, {r.gap_ci_high:+.4f}]" + (" ≈" if r.within_noise else "")


# display column -> (summary column, which is best) for the best-per-task marking
BEST_OF = {"metric": (None, None), "params ↓ (% base)": ("trainable_params", "min"),
           "samples/s ↑": ("train_samples_per_s", "max"), "peak MB ↓ (Δ train)": ("peak_mem_mb", "min"),
           # latency by its ratio to the base model timed in the same process (ms come from separate runs)
           "b1 ms ↓ (vs base)": ("latency_b1_ratio", "min"), "bN ms ↓ (vs base)": ("latency_bN_ratio", "min"),
           "ckpt ↓": ("checkpoint_bytes", "min")}


def _best_cells(summary: pd.DataFrame) -> dict[str, set]:
    """display column -> the summary indices holding the best value of their task (methods only)."""
    out: dict[str, set] = {}
    rows = summary[summary.get("role", pd.Series("method", index=summary.index)) != "baseline"]
    for col, (source, how) in BEST_OF.items():
        if source is None:
            out[col] = set(summary.index[summary.get("best", pd.Series(False, index=summary.index)) == True])  # noqa: E712
            continue
        out[col] = set()
        for _, g in rows.groupby("task", sort=False):
            v = g[source].astype(float) if source in g else pd.Series(dtype=float)
            if source == "trainable_params":
                v = v[v > 0]  # a row that trains nothing of its own (a probe) is not the cheapest method
            if source == "peak_mem_mb" and "device" in g:
                # CPU: resident set size keeps what the allocator freed; seeds differ by as much as methods
                v = v[g.device.astype(str).str.startswith("cuda")]
            if v.notna().sum() > 1 and v.nunique() > 1:  # all alike: no best
                target = v.min() if how == "min" else v.max()
                out[col] |= set(v.index[v == target])
    return out


def _mfu_counts(summary: pd.DataFrame) -> set:
    """The FLOPs counts the table's MFU values rest on: {"counted", "analytic"} or one of them."""
    if "mfu_flops" not in summary:
        return set()
    kinds = set(summary.mfu_flops.dropna())
    return {"counted", "analytic"} if "mixed" in kinds else kinds


def _mfu_caption(summary: pd.DataFrame) -> str:
    counts = _mfu_counts(summary)
    counted = ("FLOPs per token counted by torch's FlopCounterMode on training steps as autograd runs them (of 1 "
               "and 2 examples, extrapolated to the run's batch): the forward and the trainable parameters' "
               "gradients, no input gradient before the first trainable parameter")
    analytic = ("analytic FLOPs per token, frozen weights without weight gradients; the count charges input "
                "gradients that autograd skips before a method's first trainable parameter, which overstates "
                "PEFT methods against full fine-tuning by 2-9% on MiniLM (results/flops_check.md)")
    what = (counted if counts == {"counted"} else analytic if counts <= {"analytic"} else
            f"{counted}; values marked (a): {analytic}, (m): some seeds one count, some the other")
    peaks = set(summary._mfu_peak.dropna()) if "_mfu_peak" in summary else set()
    peaks = {"two", "start"} if "mixed" in peaks else peaks  # a row whose seeds recorded one or the other
    if peaks == {"two"}:
        peak = ("over the matmul peak at its precision, the higher of two short readings (0.1 s or more each: at "
                "the run's start and right after training), taken while another run trained where † is shown (a run "
                "whose readings were both low shows above 100%)")
    elif "two" in peaks:
        peak = ("over the matmul peak at its precision: short readings (0.1 s or more), the higher of the run's "
                "start and after training for runs that recorded both, the start's alone for the others, taken while "
                "another run trained where † is shown (a low reading shows MFU above 100%)")
    else:
        peak = ("over the matmul peak measured at the run's start at its precision; the peak is one short reading "
                "(0.1-0.3 s), taken while another run trained where † is shown")
    return (f"MFU: achieved training FLOP/s ({what}) {peak}: compare MFU across rows only where the gaps are "
            "larger than that.")


def _headed(name: str, directions: dict) -> str:
    """A further metric's column header with its ↑/↓ where the records say which way is better."""
    how = directions.get(name)
    return f"{name} {'↓' if how == 'lower' else '↑'}" if how in ("lower", "higher") else name


def display_frame(summary: pd.DataFrame, mark=None) -> pd.DataFrame:
    """Human-readable columns with ↑/↓ markers, for Markdown / LaTeX / HTML. ``mark(text)`` wraps
    the best value of each task in the marked columns (bold)."""
    rows = []
    # a task's further metrics (generation: NIST, METEOR, ROUGE-L, CIDEr next to BLEU), one column each
    extra = [c[: -len("_mean")] for c in summary.columns
             if c.endswith("_mean") and c != "metric_mean" and f"m_{c[: -len('_mean')]}" not in summary.columns]
    mixed_flops = _mfu_counts(summary) == {"counted", "analytic"}
    directions: dict = {}  # a further metric's better direction, from any row's records that name it
    for d in (summary["_directions"] if "_directions" in summary else []):
        for name, how in (d if isinstance(d, dict) else {}).items():
            directions.setdefault(name, how)
    for _, r in summary.iterrows():
        knob = f"{r.knob}={int(r.knob_value)}" if isinstance(r.knob, str) and pd.notna(r.knob_value) else "fixed"
        if isinstance(r.budget, str) and r.budget:  # a row whose runs all failed has no deviation to show
            budget = r.budget + (f" ({r.budget_deviation_pct:+.1f}%)" if pd.notna(r.budget_deviation_pct) else "")
        else:
            budget = "fixed" if r.fixed else ""
        metric = r.metric if isinstance(r.metric, str) else "metric"
        if r.get("role") == "baseline" and r.method == "trivial":
            knob = budget = ""
        arrow = "↓" if r.get("metric_direction") == "lower" else "↑"
        rows.append({
            "task": r.task, "method": r.config, "size": knob,
            "params ↓ (% base)": f"{_count(r.trainable_params)} ({_n(r.trainable_pct, '{:.3f}')}%)" if pd.notna(r.trainable_params) else "",
            "budget (dev)": budget,
            "metric": f"{metric} {arrow} {_n(r.metric_mean, '{:.4f}')}" if pd.notna(r.metric_mean) else "",
            "±": _n(r.metric_std, "{:.4f}"),
            "vs best (95% CI)": _gap(r),
            **{_headed(name, directions): _n(r.get(f"{name}_mean"), "{:.4f}") for name in extra},
            "seeds": int(r.n_seeds) if r.n_seeds or r.method != "trivial" else "–",
            "samples/s ↑": _n(r.train_samples_per_s, "{:.1f}") + (" †" if r.get("shared_machine") is True
                                                                 and pd.notna(r.train_samples_per_s) else ""),
            "vs full": _n(r.throughput_vs_full, "{:.2f}x"),
            "MFU": _n(100 * r.mfu if pd.notna(r.mfu) else None, "{:.1f}%") + (
                f" ({r.mfu_flops[0]})" if pd.notna(r.mfu) and mixed_flops and r.get("mfu_flops") != "counted" else ""),
            "peak MB ↓ (Δ train)": _n(r.peak_mem_mb, '{:,.0f}') + (f" (+{r.peak_mem_delta_mb:,.0f})" if pd.notna(r.peak_mem_delta_mb) else ""),
            "activations MB ↓": _n(r.activation_mb, "{:,.1f}"),
            "b1 ms ↓ (vs base)": _ratio(r.latency_b1_ms, r.latency_b1_ratio),
            "b1 merged": _ratio(r.latency_b1_merged_ms, r.latency_b1_merged_ratio),
            "bN ms ↓ (vs base)": _ratio(r.latency_bN_ms, r.latency_bN_ratio),
            "bN merged": _ratio(r.latency_bN_merged_ms, r.latency_bN_merged_ratio),
            "TTFT b1 ms (vs base)": _ratio(r.get("gen_ttft_b1_ms"), r.get("gen_ttft_b1_ratio")),
            "per token b1 ms (vs base)": _ratio(r.get("gen_per_token_b1_ms"), r.get("gen_per_token_b1_ratio")),
            "per token b1 merged": _n(r.get("gen_per_token_b1_merged_ratio"), "{:.2f}x"),
            "per token bN ms (vs base)": _ratio(r.get("gen_per_token_bN_ms"), r.get("gen_per_token_bN_ratio")),
            "gen tok/s ↑": _n(r.get("generated_tokens_per_s"), "{:.0f}"),
            "lr": (f"{r.lr:g}" if isinstance(r.lr, (int, float)) and pd.notna(r.lr) else "")
            + (" (searched" + (", flat grid" if r.get("lr_grid_edge") == "flat" else _edge_words(r.lr_grid_edge)
                                if isinstance(r.get("lr_grid_edge"), str) else "")
               + ")" if isinstance(r.get("lr_selection"), str) and r.get("lr_selection") != "candidate" else ""),
            "search s": _n(r.get("search_seconds"), "{:,.0f}"),
            "merge Δ": _n(r.merged_max_abs_diff, "{:.1e}"),
            "ckpt ↓": _count(r.checkpoint_bytes) + "B" if pd.notna(r.checkpoint_bytes) else "",
            "machine GF/s": _n(r.machine_gflops, "{:.0f}"),
            "commit": r.git_commit if isinstance(r.git_commit, str) else "",
            "status": r.status,
        })
    out = pd.DataFrame(rows, index=summary.index)
    if mark is not None:
        for col, where in _best_cells(summary).items():
            for i in where:
                if col in out and out.at[i, col]:
                    out.at[i, col] = mark(out.at[i, col])
    out = out.reset_index(drop=True)
    if (out["vs best (95% CI)"] == "").all() or (out["vs best (95% CI)"].isin(["", "best"])).all():
        out = out.drop(columns="vs best (95% CI)")  # one contender per task: nothing to compare
    if not any(isinstance(v, str) for v in summary.get("lr_selection", [])):  # no search: lr in the caption
        out = out.drop(columns=["lr"])
    for col in (*(_headed(name, directions) for name in extra), "search s", "merge Δ", "commit", "MFU", "TTFT b1 ms (vs base)", "per token b1 ms (vs base)", "per token b1 merged",
                "per token bN ms (vs base)", "gen tok/s ↑", "b1 ms ↓ (vs base)", "b1 merged", "bN ms ↓ (vs base)",
                "bN merged"):  # empty for every row (not measured, or records from before they were kept)
        if col in out and (out[col] == "").all():
            out = out.drop(columns=col)
    if "commit" in out and out["commit"][out["commit"] != ""].nunique() <= 1:  # one commit: said once, in the caption
        out = out.drop(columns="commit")
    if "activations MB ↓" in out and (out["activations MB ↓"] == "").all():  # records from before it was measured
        out = out.drop(columns="activations MB ↓")
    return out


def setup_lines(summary: pd.DataFrame) -> list[str]:
    """What the rows were measured under (shared settings), for the table caption."""
    lines = []
    for col, label in (("model", "model"), ("train_samples", "train examples"), ("train_subset", "train subset"),
                       ("epochs", "epochs"),
                       ("max_steps", "max steps"), ("batch_size", "batch"), ("max_seq_len", "max length"),
                       ("device", "device"), ("precision", "precision"), ("threads", "torch threads"),
                       ("latency_seq_len", "latency seq len"),
                       ("latency_N", "latency batch N")):
        values = summary[col].dropna().unique() if col in summary else []
        if len(values):
            lines.append(f"{label}: {', '.join(_plain(v) for v in values)}")
    return lines


def _plain(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def provenance_lines(summary: pd.DataFrame) -> list[str]:
    """Where the rows came from: the code (git commit, content hash of peftbench/), libraries and CPU."""
    lines = []
    for col, label, plural in (("git_commit", "commit", "commits"), ("host_code", "peftbench code", "peftbench codes"),
                               ("libraries", "libraries", "libraries"), ("cpu", "CPU", "CPUs")):
        values = sorted({v for cell in summary.get(col, pd.Series(dtype=object)).dropna() for v in str(cell).split(",")})
        if len(values) == 1:
            lines.append(f"{label} {values[0]}")
        elif values:
            lines.append(f"{plural} differ between rows ({', '.join(values)}"
                         + ("; see the commit column" if col == "git_commit" else "") + ")")
    return lines


def markdown_lines(disp: pd.DataFrame) -> list[str]:
    """A display frame as Markdown table lines: header, separator, rows."""
    return ["| " + " | ".join(disp.columns) + " |", "|" + "|".join("---" for _ in disp.columns) + "|",
            *("| " + " | ".join(str(v) for v in row) + " |" for row in disp.itertuples(index=False))]


def _evaluation_waited(summary: pd.DataFrame) -> bool:
    """Every shared-machine row's runs evaluated under the machine lock (records since 2026-12-04)."""
    waits = summary.get("_eval_waits", pd.Series(dtype=object)).dropna()
    return bool(len(waits)) and bool(waits.all())


def to_markdown(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "(no records)\n"
    disp = display_frame(summary, mark=lambda t: f"**{t}**")
    head, sep, *body = markdown_lines(disp)
    provenance = provenance_lines(summary)
    searched = summary[summary.lr_selection.apply(lambda v: isinstance(v, str))] if "lr_selection" in summary else summary[:0]
    candidates = searched[searched.lr_selection == "candidate"]  # a search folder's runs: each one rate of a grid
    searched = searched[searched.lr_selection != "candidate"]
    notes = [
        "",
        "Settings: " + "; ".join(setup_lines(summary)) + ".",
        *(["Code: " + "; ".join(provenance) + "."] if provenance else []),
        "Learning rates: " + (
            "; ".join(sorted({f"{r.config}{_size(r)}: {r.lr_selection}" for r in searched.itertuples()}))
            + " training examples (the reported split never read; search s = the search's compute; 'top of "
            "grid' / 'bottom of grid': the chosen rate is the grid's largest / smallest, so a rate beyond it "
            "might do better" + ("; 'flat grid': every rate scored the same on the held-out examples, so the "
                                 "search told them apart in nothing and the smallest was taken"
                                 if "lr_grid_edge" in searched and (searched.lr_grid_edge == "flat").any() else "")
            + ("; 'tied': another rate scored as well as the chosen one, so nothing points past the edge "
               "(lr_extend grows a grid only at a best rate no other rate matches)"
               if "lr_grid_edge" in searched and searched.lr_grid_edge.astype(str).str.endswith(", tied").any() else "")
            + "); the other "
            "rows at their method's default or --lr." if len(searched) else
            "each row one candidate rate of a learning-rate search (the lr column), scored by its metric on "
            "held-out training examples (the reported split never read)." if len(candidates) else
            "each method's default or --lr (no search)."),
        "params = the method's own trainable parameters (the budget counts these); the task head "
        "is trained by every method and counted separately (head_params in the CSV). "
        "Peak MB: the run process's peak memory during training (CPU: resident set size, which "
        "keeps what the allocator has freed, so that seeds of one configuration can differ by as much "
        "as methods do; CUDA: max allocated); Δ train: its growth over the moment training started, "
        "which excludes what loading and data preparation left behind. "
        + ("Activations MB: what autograd saves for the backward pass of one training step on the "
           "first batch of training examples in file order (distinct tensors, parameters and buffers "
           "excluded; allocator-independent). "
           if "activations MB ↓" in disp else "")
        + (f"vs best: the row's gap to the best row of its task (primary metric) with a {int(100 * LEVEL)}% "
           "confidence interval over seeds (paired t over shared seeds, else a bootstrap); ≈ = the interval "
           "contains 0 (within noise). " if "vs best (95% CI)" in disp else "")
        + ("†: throughput measured while other runs shared the machine (--jobs N; each job on its own CPUs or "
           "GPU; while one times latency the others' training steps " + (
               "and evaluation batches wait, though their data and model loading may run). "
               if _evaluation_waited(summary) else "wait, though their data loading and evaluation may run). ")
           if (summary.get("shared_machine") == True).any() else "")  # noqa: E712
        + ("Bold: the best value of its task in that column (latency: the lowest ratio to the base model; "
           "peak memory only on CUDA). " if any("**" in str(v) for v in disp.values.ravel()) else "")
        + ("Trivial baseline: the majority class (regression: the mean target) of the training examples, "
           "predicted for every evaluation example; what learning nothing scores. "
           if (summary.get("method") == "trivial").any() else "")
        + "Metric: mean ± sample std over seeds; costs: medians over seeds. Latency: median ms "
        "(in brackets the median over seeds of each run's ratio to the base model timed in the "
        "same process); bN = batch N. Throughput and latency in ms come from separate runs: "
        "compare them across rows only as far as the machine's speed at each run's start "
        "(machine GF/s, fp32 matmul) was steady; the ratios are same-session ratios."
        + (" " + _mfu_caption(summary) if "MFU" in disp else "")
        + (" Merge Δ: the largest absolute difference between merged and unmerged outputs (logits) over seeds."
           if "merge Δ" in disp else "")
        + (" Generation: TTFT = time to first token (the prefill), per token = time per further output token, "
           "each for the unmerged model, in brackets over the base model timed in the same process; merged = the "
           "merged model's per-token ratio; gen tok/s = tokens generated per second while evaluating."
           if "per token b1 ms (vs base)" in disp else ""),
    ]
    return "\n".join([head, sep, *body, *notes]) + "\n"


def to_latex(summary: pd.DataFrame) -> str:
    disp = display_frame(summary, mark=lambda t: MARK + t).rename(columns=lambda c: c.replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$"))
    disp = disp.map(lambda v: _latex_cell(str(v)))
    disp.columns = [c.replace("%", r"\%") for c in disp.columns]
    return disp.to_latex(index=False, escape=False)


MARK = "\x00"  # a best value, before escaping


def _latex_cell(v: str) -> str:
    best = v.startswith(MARK)
    v = v.lstrip(MARK).replace("%", r"\%").replace("_", r"\_").replace("≈", r"$\approx$").replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")
    return rf"\textbf{{{v}}}" if best else v


def _html_cell(v) -> str:
    import html

    v = str(v)
    return f"<b>{html.escape(v[1:])}</b>" if v.startswith(MARK) else html.escape(v)


def to_html(summary: pd.DataFrame, table_id: str | None = None) -> str:
    disp = display_frame(summary, mark=lambda t: MARK + t).map(_html_cell)
    return disp.to_html(index=False, border=0, escape=False, table_id=table_id)


def render(summary: pd.DataFrame, fmt: str) -> str:
    summary_out = summary.drop(columns=[c for c in summary.columns if c.startswith("_")])
    if fmt == "csv":
        return summary_out.to_csv(index=False)
    if fmt == "json":
        return summary_out.to_json(orient="records", indent=1)
    if fmt == "latex":
        return to_latex(summary)
    if fmt == "html":
        return to_html(summary)
    return to_markdown(summary)
