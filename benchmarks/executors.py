"""The same small sweep (8 short runs of a tiny BERT) under each executor: wall time, and what
each adds per run beyond the runs' own time.

    PEFTBENCH_DATA=../shared/datasets HF_HUB_OFFLINE=1 python benchmarks/executors.py > results/executors.md

Per-run overhead = (wall time x concurrency - sum of the runs' own durations) / runs, where a
run's own duration is what its record measured in its process (start to record, training and
evaluation included) and concurrency is 1 for one run at a time, 2 for --jobs 2 and for submitit's
local cluster and for Ray's local cluster (one run per CPU: 2 here): the time the executor spends
starting, placing and collecting runs (Ray's includes starting its cluster).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXECUTORS = {
    "local, one run at a time": [],
    "local --jobs 2": ["--jobs", "2"],
    "ray, a local cluster started by the sweep": ["--executor", "ray"],
    "slurm via submitit, --slurm-cluster local": ["--executor", "slurm", "--slurm-cluster", "local"],
}


def tiny_model(folder: Path) -> str:
    from transformers import AutoTokenizer

    from peftbench import testing
    from peftbench.models import resolve_model

    model = testing.tiny_model("bert", vocab=30522)  # MiniLM's tokenizer
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model("minilm")).save_pretrained(folder)
    return str(folder)


def main():
    cpus = len(os.sched_getaffinity(0))
    concurrency = {"local, one run at a time": 1, "local --jobs 2": 2, "ray, a local cluster started by the sweep": cpus,
                   "slurm via submitit, --slurm-cluster local": cpus}
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp) / "tiny")
        rows = []
        for name, flags in EXECUTORS.items():
            out = Path(tmp) / name.split()[0] / str(len(rows))
            cmd = [sys.executable, "-m", "peftbench.cli", "run", "--model", model, "--methods", "lora,adapter",
                   "--seeds", "0,1,2,3", "--train-samples", "256", "--max-steps", "40", "--batch-size", "8",
                   "--no-latency", "--no-progress", "--out", str(out), *flags]
            start = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if res.returncode != 0:
                sys.exit(res.stderr)
            recs = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
            own = sum(r["duration_s"] for r in recs)
            k = concurrency[name]
            rows.append((name, len(recs), wall, own / len(recs), (wall * k - own) / len(recs)))
    print("| executor | runs | wall s | mean run s (its own process) | overhead per run s |")
    print("|---|---|---|---|---|")
    for name, n, wall, mean, over in rows:
        print(f"| {name} | {n} | {wall:.1f} | {mean:.2f} | {over:.2f} |")
    print(f"\n{len(os.sched_getaffinity(0))} CPUs; tiny BERT (2 layers, hidden 32), 40 steps at batch 8 per run, "
          "no latency; wall = the whole `peftbench run` command (imports, planning, report included).")


if __name__ == "__main__":
    main()
