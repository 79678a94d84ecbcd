"""Which method orders flip between a table at default learning rates and one at searched rates:
every pair of configurations (label and budget) present in both whose order differs.

    python benchmarks/rate_flips.py results/sst2-minilm results/benchmark-v1/sst2
"""

from __future__ import annotations

import sys


def table(folder) -> dict:
    from peftbench.records import load_records
    from peftbench.report import records_frame, summarize

    s = summarize(records_frame(load_records(folder).values()))
    s = s[s.role == "method"]
    return {(r.config, r.budget if isinstance(r.budget, str) else "fixed"): (r.metric_mean, r.lr, r.n_seeds)
            for r in s.itertuples()}


def main(default_dir, searched_dir):
    d, q = table(default_dir), table(searched_dir)
    common = sorted(set(d) & set(q), key=str)
    print(f"| configuration | budget | default rate | metric | searched rate | metric |\n|---|---|---|---|---|---|")
    for k in common:
        print(f"| {k[0]} | {k[1]} | {d[k][1]:g} | {d[k][0]:.4f} ({d[k][2]} seeds) | {q[k][1]:g} | {q[k][0]:.4f} "
              f"({q[k][2]} seeds) |")
    flips = [(a, b) for i, a in enumerate(common) for b in common[i + 1:] if (d[a][0] - d[b][0]) * (q[a][0] - q[b][0]) < 0]
    print(f"\n{len(flips)} of {len(common) * (len(common) - 1) // 2} pairs change order:\n")
    for a, b in flips:
        print(f"- {a[0]} @ {a[1]} vs {b[0]} @ {b[1]}: default {d[a][0]:.4f} vs {d[b][0]:.4f}; "
              f"searched {q[a][0]:.4f} vs {q[b][0]:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
