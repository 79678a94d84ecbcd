"""Where the main job's wall time goes: `peftbench run --methods lora,adapter` (what `make run`
runs after the install), decomposed from the records' own phase timings.

    PEFTBENCH_DATA=../shared/datasets HF_HUB_OFFLINE=1 python benchmarks/overhead.py [extra run flags]

Prints a Markdown table: the sweep process (start, imports, planning, fork server, report)
as the total wall time minus the runs' durations; per run the time before the first phase
(process start from the fork server), setup (plugins, device, the machine-speed reading), data,
model load + method, training, evaluation, checkpoint, merge check and latency.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peftbench.runner import PHASES

MEASURED = ("train", "eval", "latency")  # what the job is for; the rest is harness overhead


def main():
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "peftbench.cli", "run", "--methods", "lora,adapter", "--no-progress",
               "--out", out, *sys.argv[1:]]
        start = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        total = time.perf_counter() - start
        if res.returncode != 0:
            sys.exit(res.stderr)
        records = [json.loads(p.read_text()) for p in sorted(Path(out, "records").glob("*.json"))]
    rows = {"sweep process (start, imports, plan, fork server, report)": total - sum(r["duration_s"] for r in records)}
    for r in records:
        phases = r["phases_s"]
        rows[f"{r['spec']['label']}: run start (process)"] = r["duration_s"] - sum(phases.values())
        for name in PHASES:
            rows[f"{r['spec']['label']}: {name}"] = phases.get(name, 0.0)
    overhead = sum(v for k, v in rows.items() if k.split(": ")[-1] not in MEASURED)
    print(f"`peftbench run --methods lora,adapter {' '.join(sys.argv[1:])}`: {total:.1f} s wall "
          f"(precision {records[0]['spec']['precision']}); training, evaluation and latency {total - overhead:.1f} s, "
          f"everything else {overhead:.1f} s ({100 * overhead / total:.1f}%).\n")
    print("| part | seconds | % of wall |")
    print("|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.1f} | {100 * seconds / total:.1f}% |")
    print("\nThe job's own output (its table):\n")
    print(res.stdout)


if __name__ == "__main__":
    main()
