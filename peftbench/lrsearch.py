"""Learning rates chosen on held-out training data (``--lr-search`` / ``--lr-grid``), never on the
split the tables report.

For each method configuration x task x budget, a validation split is carved out of the
*training* file (``--val-samples`` examples, seeded by the data seed, stratified by label for
classification), the candidate rates are trained on the remaining training examples (the same
schedule; the training subset is drawn from what is left) and scored on that split: the task's
primary metric for classification, the validation loss (mean target-token cross-entropy) for
generation, where generating for every candidate would cost more than training. The best mean
over ``--search-seeds`` wins, ties to the smaller rate; then the real seeds run at the chosen
rate and are evaluated as usual. Search runs are ordinary runs with records of their own, in
``<out>/search/`` (resumable, and out of the tables); the final records name the search:
candidates, their validation scores, the chosen rate and the compute it cost.
"""

from __future__ import annotations

import copy
import hashlib
import json

from .errors import PeftbenchError
from .records import run_id

#: the default grid: log-spaced around each method's default rate (x 10^(-2/3) ... 10^(2/3))
FACTORS = (0.22, 0.46, 1.0, 2.2, 4.6)
SEARCH_FIELDS = ("role", "validation")


def grid_for(method, explicit: dict, search_all: bool) -> list[float] | None:
    """The candidate rates of a method, or None if its rate is not searched."""
    if method.name in explicit:
        return explicit[method.name]
    if search_all:
        return sorted({float(f"{method.default_lr * f:.2g}") for f in FACTORS})
    return None


def parse_grid(texts, valid) -> dict[str, list[float]]:
    """``lora=1e-4,3e-4,1e-3`` (repeatable, or joined with ';') -> {"lora": [1e-4, 3e-4, 1e-3]}."""
    from .errors import closest

    out: dict[str, list[float]] = {}
    for text in texts or ():
        for part in str(text).split(";"):
            if not part.strip():
                continue
            name, sep, values = part.partition("=")
            name = name.strip()
            if not sep or name not in valid:
                raise PeftbenchError(f"--lr-grid {part.strip()!r}: name a method of --methods, e.g. lora=1e-4,3e-4,1e-3"
                                     f"{closest(name, valid)}")
            try:
                rates = sorted({float(v) for v in values.split(",") if v.strip()})
            except ValueError:
                raise PeftbenchError(f"--lr-grid {part.strip()!r}: the rates must be numbers") from None
            if len(rates) < 2 or any(not r > 0 for r in rates):
                raise PeftbenchError(f"--lr-grid {part.strip()!r}: give at least two positive rates")
            out[name] = rates
    return out


def expand(specs: list[dict], grids: dict, val_samples: int, search_seeds: list[int]):
    """(search specs, final templates): every spec whose method has a grid becomes a template for
    the final run, and its group (the spec without seed and rate) gets one search run per
    candidate and search seed."""
    searches, templates, seen = [], [], set()
    for spec in specs:
        grid = grids.get(spec["method"])
        if grid is None:
            continue
        group = {k: v for k, v in spec.items() if k not in ("seed", "lr", "lr_source", "run_id")}
        key = hashlib.sha256(json.dumps(group, sort_keys=True, default=str).encode()).hexdigest()[:16]
        candidates = []
        for rate in grid:
            for seed in search_seeds:
                s = copy.deepcopy(group)
                s.update(seed=seed, lr=rate, lr_source="search candidate", role="search", latency=None,
                         keep_checkpoint=False,
                         validation={"samples": val_samples, "seed": spec["data_seed"], "of": "the training file"})
                s["lr_selection"] = "candidate"
                s["run_id"] = run_id(s)
                candidates.append(s["run_id"])
                if s["run_id"] not in seen:
                    seen.add(s["run_id"])
                    searches.append(s)
        template = dict(spec)
        template["lr_selection"] = f"search {','.join(f'{r:g}' for r in grid)} on {val_samples} held-out"
        templates.append((template, key, grid, candidates))
    return searches, templates


def choose(grid, candidates, records: dict) -> dict:
    """The search's outcome for one group: chosen rate and what it cost, from the search records."""
    scores: dict[float, list[float]] = {}
    seconds = steps = 0.0
    failed = []
    for rid in candidates:
        rec = records.get(rid)
        if rec is None or rec["status"] != "ok":
            failed.append(rid)
            continue
        metric = rec["selection_metric"]
        scores.setdefault(rec["spec"]["lr"], []).append(rec["metrics"][metric["name"]])
        seconds += rec.get("duration_s", 0.0)
        steps += rec["train"]["steps"]
    if not scores:
        return {"chosen": None, "error": f"every search run failed ({len(failed)})"}
    means = {lr: sum(v) / len(v) for lr, v in scores.items()}
    higher = metric["direction"] == "higher"
    best = max(means.values()) if higher else min(means.values())
    chosen = min(lr for lr, v in means.items() if v == best)  # ties to the smaller rate
    return {"chosen": chosen, "metric": metric["name"], "direction": metric["direction"],
            "scores": {f"{lr:g}": means[lr] for lr in sorted(means)}, "grid": grid, "failed_runs": len(failed),
            "search_runs": len(candidates), "seconds": seconds, "steps": int(steps)}


def finals(templates, records: dict) -> tuple[list[dict], list[str]]:
    """The final specs at the chosen rates, and lines saying what was chosen."""
    specs, lines = [], []
    for template, _, grid, candidates in templates:
        outcome = choose(grid, candidates, records)
        spec = dict(template)
        spec["lr_search"] = outcome
        if outcome["chosen"] is None:
            spec["lr"] = None
            spec["plan_error"] = f"learning-rate search for {spec['label']} on {spec['task']}: {outcome['error']}"
            spec["plan_error_type"] = "search"
        else:
            spec["lr"], spec["lr_source"] = outcome["chosen"], "searched"
        spec["run_id"] = run_id(spec)
        specs.append(spec)
        lines.append(f"{spec['label']} on {spec['task']}: lr {outcome.get('chosen')} "
                     f"({outcome.get('metric')} on held-out training data: {outcome.get('scores')})")
    return specs, list(dict.fromkeys(lines))
