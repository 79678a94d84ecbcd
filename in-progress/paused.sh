#!/usr/bin/env bash
# Run a command while the background sweeps' training steps (and evaluation batches) wait: what they
# time stays their own.
#
#   bash in-progress/paused.sh make tables
#
# A pause flag named by this shell's pid in every sweep folder's machine-lock pause directory under
# ../peftbench-runs (peftbench/executors/lock.py: the flag a run raises to time latency alone), then the
# steps running now are waited for (the lock they hold shared, taken exclusively once); a step's timing
# starts after its wait. Jobs at a commit from 2026-12-04 on (the evaluation lock) hold their evaluation
# batches the same way; at an earlier commit (e2e's 88f6a40, the SmolLM2 studies' 5d86575) evaluation
# still runs meanwhile, and every job's data loading and latency timing may, so keep such commands short.
set -uo pipefail
RUNS=${PEFTBENCH_RUNS:-$(cd "$(dirname "$0")/.." && pwd)/../peftbench-runs}
mapfile -t dirs < <(find "$RUNS" -maxdepth 8 -type d -name '.machine.lock.pause' 2>/dev/null)
for d in "${dirs[@]}"; do touch "$d/$$"; done
trap 'for d in "${dirs[@]}"; do rm -f "$d/$$"; done' EXIT
for d in "${dirs[@]}"; do flock -x "${d%.pause}" true; done
"$@"
