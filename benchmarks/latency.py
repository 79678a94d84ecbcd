"""Reproduce the shape of the LoRA paper's Table 1 on the default model; writes results/latency.md.

    PEFTBENCH_DATA=../shared/datasets python benchmarks/latency.py [--repeats 2] [--out results/latency.md]
"""

from peftbench.bench import main

if __name__ == "__main__":
    main()
