#!/usr/bin/env bash
# The subspace and ΔW analyses of a `study rank` folder (the LoRA paper's Figures 3-4 and Table 7), each file
# the verbatim output of `peftbench analyze`, run from the repository's root with relative record paths:
#
#   bash results/lora-paper/analyses.sh results/lora-paper/rank [SET] [OUT]
#
# SET: the target matrices whose runs are compared (default q,v; the runs' `target_modules`); OUT: where the
# files go (default: the folder itself). Writes subspace-r8-r64-seed0.txt (+ phi-r8-r64-seed0.png),
# subspace-r8-seed0-r64-seed1.txt, subspace-r8-seed0-seed1.txt, subspace-r64-seed0-seed1.txt
# (+ phi-r64-seed0-seed1.png) and delta-r{4,8,64}-seed0.txt; a pair whose runs are missing is said and skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
FOLDER=${1:?usage: bash results/lora-paper/analyses.sh STUDY_FOLDER [SET] [OUT]}
SET=${2:-q,v}
OUT=${3:-$FOLDER}
PEFTBENCH=${PEFTBENCH:-.venv/bin/peftbench}
RUNS=$(mktemp)
trap 'rm -f "$RUNS"' EXIT
"$PEFTBENCH" report "$FOLDER" --runs --format json > "$RUNS"
record() {  # record <rank> <seed>: the ok record of SET at that rank and seed ("" if none)
  python3 - "$RUNS" "$SET" "$1" "$2" <<'PY'
import json, sys
runs, targets, rank, seed = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], int(sys.argv[4])
hits = [r["record"] for r in runs if r["role"] == "final" and r["status"] == "ok" and r["size"] == f"r={rank}"
        and r["seed"] == seed
        and f"target_modules={targets}" in r["options"].split()]
if len(hits) > 1:
    sys.exit(f"two ok records of {targets} at r={rank}, seed {seed}: {hits}")
print(hits[0] if hits else "")
PY
}
analyze() {  # analyze <file> <subspace|delta> [--plot PNG] -- <rank seed>...
  local file=$1 what=$2 plot=() records=()
  shift 2
  if [ "$1" = --plot ]; then plot=(--plot "$OUT/$2"); shift 2; fi
  shift  # --
  while [ $# -gt 0 ]; do
    local rec
    rec=$(record "$1" "$2")
    [ -n "$rec" ] || { echo "skipped $file: no ok record of $SET at r=$1, seed $2"; return 0; }
    records+=("$rec")
    shift 2
  done
  "$PEFTBENCH" analyze "$what" "${records[@]}" "${plot[@]}" > "$OUT/$file"
  echo "wrote $OUT/$file${plot:+ and ${plot[1]}}"
}
analyze subspace-r8-r64-seed0.txt subspace --plot phi-r8-r64-seed0.png -- 8 0 64 0
analyze subspace-r8-seed0-r64-seed1.txt subspace -- 8 0 64 1
analyze subspace-r8-seed0-seed1.txt subspace -- 8 0 8 1
analyze subspace-r64-seed0-seed1.txt subspace --plot phi-r64-seed0-seed1.png -- 64 0 64 1
for r in 4 8 64; do analyze "delta-r$r-seed0.txt" delta -- "$r" 0; done
