"""Generation evaluation speed on SmolLM2: transformers' default dynamic KV cache vs a static
cache, with and without ``torch.compile`` of the decoding step, fp32 and bf16, on real E2E
test prompts; the outputs are compared with the default's (greedy, so they should agree).

    PEFTBENCH_DATA=../shared/datasets HF_HUB_OFFLINE=1 python benchmarks/generation.py [--inputs 64]

Prints a Markdown table. A configuration's first batch (where compilation happens) is timed
apart from the rest and reported as its warm-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

import torch


def main():
    from transformers import CompileConfig

    from peftbench.generation.generate import Decoding, generate_all
    from peftbench.models import load_model, load_tokenizer, quiet_transformers
    from peftbench.plugins import get_task
    from peftbench.runner import environment
    from peftbench.tasks import load_task_data

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--inputs", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    quiet_transformers()
    task = get_task("e2e")
    data = load_task_data(task, None, "test")
    tok = load_tokenizer(args.model)
    model = load_model(args.model, task, tok, "cpu")
    prompts = [task.prompt.format(source=s) for s in data.eval["source"]]
    warm, timed = prompts[: args.batch_size], prompts[args.batch_size: args.batch_size + args.inputs]
    decoding = Decoding(max_new_tokens=task.max_new_tokens, batch_size=args.batch_size)
    everywhere = CompileConfig()
    everywhere._compile_all_devices = True  # transformers compiles on CUDA/XPU only unless told (not an init field)
    configs = {
        "dynamic cache (default)": {},
        "static cache": {"cache_implementation": "static", "disable_compile": True},
        "static cache + torch.compile": {"cache_implementation": "static",
                                         "compile_config": everywhere},
    }
    env = environment("cpu", "bf16")
    print(f"# Generation speed on CPU: {args.model}, E2E test prompts\n\nGenerated "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `python benchmarks/generation.py "
          f"--inputs {args.inputs}`; torch {env['torch']}, transformers {env['transformers']}, "
          f"{env['torch_threads']} threads, matmul {env['matmul_gflops']} GFLOP/s fp32 / "
          f"{env['matmul_gflops_bf16']} bf16; peftbench {env.get('git_commit')}.\n\n"
          f"Greedy, batch {args.batch_size}, at most {task.max_new_tokens} new tokens, stop at EOS per "
          f"sequence; warm-up = the first batch of {len(warm)} prompts (compilation, if any); timed = the next "
          f"{len(timed)}.\n")
    print("| precision | configuration | warm-up s | timed s | new tokens/s | outputs equal to the default's |")
    print("|---|---|---|---|---|---|")
    reference = {}
    for precision in ("fp32", "bf16"):
        for name, extra in configs.items():
            torch._dynamo.reset()
            try:
                t0 = time.perf_counter()
                generate_all(model, tok, warm, decoding, "cpu", precision, extra)
                warm_s = time.perf_counter() - t0
                out = generate_all(model, tok, timed, decoding, "cpu", precision, extra)
            except Exception as e:  # a configuration this stack cannot run: say so, go on
                print(f"| {precision} | {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} | | | |",
                      flush=True)
                continue
            reference.setdefault(precision, out["texts"])
            same = sum(a == b for a, b in zip(out["texts"], reference[precision]))
            print(f"| {precision} | {name} | {warm_s:.1f} | {out['seconds']:.1f} | "
                  f"{out['new_tokens'] / out['seconds']:.0f} | {same}/{len(timed)} |", flush=True)


if __name__ == "__main__":
    main()
