"""Run records as rows, and rows as one summary row per configuration: the data every report
(tables, the summary across tasks, plots, the HTML page) is built from.

One row per (task, method configuration, knob value, budget, training setup); metrics are mean ±
sample std over the seeds that finished ok; costs are medians over seeds. The CSV column names are
stable (see ``CSV_COLUMNS``).
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd

from ..records import ID_DEFAULTS
from .stats import add_significance

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
    alongside = _get(rec, "train", "alongside")  # the runs that trained at the same time (since 2026-12-05)
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
        # --jobs N: others trained alongside (records since 2026-12-05 say which did; earlier ones that some might)
        "shared_machine": bool(alongside if isinstance(alongside, list) else _get(rec, "placement", "shared_machine")),
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


def _cpu(rec: dict) -> str | None:
    """The CPU a run ran on with its bf16 units, e.g. "Intel(R) Xeon(R) Processor (avx512_bf16)"
    (records name it from commit 9aabbf3 on; None before)."""
    name = _get(rec, "env", "cpu")
    if not isinstance(name, str):
        return None
    units = _get(rec, "env", "cpu_bf16")
    return name.replace(",", " ") + (f" ({'/'.join(units)})" if units else "")
