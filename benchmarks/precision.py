"""Training-step time, fp32 vs bf16 autocast, per built-in method, same process, interleaved.

For each model (MiniLM on SST-2 batches, SmolLM2 on E2E batches) and method at the LoRA-budget
knob, one model is trained on the same real batches alternating precisions step by step, so
each pair of step times is a same-moment ratio; medians over the timed steps. Prints Markdown
(append it to results/precision.md):

    PEFTBENCH_DATA=../shared/datasets python benchmarks/precision.py [--steps 8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

import numpy as np
import torch

from peftbench.method import apply_method
from peftbench.models import load_model, load_tokenizer
from peftbench.plugins import get_method, get_task
from peftbench.precision import autocast
from peftbench.runner import environment, seed_everything
from peftbench.tasks import load_task_data

SETUPS = {
    # model, task, batch size, methods with their knob at the published budgets
    "minilm": ("sst2", 32, {"full": None, "bitfit": None, "lora": 8, "adapter": 7, "prefix": 16}),
    "smollm2": ("e2e", 16, {"full": None, "lora": 4, "adapter": 3, "prefix": 20}),
}


def batches(model_id, task, tokenizer, n, batch_size):
    from peftbench import data as datamod

    data = load_task_data(task, None)
    key = {"task": task.name, "data": data.fingerprint, "tokenizer": datamod.tokenizer_fingerprint(tokenizer),
           "max_len": task.max_seq_len, "split": "train", "version": task.version}
    if task.kind == "generation":
        from peftbench.generation.data import Collator, tokenize_pairs

        ds, collate = tokenize_pairs(task, data.train, tokenizer, task.max_seq_len, key), Collator(tokenizer.pad_token_id)
    else:
        ds = datamod.tokenize(task, data.train, tokenizer, task.max_seq_len, key)
        collate = datamod.Collator(tokenizer.pad_token_id, task.is_regression)
    rng = np.random.default_rng(0)
    return [collate([ds[int(i)] for i in rng.choice(len(ds), batch_size, replace=False)]) for _ in range(n)]


def step_times(model, batch_list, precisions, warmup=2):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    times = {p: [] for p in precisions}
    model.train()
    for i, batch in enumerate(batch_list):
        order = precisions if i % 2 == 0 else precisions[::-1]  # alternate who goes first
        for precision in order:
            t0 = time.perf_counter()
            with autocast("cpu", precision):
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= warmup:
                times[precision].append(time.perf_counter() - t0)
    return {p: float(np.median(t)) for p, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--models", default="minilm,smollm2")
    args = parser.parse_args()
    env = environment("cpu", "bf16")
    print(f"Step time, fp32 vs bf16 autocast (CPU {env['machine']}, {env['torch_threads']} threads; matmul "
          f"{env['matmul_gflops']} GFLOP/s fp32, {env['matmul_gflops_bf16']} bf16 at the start; torch {env['torch']}; "
          f"{dt.datetime.now():%Y-%m-%d}; `python benchmarks/precision.py --steps {args.steps}`), medians of "
          f"{args.steps} steps after 2 warm-up, the two precisions alternating on the same batches:\n")
    print("| model | batch | method | fp32 s/step | bf16 s/step | speed-up |")
    print("|---|---|---|---|---|---|")
    for model_id in args.models.split(","):
        task_name, batch_size, methods = SETUPS[model_id]
        task = get_task(task_name)
        tokenizer = load_tokenizer(model_id)
        data = batches(model_id, task, tokenizer, args.steps + 2, batch_size)
        shape = "x".join(map(str, data[0]["input_ids"].shape))
        for name, knob in methods.items():
            seed_everything(0)
            model, _ = apply_method(get_method(name), load_model(model_id, task, tokenizer), knob)
            t = step_times(model, data, ["fp32", "bf16"])
            print(f"| {model_id} | {shape} | {name} | {t['fp32']:.3f} | {t['bf16']:.3f} | {t['fp32'] / t['bf16']:.2f}x |",
                  flush=True)
            del model


if __name__ == "__main__":
    main()
