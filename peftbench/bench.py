"""Inference-latency benchmark in the shape of the LoRA paper's Table 1.

Base model, LoRA unmerged, LoRA merged, Houlsby and Pfeiffer adapters and prefix-tuning,
each at the same trainable-parameter budget (default: what LoRA r=8 trains), timed
interleaved in one process per (sequence length, batch size) so that every ratio to the
base model is a same-run ratio. Inputs are real SST-2 dev sentences padded/truncated to the
sequence length (random token ids when no data folder is set).
"""

from __future__ import annotations

import copy
import datetime as dt
import sys

import torch

from .budget import budget_params, parse_budget, solve
from .errors import PeftbenchError
from .measure import time_interleaved
from .method import apply_method
from .models import counter as make_counter
from .models import load_config, load_model, load_tokenizer
from .plugins import get_methods, get_task
from .runner import environment, resolve_device
from .plan import reference_resolver

VARIANTS = [  # (label, method, options)
    ("LoRA (unmerged)", "lora", {}),
    ("LoRA (merged)", "lora", {}),
    ("Adapter (Houlsby)", "adapter", {"placement": "houlsby"}),
    ("Adapter (Pfeiffer)", "adapter", {"placement": "pfeiffer"}),
    ("Prefix", "prefix", {}),
]


def build_models(model_id: str, budget_text: str, device: str, variants=VARIANTS):
    """The base model and each (label, method, options) variant at the budget: label ->
    (model, budget solution or None for a method without a knob, parameter counts)."""
    methods = get_methods()
    task = get_task("sst2")
    tokenizer = load_tokenizer(model_id)
    counter = make_counter(load_config(model_id))
    target = budget_params(parse_budget(budget_text), counter, reference_resolver(methods))
    torch.manual_seed(0)
    base = load_model(model_id, task, tokenizer, device).eval()
    models = {"Base": (base, None, None)}
    for label, name, options in variants:
        method = methods[name]
        sol = solve(method, options, target, counter) if method.knob else None
        model, counts = apply_method(method, copy.deepcopy(base), sol.knob_value if sol else None, options)
        with torch.no_grad():  # non-zero LoRA B / adapter up-projection: a trained-like state
            for n, p in model.named_parameters():
                if p.requires_grad and ("lora_B" in n or ".up." in n):
                    p.normal_(std=0.01)
        if label == "LoRA (merged)":
            model = method.merge(model)
        models[label] = (model.eval(), sol, counts)
    return models, tokenizer, target


def input_texts(data_dir, random_inputs=False):
    """SST-2 dev sentences (an error when the data is missing), or None for --random-inputs."""
    from .tasks import load_task_data

    if random_inputs:
        return None, "random token ids (--random-inputs), full attention mask"
    data = load_task_data(get_task("sst2"), data_dir)
    return data.eval.text_a.tolist(), f"SST-2 dev sentences from {data.source}, padded to the sequence length"


def inputs_for(tokenizer, texts, batch, seq_len, device):
    if texts:
        enc = tokenizer(texts[:batch], padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()}
    ids = torch.randint(1000, 2000, (batch, seq_len), device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def run(model_id="minilm", budget="lora:r=8", batch_sizes=(1, 8, 32), seq_lens=(64, 128), min_time_s=2.0,
        min_reps=20, repeats=2, device="auto", data_dir=None, log=print, random_inputs=False):
    device = resolve_device(device)
    texts, source = input_texts(data_dir, random_inputs)
    models, tokenizer, target = build_models(model_id, budget, device)
    results = []  # (repeat, seq, batch, label, stats)
    for rep in range(repeats):
        for seq in seq_lens:
            for bs in batch_sizes:
                batch = inputs_for(tokenizer, texts, bs, seq, device)
                cands = {label: (lambda m=m, b=batch: m(**b)) for label, (m, _, _) in models.items()}
                stats = time_interleaved(cands, device, min_reps=min_reps, min_time_s=min_time_s, warmup=3)
                for label, s in stats.items():
                    results.append((rep, seq, bs, label, s))
                log(f"repeat {rep + 1}/{repeats} seq {seq} batch {bs}: " + ", ".join(
                    f"{k} {v['median_ms']:.1f}ms" for k, v in stats.items()))
    return models, target, results, {**environment(device), "inputs": source}


def to_markdown(models, target, results, env, command, model_id="minilm") -> str:
    labels = list(models)
    seqs = sorted({r[1] for r in results})
    sizes = sorted({r[2] for r in results})
    repeats = sorted({r[0] for r in results})
    get = {(r[0], r[1], r[2], r[3]): r[4] for r in results}
    lines = [
        "# Inference latency: base vs LoRA (unmerged / merged) vs adapters vs prefix",
        "",
        f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `{command}`.",
        "",
        f"Machine: device {env.get('device')}{' (' + env['gpu'] + ')' if env.get('gpu') else ''}, torch {env['torch']}, transformers {env['transformers']}, "
        f"{env['torch_threads']} torch threads, {env['cpu_count']} CPUs ({env['machine']}), fp32 matmul "
        f"{env['matmul_gflops']} GFLOP/s right after the timings; peftbench {env['peftbench']} ({env.get('git_commit') or 'no git'}); model {model_id}.",
        "",
        f"Every method at the same budget: {target:,} trainable parameters of its own (what LoRA r=8 on "
        "query+value trains). Cells: median ms ± IQR over at least 20 timed forward passes and 2 s "
        "per candidate, candidates interleaved in one process, after 3 warm-up passes; in brackets "
        f"the ratio to the base model from the same session. Inputs: {env.get('inputs', '?')}.",
        "",
        "| method | size | trainable |",
        "|---|---|---|",
    ]
    for label, (_, sol, counts) in models.items():
        if sol is None:
            lines.append(f"| {label} | - | 0 |")
        else:
            lines.append(f"| {label} | {sol.knob}={sol.knob_value} | {counts.method:,} ({sol.deviation_pct:+.1f}%) |")
    for rep in repeats:
        for seq in seqs:
            lines += ["", f"### Sequence length {seq}" + (f" (repeat {rep + 1} of {len(repeats)})" if len(repeats) > 1 else ""), ""]
            lines.append("| method | " + " | ".join(f"batch {b}" for b in sizes) + " |")
            lines.append("|---|" + "---|" * len(sizes))
            for label in labels:
                cells = []
                for b in sizes:
                    s, base = get[(rep, seq, b, label)], get[(rep, seq, b, "Base")]
                    cells.append(f"{s['median_ms']:.1f} ± {s['iqr_ms']:.1f} ({s['median_ms'] / base['median_ms']:.2f}x)")
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if len(repeats) > 1:
        first, last = repeats[0], repeats[-1]
        drift = [get[(last, q, b, "Base")]["median_ms"] / get[(first, q, b, "Base")]["median_ms"] for q in seqs for b in sizes]
        lines += ["", "### Agreement between repeats", "",
                  f"The machine's speed drifts: the base model's median changed by {min(drift) - 1:+.0%} to "
                  f"{max(drift) - 1:+.0%} between repeats, so absolute milliseconds from different sessions are "
                  "not comparable; the same-session ratios to base are. `noise` is the ratio's own noise band "
                  "(its relative IQR plus the base's, times the ratio, the larger of the two repeats); `agree` "
                  "says whether the two ratios differ by less than that.", "",
                  "| seq | batch | method | ratio repeat 1 / 2 | difference | noise | agree |", "|---|---|---|---|---|---|---|"]
        n_agree = n_total = 0
        for seq in seqs:
            for b in sizes:
                for label in labels[1:]:
                    ratios, bands = [], []
                    for r in (first, last):
                        s_, x = get[(r, seq, b, label)], get[(r, seq, b, "Base")]
                        ratio = s_["median_ms"] / x["median_ms"]
                        ratios.append(ratio)
                        bands.append(ratio * (s_["iqr_ms"] / s_["median_ms"] + x["iqr_ms"] / x["median_ms"]))
                    diff = abs(ratios[0] - ratios[1])
                    ok = diff <= max(bands)
                    n_agree += ok
                    n_total += 1
                    lines.append(f"| {seq} | {b} | {label} | {ratios[0]:.3f} / {ratios[1]:.3f} | {diff:.3f} | "
                                 f"{max(bands):.3f} | {'yes' if ok else 'no'} |")
        lines += ["", f"{n_agree} of {n_total} ratios agree between the repeats within their noise."]
    return "\n".join(lines) + "\n"


def plot(models, results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep = 0
    seqs = sorted({r[1] for r in results})
    sizes = sorted({r[2] for r in results})
    get = {(r[0], r[1], r[2], r[3]): r[4] for r in results}
    fig, axes = plt.subplots(1, len(seqs), figsize=(6 * len(seqs), 4), squeeze=False)
    labels = [l for l in models if l != "Base"]
    for ax, seq in zip(axes[0], seqs):
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            ratios = [get[(rep, seq, b, label)]["median_ms"] / get[(rep, seq, b, "Base")]["median_ms"] for b in sizes]
            ax.bar([j + i * width for j in range(len(sizes))], ratios, width, label=label)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylim(0.9, None)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sizes))], [f"batch {b}" for b in sizes])
        ax.set_ylabel("latency / base (same session)")
        ax.set_title(f"sequence length {seq}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    import argparse
    from pathlib import Path

    from .models import quiet_transformers
    from .records import write_atomic

    quiet_transformers()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--budget", default="lora:r=8")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--seq-lens", default="64,128")
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--random-inputs", action="store_true", help="time random token ids instead of SST-2 sentences")
    p.add_argument("--out", default="results/latency.md")
    args = p.parse_args(argv)
    command = "python benchmarks/latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        models, target, results, env = run(
            args.model, args.budget, tuple(int(x) for x in args.batch_sizes.split(",")),
            tuple(int(x) for x in args.seq_lens.split(",")), args.min_time, 20, args.repeats, args.device, args.data_dir,
            log=lambda m: print(m, file=sys.stderr, flush=True), random_inputs=args.random_inputs,
        )
    except PeftbenchError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(2)
    out = Path(args.out)
    write_atomic(out, to_markdown(models, target, results, env, command.strip(), args.model), text=True)
    write_atomic(out.with_suffix(".json"), {"command": command.strip(), "env": env, "budget_params": target,
                                            "results": [dict(zip(("repeat", "seq_len", "batch", "method", "stats"), r))
                                                        for r in results]})
    plot(models, results, out.with_suffix(".png"))
    print(f"wrote {out}, {out.with_suffix('.json')} and {out.with_suffix('.png')}", file=sys.stderr)
