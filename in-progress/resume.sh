#!/usr/bin/env bash
# Resume the long runs whose records are kept in in-progress/ (see README.md there): each at the one
# commit all its records come from, in its own checkout, on the CPU cores its line names, in the background.
#
#   bash in-progress/resume.sh [start]    # start (or resume) every job of in-progress/jobs
#   bash in-progress/resume.sh save       # copy the jobs' new records back here (commit them)
#   bash in-progress/resume.sh stop       # end the chains; a run in progress is recorded as cancelled
#
# Jobs on the same CPU cores run one after the other, in the file's order (one chain per set of cores); a
# job holds a lock while it runs, so a job already running is waited for, never started twice, and a
# job that is complete only plans and skips its ok records. A chain that ends with the jobs file changed
# since it started (a job added meanwhile) starts again (log ../peftbench-runs/rechain.log).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${PEFTBENCH_RUNS:-$ROOT/../peftbench-runs}  # the checkouts, one per commit
JOBS=in-progress/jobs  # name|commit|folder kept here|folder in its checkout|cores|command, one job a line
MODE=${1:-start}
case $MODE in start|save|stop|rechain) ;; *) echo "usage: bash in-progress/resume.sh [start|save|stop]" >&2; exit 2;; esac
mkdir -p "$RUNS"
# rechain: what a chain that ended with the jobs file changed runs (see below); not after a stop
if [ "$MODE" = rechain ]; then
  [ -e "$RUNS/stopped" ] && { echo "$(date -u +%FT%TZ) not started again: stopped since"; exit 0; }
  MODE=start
fi
if [ "$MODE" = start ]; then
  rm -f "$RUNS/stopped"
  exec 8> "$RUNS/start.lock"  # one start at a time (their checkouts, installs and logs would collide)
  flock 8
fi

if [ "$MODE" = stop ]; then
  touch "$RUNS/stopped"  # a chain's restart pending now does not start
  for lock in "$RUNS"/cpus-*.lock; do
    [ -f "$lock" ] || continue
    pidfile=${lock%.lock}.pid
    if flock -n "$lock" true; then  # no chain holds it: nothing runs there (a pid in the file may be reused)
      rm -f "$pidfile"
      continue
    fi
    pgid=$(cat "$pidfile")
    # the chain's shell first (else it starts the next job), then Ctrl-C to its sweep, which records
    # the run in progress as cancelled; what has not ended after 60 s is terminated
    pkill -KILL -g "$pgid" -x bash || true
    kill -INT -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 60); do pgrep -g "$pgid" > /dev/null || break; sleep 1; done
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 10); do pgrep -g "$pgid" > /dev/null || break; sleep 1; done
    rm -f "$pidfile"
    echo "stopped the chain of $(basename "${lock%.lock}")"
  done
  exit 0
fi

declare -A CHAIN=()
JOBS_TEXT=$(cat "$JOBS")  # read once: the restart below compares the file with what this start ran
while IFS='|' read -r -u 3 name commit kept there cpus cmd; do
  tree=$RUNS/${commit:0:7}
  if [ "$MODE" = save ]; then
    [ -d "$tree/$there" ] || { echo "$name: no checkout of it here ($tree/$there): nothing to save"; continue; }
    mkdir -p "in-progress/$kept"
    # what the job wrote, and its sweep file where its commit does not hold it: the files its commit does
    # not track (a folder it resumes may hold published records of other commits: those come back from
    # git), records, kept checkpoints, a generation task's predictions and sweep files only, no superseded
    # or temporary files
    ( cd "$tree/$there" && git ls-files --others -- . ) \
      | { grep -E '\.(json|safetensors|toml)$|(^|/)predictions/[^/]+\.txt$' || true; } \
      | { grep -vE '(^|/)(superseded/|\.)' || true; } | while read -r f; do
      mkdir -p "in-progress/$kept/$(dirname "$f")" && cp "$tree/$there/$f" "in-progress/$kept/$f"; done
    echo "$name: $(find "in-progress/$kept" -path '*/records/*.json' | wc -l) record(s) in in-progress/$kept"
    continue
  fi
  # a bf16 job on a CPU without bf16 units would run many times slower (bf16 matmuls emulated): skip it
  sweep=$(grep -o -- '--config [^ ]*' <<< "$cmd" | cut -d' ' -f2 || true)  # the kept copy, else the commit's
  if { grep -q -- '--precision bf16' <<< "$cmd" || { [ -n "$sweep" ] && { cat "in-progress/$kept/${sweep##*/}" 2>/dev/null \
        || git -C "$ROOT" show "$commit:$sweep"; } | grep -q '^precision *= *"bf16"'; }; } \
        && ! grep -qwE 'amx_bf16|avx512_bf16' /proc/cpuinfo; then
    echo "$name: not started: it runs in bf16 and this CPU has neither amx_bf16 nor avx512_bf16 (bf16 emulated)"
    continue
  fi
  if [ ! -d "$tree" ]; then
    git clone -q "$ROOT" "$tree" && git -C "$tree" checkout -q "$commit"
  fi
  [ "$(git -C "$tree" rev-parse HEAD)" = "$commit" ] || { echo "$tree is not at $commit"; exit 2; }
  [ -z "$(git -C "$tree" status --porcelain --untracked-files=no)" ] || { echo "$tree has modified files (its \
records would say ${commit:0:7}-dirty): git -C $tree status"; exit 2; }
  [ -x "$tree/.venv/bin/peftbench" ] || make -C "$tree" install > "$RUNS/$name.install.log" 2>&1 \
    || { echo "$name: make install failed at ${commit:0:7}, see $RUNS/$name.install.log"; exit 1; }
  mkdir -p "$tree/$there"
  # never overwrite what the checkout has (a job running now writes newer records than these); none of
  # these files is tracked there, so the checkout stays clean (a record of a modified tree says -dirty)
  if [ -d "in-progress/$kept" ]; then
    ( cd "in-progress/$kept" && find . -type f ) | while read -r f; do
      [ -e "$tree/$there/$f" ] || { mkdir -p "$tree/$there/$(dirname "$f")" && cp "in-progress/$kept/$f" "$tree/$there/$f"; }
    done
  fi
  CHAIN[$cpus]+="cd $(printf %q "$tree") && echo \"\$(date -u +%FT%TZ) $name: its turn\" >> $(printf %q "$RUNS/$name.log") && \
flock $(printf %q "$RUNS/$name.lock") .venv/bin/$cmd >> $(printf %q "$RUNS/$name.log") 2>&1; "
  echo "$name: queued on CPU(s) $cpus at ${commit:0:7} (log $RUNS/$name.log)"
done 3< <(grep -v '^#' <<< "$JOBS_TEXT")
[ "$MODE" = save ] && exit 0

# A chain that ends (not stopped) with in-progress/jobs changed since it started (a job added or published)
# starts the jobs again: the new ones run, the finished ones only plan and skip their ok records.
sum=$(md5sum <<< "$JOBS_TEXT")
for cpus in "${!CHAIN[@]}"; do
  CHAIN[$cpus]+="[ \"\$(md5sum <<< \"\$(cat $(printf %q "$ROOT/$JOBS"))\")\" = \"$sum\" ] || { setsid nohup bash -c \
'sleep 10; exec bash \"\$0\" rechain' $(printf %q "$ROOT/in-progress/resume.sh") >> $(printf %q "$RUNS/rechain.log") 2>&1 < /dev/null 9>&- & }; "
done
[ -e "$RUNS/stopped" ] && { echo "stopped while this start prepared the jobs: no chain started"; exit 0; }
for cpus in "${!CHAIN[@]}"; do
  lock=$RUNS/cpus-${cpus//,/-}.lock
  if ! flock -n "$lock" true; then
    echo "CPU(s) $cpus: a chain of jobs runs there already (holding $lock): not starting another"
    continue
  fi
  # The chain takes the lock on its fd 9 without waiting (two starts at once: one chain) and, holding it,
  # writes its process group for `stop`; every process of the chain inherits fd 9, so the lock is free
  # only once the last of them (a sweep recording its cancellation) has ended; its restart closes it.
  # A command started with & here would ignore SIGINT (bash does that in a
  # script), and so would the sweep: env gives it back its default. One torch thread per run: a sweep
  # with --jobs N gives each run its own share of these CPUs.
  OMP_NUM_THREADS=1 PEFTBENCH_DATA=${PEFTBENCH_DATA:-$ROOT/../shared/datasets} HF_HUB_OFFLINE=1 \
    setsid nohup env --default-signal=INT taskset -c "$cpus" bash -c \
    "exec 9>> $(printf %q "$lock"); flock -n 9 || exit 0; \
ps -o pgid= -p \$\$ | tr -d ' ' > $(printf %q "${lock%.lock}.pid"); ${CHAIN[$cpus]}" \
    >> "${lock%.lock}.log" 2>&1 < /dev/null 8>&- &
  echo "CPU(s) $cpus: chain started"
done
