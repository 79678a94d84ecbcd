"""Native LoRA vs HF peft LoRA training step, same process, interleaved; writes results/train_step.md.

    PEFTBENCH_DATA=../shared/datasets python benchmarks/train_step.py [--steps 60]
"""

from peftbench.stepbench import main

if __name__ == "__main__":
    main()
