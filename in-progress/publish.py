"""Move a finished job's records from in-progress/ into its results/ folder.

    .venv/bin/python in-progress/publish.py benchmark-v1/cola results/benchmark-v1/cola [--dry-run]

Copies every file the job kept (records, search records, checkpoints, predictions) into the folder,
then plans the folder's sweep file now (``peftbench.published.audit``, what tests/test_results.py
checks) and removes what it no longer plans: records of runs left behind (a rate the search no
longer chooses, a grid that no longer grows) and records a later run of the same settings
replaces, with their checkpoints and predictions (git history keeps them). It refuses when a
planned run has no record (the job is not finished). Then: ``make tables``, the READMEs, and the
job's line out of in-progress/jobs. Needs the task data (PEFTBENCH_DATA, default ../shared/datasets).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kept", help="the job's folder under in-progress/ (in-progress/jobs, third field)")
    parser.add_argument("folder", help="the results folder it publishes into")
    parser.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    args = parser.parse_args()
    kept, folder = ROOT / "in-progress" / args.kept, (ROOT / args.folder).resolve()
    if not kept.is_dir() or not (folder / "sweep.toml").is_file():
        print(f"error: need in-progress/{args.kept}/ and {args.folder}/sweep.toml", file=sys.stderr)
        return 2
    os.environ.setdefault("PEFTBENCH_DATA", str(ROOT.parent / "shared" / "datasets"))
    files = [p for p in kept.rglob("*") if p.is_file() and p.name != "sweep-extend.toml"]
    for src in files:
        dst = folder / src.relative_to(kept)
        if not args.dry_run:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    print(f"{len(files)} file(s) from in-progress/{args.kept} {'would be ' if args.dry_run else ''}copied")
    if args.dry_run:
        print("(the audit below is of the folder as it is now)")

    from peftbench.published import audit

    found = audit(folder)
    missing = found.get("search_missing", []) + found["missing"]
    if missing:
        print(f"error: {len(missing)} planned run(s) have no ok record (the job is not finished); "
              f"first: {missing[0][:300]}", file=sys.stderr)
        return 2
    gone = [Path(p) for k in ("search_extra", "search_duplicates", "extra", "duplicates") for p in found.get(k, [])]
    for k in ("search_extra", "search_duplicates", "extra", "duplicates"):
        print(f"{k}: {len(found.get(k, []))} record(s) removed")
    for record in gone:
        base = record.parent.parent  # <folder> or <folder>/search
        for path in (record, base / "checkpoints" / f"{record.stem}.safetensors",
                     base / "predictions" / f"{record.stem}.txt"):
            if path.exists() and not args.dry_run:
                path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
