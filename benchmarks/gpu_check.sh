#!/usr/bin/env bash
# The device check, for a machine with one CUDA GPU (under 8 minutes), from the repository root:
#   bash benchmarks/gpu_check.sh [OUT]       (default results/gpu; commit what it writes)
# 1. the CUDA-marked tests (tests/test_cuda.py); 2. a small SST-2 sweep at bf16 (lora, adapter,
# prefix, full; 500 examples, CUDA-event latency at batch 1 and 32); 3. the Table-1-shaped latency
# benchmark at batch 1/8/32 (the LoRA paper's "adapters add 20-30% at batch 1" is a GPU claim).
# It needs the project importable (pip install -e ., or PYTHONPATH with the dependencies) and
# PEFTBENCH_DATA pointing at the datasets; nothing is downloaded.
set -euo pipefail
out=${1:-results/gpu}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
python3 -m peftbench.cli env > "$out/env.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >> "$out/env.txt" 2>/dev/null || true
timeout 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tee "$out/tests.txt"
timeout 240 python3 -m peftbench.cli run --methods lora,adapter,prefix,full --tasks sst2 --train-samples 500 \
  --device cuda --precision bf16 --out "$out/sweep" --no-progress --no-keep-checkpoints 2>&1 | tee "$out/sweep.txt"
python3 -m peftbench.cli report "$out/sweep" -o "$out/sweep/table.md"
timeout 150 python3 benchmarks/latency.py --device cuda --batch-sizes 1,8,32 --seq-lens 64,128 --min-time 0.5 \
  --repeats 2 --out "$out/latency.md" 2>&1 | tail -5
echo "gpu check done: $out"
