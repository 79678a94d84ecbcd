"""Learning rates chosen on held-out training data (``--lr-search`` / ``--lr-grid``), never on the
split the tables report.

For each method configuration x task x budget, a validation split is carved out of the
*training* file (``--val-samples`` examples, seeded by the data seed, stratified by label for
classification), the candidate rates are trained on the remaining training examples (the same
schedule in epochs, so fewer steps than a final run on the whole file: TREC 310 vs 342; the
training subset is drawn from what is left) and scored on that split: the task's
primary metric for classification, the validation loss (mean target-token cross-entropy) for
generation, where generating for every candidate would cost more than training. The best mean
over ``--search-seeds`` wins, ties to the smaller rate (a rate that failed, diverged or scored NaN
on any search seed is out); then the real seeds run at the chosen
rate and are evaluated as usual. Search runs are ordinary runs with records of their own, in
``<out>/search/`` (resumable, and out of the tables); the final records name the search:
candidates, their validation scores, the chosen rate and the compute it cost.

``--lr-extend N`` (sweep files: ``lr_extend``): when the best rate lies at an edge of its grid
and no other rate scored as well, the grid grows by one more rate beyond that edge (the grid's own
step there), up to N times per configuration, so that a search is not cut off by where its grid
happened to end. A best score shared with another rate (a flat grid: every rate the same, as when
no rate leaves the majority class) shows no trend toward that edge, so it does not grow the grid
(before 2026-12-03 it did: ties go to the smaller rate, and CoLA's flat grids grew downward). The final
run's ``lr_selection`` names the grid actually searched: a configuration whose best rate was
inside its grid keeps the run id it had without extension.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

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


@dataclass
class Search:
    """One configuration's search: its final run waiting for a rate, and the candidates."""
    template: dict  # the final run's spec (its default-rate id until the rate is chosen)
    group: dict  # the spec without seed and rate: what every candidate shares
    grid: list  # candidate rates, ascending (grows at an edge with lr_extend)
    candidates: list  # search run ids
    seeds: list
    val_samples: int
    extend: int = 0  # how many rates the grid may still grow by
    added: list = field(default_factory=list)  # rates the extension added, in order


def _candidate(group: dict, rate: float, seed: int, val_samples: int) -> dict:
    s = copy.deepcopy(group)
    s.update(seed=seed, lr=rate, lr_source="search candidate", role="search", latency=None, keep_checkpoint=False,
             validation={"samples": val_samples, "seed": group["data_seed"], "of": "the training file"})
    s["lr_selection"] = "candidate"
    s["run_id"] = run_id(s)
    return s


def _add_rate(search: Search, rate: float, seen: set, out: list) -> None:
    """One candidate per search seed at ``rate``: its id joins the search; a spec not yet in
    ``seen`` (another configuration may share the group) joins ``out``."""
    for seed in search.seeds:
        s = _candidate(search.group, rate, seed, search.val_samples)
        search.candidates.append(s["run_id"])
        if s["run_id"] not in seen:
            seen.add(s["run_id"])
            out.append(s)


def expand(specs: list[dict], grids: dict, val_samples: int, search_seeds: list[int], extend: int = 0):
    """(search specs, searches): every spec whose method has a grid waits for its search (a
    ``Search``), and its group (the spec without seed and rate) gets one search run per candidate
    and search seed."""
    specs_out, searches, seen = [], [], set()
    for spec in specs:
        grid = grids.get(spec["method"])
        if grid is None:
            continue
        group = {k: v for k, v in spec.items() if k not in ("seed", "lr", "lr_source", "run_id")}
        search = Search(dict(spec), group, sorted(grid), [], list(search_seeds), val_samples, extend)
        for rate in search.grid:
            _add_rate(search, rate, seen, specs_out)
        searches.append(search)
    return specs_out, searches


def extend(searches: list[Search], records: dict) -> tuple[list[dict], list[str]]:
    """(search specs, lines): one more rate beyond the edge for every search whose best rate so
    far is at an edge of its grid and that may still grow; the searches are updated in place."""
    specs, lines, seen = [], [], set()
    for search in searches:
        if search.extend <= 0 or len(search.grid) < 2:
            continue
        outcome = choose(search.grid, search.candidates, records)
        chosen, grid = outcome["chosen"], search.grid
        if chosen is not None and tied(outcome["scores"], chosen):
            continue  # the best score is shared (a flat grid, or an edge tied with another rate): no trend to follow
        if chosen == grid[-1]:
            rate = float(f"{grid[-1] * grid[-1] / grid[-2]:.3g}")
        elif chosen == grid[0]:
            rate = float(f"{grid[0] * grid[0] / grid[1]:.3g}")
        else:
            continue
        search.extend -= 1
        search.added.append(rate)
        search.grid = sorted(grid + [rate])
        _add_rate(search, rate, seen, specs)
        lines.append(f"{search.template['label']} on {search.template['task']}: best rate {chosen:g} at the edge "
                     f"of {','.join(f'{r:g}' for r in grid)}; trying {rate:g}")
    return specs, list(dict.fromkeys(lines))  # the seeds of one configuration share its search


def run_search(candidates: list[dict], searches: list[Search], run, on_grown=lambda line: None):
    """A sweep's whole learning-rate search: ``run(specs)`` (records by run id) on the planned
    candidates, then, while a grid's best rate is at an edge it may still grow past (lr_extend),
    on one more rate per such grid. Returns (final specs, lines saying what was chosen, every
    candidate spec run)."""
    asked = list(candidates)
    found = dict(run(asked))
    while True:
        more, grown = extend(searches, found)
        if not more:
            break
        for line in grown:
            on_grown(line)
        asked += more
        found.update(run(more))
    specs, lines = finals(searches, found)
    return specs, lines, asked


def flat(scores: dict) -> bool:
    """Every rate of a search (``choose``'s ``scores``) scored the same: it told them apart in nothing."""
    return len(scores) > 1 and len(set(scores.values())) == 1


def tied(scores: dict, chosen: float) -> bool:
    """Another rate scored as well as the chosen one (a flat grid included)."""
    return list(scores.values()).count(scores.get(f"{chosen:g}")) > 1


def choose(grid, candidates, records: dict) -> dict:
    """The search's outcome for one group: chosen rate and what it cost, from the search records. A
    rate is chosen only if every one of its candidates (one per search seed) ran ok to a finite
    score: a rate that diverged (or scored NaN) on one seed is not rescued by the others."""
    scores: dict[float, list[float]] = {}
    unusable: set[float] = set()
    seconds = steps = 0.0
    failed = []
    metric = None
    for rid in candidates:
        rec = records.get(rid)
        if rec is None:
            failed.append(rid)
            continue
        lr = rec["spec"]["lr"]
        value = None
        if rec["status"] == "ok":
            metric = rec["selection_metric"]
            value = rec["metrics"].get(metric["name"])
            seconds += rec.get("duration_s", 0.0)
            steps += rec["train"]["steps"]
        if value is None or not math.isfinite(value):
            failed.append(rid)
            unusable.add(lr)
            continue
        scores.setdefault(lr, []).append(value)
    means = {lr: math.fsum(v) / len(v) for lr, v in scores.items() if lr not in unusable}
    if not means:
        return {"chosen": None, "error": f"no rate ran ok to a finite score on every search seed "
                                         f"({len(failed)} of {len(candidates)} search runs did not)"}
    higher = metric["direction"] == "higher"
    best = max(means.values()) if higher else min(means.values())
    chosen = min(lr for lr, v in means.items() if v == best)  # ties to the smaller rate
    return {"chosen": chosen, "metric": metric["name"], "direction": metric["direction"],
            "scores": {f"{lr:g}": means[lr] for lr in sorted(means)}, "grid": grid, "failed_runs": len(failed),
            "search_runs": len(candidates), "seconds": seconds, "steps": int(steps)}


def finals(searches: list[Search], records: dict) -> tuple[list[dict], list[str]]:
    """The final specs at the chosen rates, and lines saying what was chosen."""
    specs, lines, seen = [], [], set()
    for search in searches:
        outcome = choose(search.grid, search.candidates, records)
        if search.added:
            outcome["extended_by"] = search.added
        spec = dict(search.template)
        spec["lr_selection"] = (f"search {','.join(f'{r:g}' for r in search.grid)} on {search.val_samples} held-out"
                                + (f" (grown at its edge by {','.join(f'{r:g}' for r in search.added)})"
                                   if search.added else ""))
        spec["lr_search"] = outcome
        if outcome["chosen"] is None:
            spec["lr"] = None
            spec["plan_error"] = f"learning-rate search for {spec['label']} on {spec['task']}: {outcome['error']}"
            spec["plan_error_type"] = "search"
        else:
            spec["lr"], spec["lr_source"] = outcome["chosen"], "searched"
        spec["run_id"] = run_id(spec)
        if spec["run_id"] in seen:  # one final planned by two entries of a sweep file runs once
            continue
        seen.add(spec["run_id"])
        specs.append(spec)
        if outcome["chosen"] is None:
            lines.append(f"{spec['label']} on {spec['task']}: none, {outcome['error']}; its final runs are recorded "
                         "failed")
            continue
        lines.append(f"{spec['label']} on {spec['task']}: lr {outcome.get('chosen')} "
                     f"({outcome.get('metric')} on held-out training data: {outcome.get('scores')})"
                     + ("; a flat grid: every rate scored the same, so the search told them apart in nothing "
                        "(the smallest is taken; a schedule on which the method learns would tell)"
                        if flat(outcome.get("scores") or {}) else ""))
    return specs, list(dict.fromkeys(lines))
