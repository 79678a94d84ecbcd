"""Is a row's gap to the best method of its task real or noise? Confidence intervals over seeds.

Two rows that share seeds were trained on the same data order with the same head
initialisation, so their per-seed differences are paired: a t interval on those differences.
Rows without two shared seeds get a percentile bootstrap of the difference of their means
(fixed resampling seed, so a table is reproducible). A gap whose interval contains 0 is
"within noise" (≈ in the tables).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

LEVEL = 0.95
BOOTSTRAP_SAMPLES = 10_000


def gap_interval(row: dict, best: dict, level: float = LEVEL) -> dict:
    """Gap (row minus best) of the primary metric with a confidence interval over seeds.
    ``row`` / ``best`` map seed -> metric value."""
    common = sorted(set(row) & set(best))
    if len(common) >= 2:
        from scipy import stats  # here: a one-seed table (make run's) does not pay for importing scipy

        d = np.array([row[s] - best[s] for s in common], dtype=float)
        mean = float(d.mean())
        sd = float(d.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * sd / math.sqrt(len(d)))
        return {"gap": mean, "low": mean - half, "high": mean + half, "test": f"paired t, {len(d)} seeds"}
    a = np.array(list(row.values()), dtype=float)
    b = np.array(list(best.values()), dtype=float)
    gap = float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")
    if len(a) < 2 or len(b) < 2:
        return {"gap": gap, "low": float("nan"), "high": float("nan"), "test": "too few seeds for an interval"}
    rng = np.random.default_rng(0)
    diffs = (rng.choice(a, (BOOTSTRAP_SAMPLES, len(a))).mean(1) - rng.choice(b, (BOOTSTRAP_SAMPLES, len(b))).mean(1))
    low, high = np.quantile(diffs, [0.5 - level / 2, 0.5 + level / 2])
    return {"gap": gap, "low": float(low), "high": float(high), "test": f"bootstrap, {len(a)} vs {len(b)} seeds"}


def add_significance(summary: pd.DataFrame) -> pd.DataFrame:
    """Columns ``best`` (the best row of its task, by the primary metric's direction),
    ``gap_to_best``, ``gap_ci_low`` / ``gap_ci_high``, ``gap_test`` and ``within_noise``.
    Baseline rows take no part; rows of a task are compared only under the same primary metric."""
    out = summary.copy()
    out["best"] = False
    out[["gap_to_best", "gap_ci_low", "gap_ci_high"]] = np.nan
    for col in ("gap_test", "within_noise"):  # None: not compared
        out[col] = pd.Series([None] * len(out), index=out.index, dtype=object)
    if out.empty or "metric_mean" not in out:  # no run finished ok: nothing to compare
        return out
    candidates = out[(out.get("role", "method") != "baseline") & out.metric_mean.notna()]
    for (_, _), g in candidates.groupby(["task", "metric"], sort=False):
        lower = g.metric_direction.iloc[0] == "lower"
        best_i = g.metric_mean.idxmin() if lower else g.metric_mean.idxmax()
        out.loc[best_i, "best"] = True
        best_seeds = out.at[best_i, "_seeds"]
        for i in g.index:
            if i == best_i:
                continue
            gi = gap_interval(out.at[i, "_seeds"], best_seeds)
            out.loc[i, ["gap_to_best", "gap_ci_low", "gap_ci_high"]] = [gi["gap"], gi["low"], gi["high"]]
            out.at[i, "gap_test"] = gi["test"]
            if not math.isnan(gi["low"]):
                out.at[i, "within_noise"] = bool(gi["low"] <= 0 <= gi["high"])
    out["best"] = out["best"].astype(bool)
    return out
