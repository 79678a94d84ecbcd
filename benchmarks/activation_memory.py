"""Training memory by method, exactly: what autograd saves for the backward pass of one training
step (allocator-independent), plus gradient and AdamW-state bytes, at one parameter budget.

Peak RSS on CPU mixes this with the allocator's caching; this script counts the tensors.
Inputs: SST-2 dev sentences padded to the sequence length. Writes results/activation_memory.md.

    PEFTBENCH_DATA=../shared/datasets python benchmarks/activation_memory.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

import torch

from peftbench.bench import build_models, input_texts, inputs_for
from peftbench.errors import PeftbenchError
from peftbench.measure import saved_activation_bytes
from peftbench.models import quiet_transformers
from peftbench.records import write_atomic
from peftbench.runner import environment

VARIANTS = [  # (label, method, options)
    ("full fine-tuning", "full", {}),
    ("BitFit", "bitfit", {}),
    ("LoRA (dropout 0.1, default)", "lora", {}),
    ("LoRA (dropout 0)", "lora", {"dropout": 0.0}),
    ("peft LoRA (dropout 0.1)", "peft-lora", {}),
    ("Adapter (Houlsby)", "adapter", {"placement": "houlsby"}),
    ("Adapter (Pfeiffer)", "adapter", {"placement": "pfeiffer"}),
    ("Prefix", "prefix", {}),
]
MB = 2**20


def main(argv=None):
    quiet_transformers()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--budget", default="lora:r=8")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-lens", default="64,128")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="results/activation_memory.md")
    args = p.parse_args(argv)
    try:
        texts, source = input_texts(args.data_dir)
    except PeftbenchError as e:
        sys.exit(f"Error: {e}")
    models, tokenizer, target = build_models(args.model, args.budget, "cpu", VARIANTS)
    seqs = [int(s) for s in args.seq_lens.split(",")]
    rows = []
    for label, (model, sol, counts) in models.items():
        if counts is None:  # the base model
            continue
        acts = []
        for seq in seqs:
            batch = inputs_for(tokenizer, texts, args.batch, seq, "cpu")
            batch["labels"] = torch.zeros(args.batch, dtype=torch.long)
            acts.append(saved_activation_bytes(model, batch))
        rows.append((label, f"{sol.knob}={sol.knob_value}" if sol else "-", counts.total, acts))
        print(label, [f"{a / MB:.1f} MB" for a in acts], file=sys.stderr, flush=True)
    env = environment("cpu")
    command = "python benchmarks/activation_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Training memory by method: saved activations, gradients, optimizer state",
        "",
        f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `{command.strip()}` "
        f"(peftbench {env['peftbench']}, {env.get('git_commit') or 'no git'}; torch {env['torch']}; model {args.model}).",
        "",
        f"Each method at {target:,} trainable parameters of its own (what LoRA r=8 on query+value trains); "
        f"batch {args.batch}; inputs: {source}. *Activations*: the distinct tensors autograd keeps for the "
        "backward pass of one training-mode forward (parameters excluded) — exact and allocator-independent, "
        "unlike a process's peak RSS. *Grad + AdamW*: 12 bytes per trainable parameter (fp32 gradient and two "
        "moments), head included. Counts, not timings: the same on every machine for the same versions.",
        "",
        "| method | size | trainable (incl. head) | grad + AdamW MB | " + " | ".join(f"activations MB @ {s}" for s in seqs) + " |",
        "|---|---|---|---|" + "---|" * len(seqs),
    ]
    for label, size, trainable, acts in rows:
        lines.append(f"| {label} | {size} | {trainable:,} | {12 * trainable / MB:,.1f} | "
                     + " | ".join(f"{a / MB:,.1f}" for a in acts) + " |")
    write_atomic(args.out, "\n".join(lines) + "\n", text=True)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
