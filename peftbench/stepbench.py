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
        data_dir=None, r=8, task_name="sst2", precision="fp32"):
    from .precision import autocast

    device = resolve_device(device)
    task = get_task(task_name)
    tokenizer = load_tokenizer(model_id)
    data = load_task_data(task, data_dir)
    key = {"task": task.name, "version": task.version, "data": data.fingerprint,
           "tokenizer": tokenizer_fingerprint(tokenizer), "max_len": task.max_seq_len, "split": "train"}
    if task.kind == "generation":
        from .generation.run import prepare

        ds, _, collate = prepare(task, data, tokenizer, {"max_seq_len": task.max_seq_len}, key)
    else:
        ds = tokenize(task, data.train, tokenizer, task.max_seq_len, key)
        collate = Collator(tokenizer.pad_token_id, task.is_regression)
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
    parity = copied_weights_parity(runs, to_device(batches[0], device)) if tuple(methods) == ("lora", "peft-lora") else None
    times = {name: [] for name in methods}
    for i, batch in enumerate(batches):
        batch = to_device(batch, device)
        order = methods if i % 2 == 0 else tuple(reversed(methods))
        for name in order:
            model, opt, _ = runs[name]
            sync(device)
            t0 = time.perf_counter()
            with autocast(device, precision):
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    env = environment(device, precision)
    env.update(model=model_id, task=task.name, r=r, batch_size=batch_size, precision=precision, parity=parity,
               tokens=float(np.mean([int(b["attention_mask"].sum()) / len(b["attention_mask"]) for b in batches])))
    return runs, times, env


def copied_weights_parity(runs, batch) -> dict:
    """Native LoRA's A and B (B made non-zero) copied into peft's: the largest output difference
    in fp32, unmerged and merged, on copies (the benchmarked models start from B = 0)."""
    from .testing import copy_native_lora_into_peft

    native, bridged = copy.deepcopy(runs["lora"][0]).eval(), copy.deepcopy(runs["peft-lora"][0]).eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        untouched = native(**inputs).logits  # B = 0: the base model's outputs
        copied = copy_native_lora_into_peft(native, bridged, std=0.02)
        a, b = native(**inputs).logits, bridged(**inputs).logits
        registry = get_methods()
        ma = registry["lora"].merge(native)(**inputs).logits
        mb = registry["peft-lora"].merge(bridged)(**inputs).logits
    return {"copied_tensors": copied, "max_abs_diff": float((a - b).abs().max()),
            "max_abs_diff_merged": float((ma - mb).abs().max()), "max_abs_logit": float(a.abs().max()),
            "max_abs_update": float((a - untouched).abs().max())}


def to_markdown(runs, times, env, command) -> str:
    names = list(times)
    ref = np.median(times[names[1]])
    par = env.get("parity")
    lines = [
        "# Training step: native LoRA vs HF peft LoRA (same process, interleaved)", "",
        f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `{command}`.", "",
        f"Machine: device {env['device']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"{env['torch_threads']} torch threads, fp32 matmul {env['matmul_gflops']} GFLOP/s right after the timed steps; "
        f"peftbench {env['peftbench']} ({env.get('git_commit') or 'no git'}).", "",
        f"Model {env['model']}, task {env['task']}, r={env['r']} with each implementation's defaults (alpha 16, "
        f"dropout 0.1, the model's query and value projections), AdamW, precision {env['precision']}; the same "
        f"batches ({env['batch_size']} examples, dynamic padding, {env['tokens']:.0f} tokens per example on "
        "average) alternate between the two models, which of them goes first alternating too.", "",
    ]
    if par:
        lines += [f"Parity with copied weights (native A and B, B made non-zero, copied into peft's; fp32, eval "
                  f"mode, the first batch): {par['copied_tensors']} tensors copied, max |logit difference| "
                  f"{par['max_abs_diff']:.2e} unmerged and {par['max_abs_diff_merged']:.2e} merged "
                  f"(logits up to {par['max_abs_logit']:.1f}; the copied update itself moves them by up to "
                  f"{par['max_abs_update']:.2f}).", ""]
    lines += [
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
    p.add_argument("--task", default="sst2")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="results/train_step.md")
    args = p.parse_args(argv)
    runs, times, env = run(args.model, steps=args.steps, device=args.device, data_dir=args.data_dir, r=args.r,
                           batch_size=args.batch_size, task_name=args.task, precision=args.precision)
    command = "python benchmarks/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_atomic(Path(args.out), to_markdown(runs, times, env, command.strip()), text=True)
    print(f"wrote {args.out}", file=sys.stderr)
