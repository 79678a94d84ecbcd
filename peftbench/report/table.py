"""Comparison tables and plots, built from run records alone.

One row per (task, method configuration, knob value, budget, training setup); metrics
are mean ± sample std over the seeds that finished ok; costs are medians over seeds.
The CSV column names are stable (see ``CSV_COLUMNS``).
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd

from ..records import ID_DEFAULTS
from .stats import LEVEL, add_significance

CSV_COLUMNS = [
    "task", "method", "config", "knob", "knob_value", "n_seeds", "metric", "metric_mean", "metric_std",
    "role", "best", "gap_to_best", "gap_ci_low", "gap_ci_high", "gap_test", "within_noise",
    "trainable_params", "trainable_pct", "head_params", "train_samples_per_s", "status",
    "budget", "budget_params", "budget_deviation_pct", "fixed",
    "tokens_per_s", "throughput_vs_full", "peak_mem_mb", "peak_mem_delta_mb",
    "param_mb", "grad_mb", "optimizer_mb", "activation_mb",
    "latency_base_b1_ms", "latency_b1_ms", "latency_b1_merged_ms",
    "latency_base_bN_ms", "latency_bN_ms", "latency_bN_merged_ms", "latency_N", "latency_seq_len",
    "latency_b1_ratio", "latency_b1_merged_ratio", "latency_bN_ratio", "latency_bN_merged_ratio",
    "effective_seq_len", "checkpoint_bytes",
    "model", "lr", "epochs", "max_steps", "train_samples", "train_subset", "batch_size", "max_seq_len", "device",
    "task_version", "machine_gflops", "threads", "precision", "mfu", "mfu_flops", "generated_tokens_per_s",
    *(f"gen_{what}_{size}{tag}" for size in ("b1", "bN") for what in ("ttft", "per_token")
      for tag in ("_ms", "_ratio", "_merged_ratio")),
    "lr_selection", "lr_grid_edge", "search_seconds", "search_steps", "metric_direction", "merged_max_abs_diff", "git_commit", "host_code",
    "libraries", "cpu",
]
SETUP_FIELDS = ("model", "lr", "lr_selection", "epochs", "max_steps", "train_samples", "batch_size", "max_seq_len",
                "device", "precision",
                "task_version", "data_seed", "train_subset", "warmup_ratio", "weight_decay", "max_grad_norm", "latency", "options",
                # what was evaluated, and how (a row never averages two evaluations)
                "eval_split", "eval_samples", "generation", "metrics", "nproc")
MB = 2**20
METHOD_ORDER = ("full", "bitfit", "lora", "adapter", "prefix")  # then the rest, alphabetically


def _get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _lat(rec, name):
    return _get(rec, "latency", "timings", name, "median_ms")


def record_row(rec: dict) -> dict:
    spec = rec.get("spec", {})
    metrics = rec.get("metrics") or {}
    spec = {**ID_DEFAULTS, **spec}  # records written before a field existed had its default
    if "precision" not in spec and _get(rec, "env", "device") == "cpu":
        spec["precision"] = "fp32"  # before --precision existed, CPU runs were fp32 throughout
    setup = {k: spec.get(k) for k in SETUP_FIELDS}
    row = {
        "run_id": rec["run_id"], "status": rec["status"], "error": rec.get("error"),
        "task": spec.get("task"), "method": spec.get("method"),
        # a learning rate set by --lr is part of the configuration: say so in the label
        "config": spec.get("label") + (f" (lr {spec['lr']:g})" if spec.get("lr_source") == "flag" else "")
        if spec.get("label") else spec.get("label"),
        "knob": spec.get("knob"), "knob_value": spec.get("knob_value"), "seed": spec.get("seed"),
        "budget": spec.get("budget"), "budget_params": spec.get("budget_params"),
        "fixed": spec.get("knob") is None,
        "group": hashlib.sha1(json.dumps([spec.get("task"), spec.get("label"), spec.get("knob_value"),
                                          spec.get("budget"), setup], sort_keys=True, default=str).encode()).hexdigest()[:12],
        "_setup": setup,
        "trainable_params": _get(rec, "params", "method"), "head_params": _get(rec, "params", "head"),
        "trainable_pct": _get(rec, "params", "method_pct"),
        "train_samples_per_s": _get(rec, "train", "samples_per_s"), "tokens_per_s": _get(rec, "train", "tokens_per_s"),
        "steps": _get(rec, "train", "steps"),
        "peak_mem_mb": (_get(rec, "memory", "peak_mem_bytes") or np.nan) / MB,
        "peak_mem_delta_mb": (_get(rec, "memory", "peak_mem_delta_bytes") or np.nan) / MB,
        "param_mb": (_get(rec, "memory", "param_bytes") or np.nan) / MB,
        "grad_mb": (_get(rec, "memory", "grad_bytes") or np.nan) / MB,
        "optimizer_mb": (_get(rec, "memory", "optimizer_bytes") or np.nan) / MB,
        "activation_mb": (_get(rec, "memory", "saved_activation_bytes") or np.nan) / MB,
        "latency_base_b1_ms": _lat(rec, "base_b1"), "latency_b1_ms": _lat(rec, "unmerged_b1"),
        "latency_b1_merged_ms": _lat(rec, "merged_b1"), "latency_base_bN_ms": _lat(rec, "base_bN"),
        "latency_bN_ms": _lat(rec, "unmerged_bN"), "latency_bN_merged_ms": _lat(rec, "merged_bN"),
        "latency_N": _get(rec, "latency", "batch_N"), "latency_seq_len": _get(rec, "latency", "seq_len"),
        # each run's latency over the base model timed in the same process (robust to machine drift)
        **{f"latency_{size}{tag}_ratio": _get(rec, "latency", f"ratio_{name}_{size}")
           for size in ("b1", "bN") for name, tag in (("unmerged", ""), ("merged", "_merged"))},
        "effective_seq_len": _get(rec, "latency", "effective_seq_len"),
        "checkpoint_bytes": _get(rec, "checkpoint", "bytes"),
        "machine_gflops": _get(rec, "env", "matmul_gflops"),
        "threads": _get(rec, "env", "torch_threads"),
        "shared_machine": bool(_get(rec, "placement", "shared_machine")),  # --jobs N: others trained alongside
        # since 2026-12-04 a shared run's evaluation batches wait for another run's latency timing too
        "_eval_waits": "eval_waited_for_latency_s" in rec if _get(rec, "placement", "shared_machine") else None,
        "generated_tokens_per_s": _get(rec, "generation", "tokens_per_s"),
        "lr_selection": spec.get("lr_selection"),
        # a searched rate at the end of its grid: a rate beyond it might do better
        "lr_grid_edge": _edge(spec),
        "search_seconds": _get(spec, "lr_search", "seconds"), "search_steps": _get(spec, "lr_search", "steps"),
        # generation latency: the unmerged model's ms, and unmerged / merged over the base (same process)
        **{f"gen_{what}_{size}{tag}": _get(rec, "latency", key)
           for size in ("b1", "bN") for what in ("ttft", "per_token")
           for tag, key in (("_ms", f"unmerged_{what}_ms_{size}"), ("_ratio", f"ratio_unmerged_{what}_{size}"),
                            ("_merged_ratio", f"ratio_merged_{what}_{size}"))},
        "merged_max_abs_diff": _get(rec, "merge", "max_abs_diff") if _get(rec, "merge") else _get(
            rec, "latency", "merged_max_abs_diff"),
        "git_commit": _short_commit(_get(rec, "env", "git_commit")),
        "host_code": _get(rec, "env", "host_code"),
        "libraries": " ".join(f"{k} {_get(rec, 'env', k)}" for k in ("torch", "transformers", "peft")
                              if _get(rec, "env", k)) or None,  # None: a run that never started names none
        "cpu": _cpu(rec),
        **{k: spec.get(k) for k in ("model", "lr", "epochs", "max_steps", "train_samples", "batch_size",
                                     "max_seq_len", "device", "task_version")},
        "precision": spec.get("precision") or "fp32",  # records from before --precision ran fp32 on CPU
        "mfu": _get(rec, "train", "mfu"),
        # which FLOPs count the MFU divides: counted on a training step, or analytic (records before it existed)
        "mfu_flops": None if _get(rec, "train", "mfu") is None else (
            "counted" if str(_get(rec, "train", "flops_count") or "").startswith("counted") else "analytic"),
        # the peak it divides by: the higher of readings at start and after training, or (before) the start one
        "_mfu_peak": None if _get(rec, "train", "mfu") is None else (
            "two" if _get(rec, "train", "mfu_peak_gflops") is not None else "start"),
        "train_subset": spec.get("train_subset") if spec.get("train_samples") else None,  # None: all examples
    }
    for name, value in metrics.items():
        row[f"m_{name}"] = value
    row["_trivial"] = rec.get("trivial")  # what predicting the majority class / mean target scores
    row["_directions"] = rec.get("metric_directions") or {}  # each metric's better direction (a column's ↑/↓)
    if metrics:
        row["metric"] = next(iter(metrics))
        row["metric_direction"] = (rec.get("metric_directions") or {}).get(row["metric"], "higher")
    if row["budget_params"] and row["trainable_params"] is not None:
        row["budget_deviation_pct"] = 100.0 * (row["trainable_params"] - row["budget_params"]) / row["budget_params"]
    return row


def _edge(spec) -> str | None:
    search = spec.get("lr_search") or {}
    grid, chosen = search.get("grid"), search.get("chosen")
    if not grid or chosen is None or len(grid) < 2:
        return None
    from ..lrsearch import flat, tied

    scores = search.get("scores") or {}
    if flat(scores):  # every rate scored the same: the search chose nothing
        return "flat"
    edge = "top" if chosen == max(grid) else "bottom" if chosen == min(grid) else None
    if edge and tied(scores, chosen):
        edge += ", tied"  # another rate scored as well: no trend toward the edge (lr_extend does not grow it)
    return edge


def _edge_words(edge: str) -> str:
    """', top of grid' / ', bottom of grid, tied' for the lr cell."""
    where, _, tied = edge.partition(", ")
    return f", {where} of grid" + (f", {tied}" if tied else "")


def _size(r) -> str:
    """' r=8' for a row with a knob (the caption tells a method's rows apart by it), else ''."""
    return f" {r.knob}={int(r.knob_value)}" if isinstance(r.knob, str) and pd.notna(r.knob_value) else ""


def _short_commit(commit):
    if not commit:
        return None
    return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def records_frame(records) -> pd.DataFrame:
    return pd.DataFrame([record_row(r) for r in records])


def _status(statuses) -> str:
    counts = pd.Series(list(statuses)).value_counts()
    if list(counts.index) == ["ok"]:
        return "ok"
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _setting_words(key: str, value) -> str:
    """A setting as words for a row label, e.g. ``weight decay 0.01``, ``latency not measured``."""
    if key == "latency":
        if not value:
            return "latency not measured"
        return (f"latency batch N {value.get('batch')}, length {value.get('seq_len') or 'max'}, "
                f">= {value.get('min_reps')} reps and {value.get('min_time_s')} s")
    if isinstance(value, dict):
        value = " ".join(f"{k}={v}" for k, v in sorted(value.items()) if v is not None)
    elif isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return f"{key.replace('_', ' ')} {value}"


def _tell_apart(rows: list[dict]) -> None:
    """Rows that would read alike (same task, config, size, budget) but were run under different
    settings get the differing settings in their config label, e.g. ``lora (weight_decay 0.01)``."""
    clashes: dict = {}
    for row in rows:
        knob = None if pd.isna(row.get("knob_value")) else row.get("knob_value")  # a fixed-size method's is NaN,
        # and no two NaNs are equal as dict keys
        clashes.setdefault((row.get("task"), row.get("config"), knob, row.get("budget")), []).append(row)
    for group in clashes.values():
        if len(group) < 2:
            continue
        keys = [k for k in SETUP_FIELDS if k != "options"  # options are in the label already
                and len({json.dumps(r["_setup"].get(k), sort_keys=True, default=str) for r in group}) > 1]
        for row in group:
            parts = [_setting_words(k, row["_setup"].get(k)) for k in keys]
            if parts:
                row["config"] = f"{row['config']} ({', '.join(parts)})"


def duplicate_seeds(df: pd.DataFrame) -> list[str]:
    """One line per table row holding two ok records of one seed: runs the table does not tell apart
    (other code, data or evaluation split, which the run ids differ in) that its row would average."""
    if df.empty:
        return []
    ok = df[df.status == "ok"]
    out = []
    for _, g in ok.groupby("group", sort=False):
        dup = g[g.seed.duplicated(keep=False)]
        if len(dup):
            first = g.iloc[0]
            seeds = ", ".join(f"seed {s}: {', '.join(sorted(d.run_id))}" for s, d in dup.groupby("seed"))
            out.append(f"{first.task} / {first.config}: ok records share a seed ({seeds}); the row averages "
                       "them: keep one record per seed (move the others to records/superseded/)")
    return out


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration; stable column names (CSV_COLUMNS plus metric columns)."""
    if df.empty:
        return pd.DataFrame(columns=CSV_COLUMNS)
    rows = []
    for _, g in df.groupby("group", sort=False):
        ok = g[g.status == "ok"]
        first = g.iloc[0]
        row = {c: first.get(c) for c in CSV_COLUMNS if c in g}
        row["_setup"] = first.get("_setup") or {}
        row["_directions"] = next((d for d in g.get("_directions", []) if d), {})
        row["n_seeds"] = len(ok)
        row["status"] = _status(g.status)
        metric_cols = [c for c in g.columns if c.startswith("m_")]
        row["metric"] = ok["metric"].iloc[0] if len(ok) and "metric" in ok else None
        row["_seeds"] = {}
        if row["metric"]:
            values = ok[f"m_{row['metric']}"].astype(float)
            # the sum exactly rounded, then 12 decimals: rows with the same seed values tie exactly (their
            # rank and the best row must not depend on the order the records were read in)
            row["metric_mean"] = round(math.fsum(values) / len(values), 12)
            row["metric_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
            row["_seeds"] = dict(zip(ok.seed, values))  # seed -> value, for the paired gap to the best row
        # nothing trained at all (the untuned model on a generation task): the floor, not a contender
        untuned = (first.get("trainable_params") == 0 and not (first.get("head_params") or 0))
        row["role"] = "baseline" if untuned else "method"
        for c in ("git_commit", "host_code", "libraries", "cpu"):  # where the row came from: every distinct value
            values = sorted({v for v in (ok if len(ok) else g)[c] if isinstance(v, str)}) if c in g else []
            row[c] = ",".join(values) if values else None
        if "metric_direction" in ok and len(ok):
            row["metric_direction"] = ok["metric_direction"].iloc[0]
        for c in metric_cols:
            name = c[2:]
            if name != row["metric"] and ok[c].notna().any():
                row[f"{name}_mean"] = ok[c].astype(float).mean()
                row[f"{name}_std"] = ok[c].astype(float).std(ddof=1) if len(ok) > 1 else np.nan
        for c in ("trainable_params", "trainable_pct", "head_params", "train_samples_per_s", "tokens_per_s",
                  "peak_mem_mb", "peak_mem_delta_mb", "param_mb", "grad_mb", "optimizer_mb", "activation_mb",
                  "latency_base_b1_ms", "latency_b1_ms", "latency_b1_merged_ms", "latency_base_bN_ms",
                  "latency_bN_ms", "latency_bN_merged_ms", "latency_b1_ratio", "latency_b1_merged_ratio",
                  "latency_bN_ratio", "latency_bN_merged_ratio", "checkpoint_bytes", "effective_seq_len",
                  "budget_deviation_pct", "machine_gflops", "mfu", "generated_tokens_per_s", "search_seconds",
                  "search_steps",
                  *(c for c in CSV_COLUMNS if c.startswith("gen_"))):
            if c in ok and ok[c].notna().any():
                row[c] = float(ok[c].astype(float).median())
        row["shared_machine"] = bool(ok.shared_machine.any()) if "shared_machine" in ok and len(ok) else False
        waits = ok["_eval_waits"].dropna() if "_eval_waits" in ok else ok[:0]
        row["_eval_waits"] = bool(waits.all()) if len(waits) else None
        for col in ("mfu_flops", "_mfu_peak"):
            if col in ok and ok[col].notna().any():
                kinds = set(ok[col].dropna())
                row[col] = kinds.pop() if len(kinds) == 1 else "mixed"
        if "merged_max_abs_diff" in ok and ok.merged_max_abs_diff.notna().any():  # the worst seed
            row["merged_max_abs_diff"] = float(ok.merged_max_abs_diff.astype(float).max())
        rows.append(row)
    _tell_apart(rows)
    rows += baseline_rows(df, rows)
    out = pd.DataFrame(rows).drop(columns="_setup")
    order = {name: i for i, name in enumerate(METHOD_ORDER)}
    out["_rank"] = [-1 if role == "baseline" else order.get(m, len(order)) for m, role in zip(out.method, out.role)]
    out["_budget"] = out.budget_params.fillna(-1) if "budget_params" in out else -1
    out = out.sort_values(["task", "_budget", "_rank", "config", "knob_value"], kind="stable", na_position="first")
    out = out.drop(columns=["_rank", "_budget"]).reset_index(drop=True)
    # throughput relative to full fine-tuning on the same task and training setup
    out["throughput_vs_full"] = np.nan
    if "train_samples_per_s" in out:
        same = [c for c in ("task", "model", "batch_size", "max_seq_len", "device", "precision", "threads",
                            "train_samples", "epochs", "max_steps") if c in out]
        for i, r in out.iterrows():
            full = out[out.method == "full"]
            for c in same:
                full = full[(full[c] == r[c]) | (full[c].isna() & pd.isna(r[c]))]
            if len(full) and full.train_samples_per_s.notna().any():
                out.loc[i, "throughput_vs_full"] = r.train_samples_per_s / full.train_samples_per_s.dropna().iloc[0]
    out = add_significance(out)
    extra = [c for c in out.columns if c not in CSV_COLUMNS]
    for c in CSV_COLUMNS:
        if c not in out:
            out[c] = np.nan
    return out[CSV_COLUMNS + extra]


def baseline_rows(df: pd.DataFrame, rows: list[dict]) -> list[dict]:
    """One "learned nothing" row per task from the runs' own records of it (the majority class, or
    the mean target, of the training examples predicted for every evaluation example), for tasks
    that have no untuned-model row already."""
    if "_trivial" not in df:
        return []
    out = []
    have = {r["task"] for r in rows if r.get("role") == "baseline"}
    for task, g in df[df.status == "ok"].groupby("task", sort=False):
        found = [t for t in g._trivial if isinstance(t, dict)]
        if task in have or not found:
            continue
        counts: dict = {}
        for t in found:
            counts.setdefault(json.dumps(t, sort_keys=True), []).append(t)
        trivial = max(counts.values(), key=len)[0]  # the runs' training subsets agree on it (or most do)
        metric = next((r["metric"] for r in rows if r["task"] == task and r.get("metric")), None)
        if metric not in trivial["metrics"]:
            continue
        label = "mean target" if "mean" in trivial["kind"] else "majority class"
        row = {"task": task, "method": "trivial", "config": f"trivial baseline ({label})", "role": "baseline",
               "metric": metric, "metric_mean": trivial["metrics"][metric], "metric_std": np.nan, "n_seeds": 0,
               "status": "ok" if len(counts) == 1 else f"{len(counts)} different baselines; most common shown",
               "metric_direction": next((r.get("metric_direction") for r in rows if r["task"] == task), "higher"),
               "fixed": True, "_seeds": {}, "_setup": {}, "trainable_params": np.nan,
               "_directions": next((r.get("_directions") for r in rows if r["task"] == task and r.get("_directions")), {})}
        row.update({f"{name}_mean": v for name, v in trivial["metrics"].items() if name != metric})
        out.append(row)
    return out


# -- rendering ---------------------------------------------------------------------------
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
        peak = ("over the matmul peak at its precision, the higher of two short readings (0.1-0.3 s each: at the "
                "run's start and right after training), taken while another run trained where † is shown (a run "
                "whose readings were both low shows above 100%)")
    elif "two" in peaks:
        peak = ("over the matmul peak at its precision: short readings (0.1-0.3 s), the higher of the run's start "
                "and after training for runs that recorded both, the start's alone for the others, taken while "
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


def _cpu(rec: dict) -> str | None:
    """The CPU a run ran on with its bf16 units, e.g. "Intel(R) Xeon(R) Processor (avx512_bf16)"
    (records name it from commit 9aabbf3 on; None before)."""
    name = _get(rec, "env", "cpu")
    if not isinstance(name, str):
        return None
    units = _get(rec, "env", "cpu_bf16")
    return name.replace(",", " ") + (f" ({'/'.join(units)})" if units else "")


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
