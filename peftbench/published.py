"""What a published results folder holds against what its sweep file plans now.

A folder of ``results/`` holds the records of one sweep file (``sweep.toml``). Planned now (nothing
runs), the file asks for runs; its search is answered by the folder's search records of the same
settings, so that grown grids and chosen rates are those the records say. Runs are matched by
their settings, not by run id: an id hashes the plugins' code too, which moves on while what a run
computes does not. ``tests/test_results.py`` checks every folder with :func:`audit`;
``in-progress/publish.py`` uses it to move a finished job's records into its folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from .records import load_records

# what a record's settings must agree on with the plan (identity hashes of code are left out)
SETTINGS = ("method", "label", "options", "knob", "knob_value", "budget", "budget_params", "task", "task_version",
            "model", "seed", "data_seed", "train_samples", "train_subset", "lr", "epochs", "max_steps", "batch_size",
            "max_seq_len", "warmup_ratio", "weight_decay", "max_grad_norm", "latency", "keep_checkpoint", "precision")
DEFAULTS = {"train_subset": "random", "precision": "fp32"}  # fields older records lack, at their default then


def settings(spec: dict) -> dict:
    return {k: spec.get(k, DEFAULTS.get(k)) for k in SETTINGS}


def key(values: dict) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def spec_key(spec: dict) -> str:
    return key(settings(spec) | {"data": spec.get("data_sha")})


def record_key(rec: dict) -> str:
    # a search run made before its data check hashed the training file alone: its spec's data hash,
    # checked at planning time, stands for the data
    spec = rec["spec"]
    return key(settings(spec) | {"data": spec["data_sha"] if spec.get("role") == "search"
                                 else rec["data"]["fingerprint"]})


def _ok(folder: Path) -> dict[str, tuple[Path, dict]]:
    """run id -> (path, record) of the ok records in ``folder``'s records/ (a record is <run id>.json)."""
    return {rid: (folder / "records" / f"{rid}.json", rec)
            for rid, rec in load_records(folder).items() if rec.get("status") == "ok"}


def audit(folder: Path) -> dict:
    """The sweep file of ``folder`` planned now against the folder's ok records. Returns, for the
    search (``search_``) and the final runs: ``missing`` (planned keys no record answers), ``extra``
    (paths of ok records not planned) and ``duplicates`` (paths of ok records whose run another,
    later finished, record of the same settings answers). Needs the task data (PEFTBENCH_DATA)."""
    from . import lrsearch, sweepfile
    from .plan import plan_all

    folder = Path(folder)
    swept, out = sweepfile.load(folder / "sweep.toml")
    if out != folder.resolve():
        raise ValueError(f"{folder}/sweep.toml writes to {out}, not to its own folder")
    plan = plan_all(swept)
    specs = list(plan.specs)
    result = {}
    if plan.searches:
        searched = _ok(folder / "search")
        by_key = _latest(searched.values())
        answer = lambda asked: {s["run_id"]: by_key[k][1] for s in asked  # noqa: E731
                                if (k := spec_key(s)) in by_key}
        finals, _, asked = lrsearch.run_search(plan.searches, plan.waiting, answer)
        result.update({f"search_{k}": v for k, v in _compare(asked, searched.values()).items()})
        specs += finals
    result.update(_compare(specs, _ok(folder).values()))
    return result


def _latest(entries) -> dict[str, tuple[Path, dict]]:
    """record key -> the (path, record) that finished last among those of that key."""
    out = {}
    for path, rec in sorted(entries, key=lambda e: str(e[1].get("finished_at"))):
        out[record_key(rec)] = (path, rec)
    return out


def _compare(specs, entries) -> dict:
    entries = list(entries)
    keys = [spec_key(s) for s in specs]
    if len(set(keys)) < len(keys):  # two runs these settings cannot tell apart: never call one a duplicate
        shared = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"two planned runs share the settings peftbench.published compares ({shared[:200]}...); "
                         "add the field that tells them apart to SETTINGS")
    planned = set(keys)
    latest = _latest(entries)
    return {"missing": sorted(planned - set(latest)),
            "extra": sorted(str(p) for p, r in entries if record_key(r) not in planned),
            "duplicates": sorted(str(p) for p, r in entries
                                 if record_key(r) in planned and latest[record_key(r)][0] != p)}


def moved_on(specs, folder: Path, rerun_failed: bool = False) -> str | None:
    """Why planned runs that will run (no record of their id, or a cancelled one; with ``rerun_failed`` a failed
    one too) are not answered by the ok records of the same settings in ``folder``: what else their ids hash
    differs (mostly a plugin's code: records from before an edit of the method's or the task's file), with the
    commits the records name, in one line; None when no such run has such a record. Those runs run again;
    the records stay, read by ``report`` as they are."""
    from collections import Counter

    from .records import ID_DEFAULTS, ID_FIELDS

    folder = Path(folder)
    have = load_records(folder) if (folder / "records").is_dir() else {}
    by_key = {}
    for rec in sorted((r for r in have.values() if r.get("status") == "ok"), key=lambda r: str(r.get("finished_at"))):
        try:
            by_key[record_key(rec)] = rec
        except (KeyError, TypeError):  # a hand-made or damaged record: it answers no run here either
            continue
    rerun = {None, "cancelled"} | ({"failed", "oom", "diverged", "timeout"} if rerun_failed else set())
    differences, runs, commits = Counter(), 0, set()
    for spec in specs:
        if have.get(spec["run_id"], {}).get("status") not in rerun or (rec := by_key.get(spec_key(spec))) is None:
            continue
        names = {"method_code": f"{spec.get('method')}'s code", "task_code": f"the {spec.get('task')} task's code"}
        differ = [names.get(f, f) for f in ID_FIELDS if f not in SETTINGS
                  and rec["spec"].get(f, ID_DEFAULTS.get(f)) != spec.get(f, ID_DEFAULTS.get(f))]
        differences.update(differ or ["the id's hashing"])
        runs += 1
        commits.add(str((rec.get("env") or {}).get("git_commit") or "unknown")[:7])
    if not runs:
        return None
    return (f"{runs} of {len(specs)} planned run(s) have an ok record of the same settings in {folder} that other "
            f"code made (runs per difference: {', '.join(f'{what} {n}' for what, n in differences.items())}; commit "
            f"{', '.join(sorted(commits))}): they run again here, and resume at that commit; `peftbench report` "
            "reads the records as they are")
