"""Move a finished job's records from in-progress/ into its results/ folder.

    .venv/bin/python in-progress/publish.py benchmark-v1/cola results/benchmark-v1/cola [--dry-run]

Stages the folder with every file the job kept (records, search records, checkpoints, predictions)
in a temporary copy, plans the folder's sweep file there (``peftbench.published.audit``, what
tests/test_results.py checks) and finds what it no longer plans: records of runs left behind (a
rate the search no longer chooses, a grid that no longer grows) and records a later run of the same
settings replaces, with their checkpoints and predictions (git history keeps them). Only if every
planned run has an ok record does it change the folder: copy the job's files in, remove those.
A job's record that is not ok never replaces an ok one. Then: ``make tables``, the READMEs, and the
job's line out of in-progress/jobs. Needs the task data (PEFTBENCH_DATA, default ../shared/datasets).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("search_extra", "search_duplicates", "extra", "duplicates")


def _ok(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("status") == "ok"
    except (OSError, ValueError):
        return False


def _incoming(kept: Path, folder: Path) -> list[Path]:
    """The job's files (relative to its folder) that go in: not its own sweep file, and no record that
    is not ok over an ok one."""
    out = []
    for src in sorted(p for p in kept.rglob("*") if p.is_file() and p.name != "sweep-extend.toml"):
        rel = src.relative_to(kept)
        dst = folder / rel
        if src.suffix == ".json" and dst.exists() and _ok(dst) and not _ok(src):
            continue
        out.append(rel)
    return out


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
    from peftbench.published import audit

    incoming = _incoming(kept, folder)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / folder.name
        shutil.copytree(folder, stage)
        for rel in incoming:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(kept / rel, stage / rel)
        found = audit(stage)
        gone = {k: [Path(p).relative_to(stage) for p in found.get(k, [])] for k in KINDS}
    missing = found.get("search_missing", []) + found["missing"]
    if missing:
        print(f"error: {len(missing)} planned run(s) have no ok record (the job is not finished); nothing "
              f"changed; first: {missing[0][:300]}", file=sys.stderr)
        return 2
    would = "would be " if args.dry_run else ""
    print(f"{len(incoming)} file(s) from in-progress/{args.kept} {would}copied")
    for kind in KINDS:
        print(f"{kind}: {len(gone[kind])} record(s) {would}removed")
    if args.dry_run:
        return 0
    for rel in incoming:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kept / rel, folder / rel)
    for rel in (r for kind in KINDS for r in gone[kind]):
        record = folder / rel
        base = record.parent.parent  # <folder> or <folder>/search
        for path in (record, base / "checkpoints" / f"{record.stem}.safetensors",
                     base / "predictions" / f"{record.stem}.txt"):
            path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
