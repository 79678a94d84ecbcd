"""Training-step benchmark: native ``lora`` vs ``peft-lora`` in one process, steps interleaved.

Both start from the same pretrained weights and head, use the same targets, r, alpha and
dropout, and take AdamW steps on the same real batches in alternation, so that their step
times form a same-run ratio.
"""

from __future__ import annotations

import copy
import datetime as dt
import sys
import time

import numpy as np
import torch

from .data import Collator, tokenize, tokenizer_fingerprint
from .measure import sync
from .method import apply_method
from .models import load_model, load_tokenizer
from .plugins import get_methods, get_task
from .runner import environment, resolve_device, seed_everything
from .tasks import load_task_data
from .train import to_device


def run(model_id="minilm", methods=("lora", "peft-lora"), steps=60, warmup=5, batch_size=32, device="auto",
        data_dir=None, r=8):
    device = resolve_device(device)
    task = get_task("sst2")
    tokenizer = load_tokenizer(model_id)
    data = load_task_data(task, data_dir)
    key = {"task": task.name, "version": task.version, "data": data.fingerprint,
           "tokenizer": tokenizer_fingerprint(tokenizer), "max_len": task.max_seq_len, "split": "train"}
    ds = tokenize(task, data.train, tokenizer, task.max_seq_len, key)
    collate = Collator(tokenizer.pad_token_id, False)
    rng = np.random.default_rng(0)
    batches = [collate([ds[int(i)] for i in rng.choice(len(ds), batch_size, replace=False)])
               for _ in range(steps + warmup)]
    seed_everything(0)
    base = load_model(model_id, task, tokenizer, device)
    registry = get_methods()
    runs = {}
    for name in methods:
        model, counts = apply_method(registry[name], copy.deepcopy(base), r)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
        runs[name] = (model, opt, counts)
    times = {name: [] for name in methods}
    for i, batch in enumerate(batches):
        batch = to_device(batch, device)
        order = methods if i % 2 == 0 else tuple(reversed(methods))
        for name in order:
            model, opt, _ = runs[name]
            sync(device)
            t0 = time.perf_counter()
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return runs, times, environment(device)


def to_markdown(runs, times, env, command) -> str:
    names = list(times)
    ref = np.median(times[names[1]])
    lines = [
        "# Training step: native LoRA vs HF peft LoRA (same process, interleaved)", "",
        f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `{command}`.", "",
        f"Machine: device {env['device']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"{env['torch_threads']} torch threads, fp32 matmul {env['matmul_gflops']} GFLOP/s at the start; "
        f"peftbench {env['peftbench']} ({env.get('git_commit') or 'no git'}).", "",
        "MiniLM (all-MiniLM-L6-v2), r=8, alpha=16, dropout 0.1 on query+value, AdamW; the same "
        "SST-2 batches (32 examples, dynamic padding, max length 64) alternate between the two "
        "models, which of them goes first alternating too.", "",
        "| method | trainable (method + head) | timed steps | median s/step | IQR | ratio of medians | paired ratio: median [IQR] |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        t = np.asarray(times[name])
        q25, q75 = np.percentile(t, [25, 75])
        paired = t / np.asarray(times[names[1]])  # same batch, consecutive steps
        p25, p50, p75 = np.percentile(paired, [25, 50, 75])
        counts = runs[name][2]
        lines.append(f"| {name} | {counts.method:,} + {counts.head:,} | {len(t)} | {np.median(t):.3f} | "
                     f"{q75 - q25:.3f} | {np.median(t) / ref:.3f} | {p50:.3f} [{p25:.3f}, {p75:.3f}] |")
    lines += ["", "The paired ratio divides each step's time by the other model's time on the same batch "
              "(batch lengths vary, so this is the tighter comparison)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    import argparse
    from pathlib import Path

    from .models import quiet_transformers
    from .records import write_atomic

    quiet_transformers()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="results/train_step.md")
    args = p.parse_args(argv)
    runs, times, env = run(args.model, steps=args.steps, device=args.device, data_dir=args.data_dir)
    command = "python benchmarks/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_atomic(Path(args.out), to_markdown(runs, times, env, command.strip()), text=True)
    print(f"wrote {args.out}", file=sys.stderr)
