"""Evaluation by generation, and its latency: time to first token and time per output token.

``generate_all`` uses transformers' ``generate`` as fast as it goes on this hardware: prompts
sorted by length (so a batch pads little), left padding, the KV cache, each sequence stopping at
EOS; greedy by default, beam search with a length penalty and n-gram blocking as options (the
LoRA paper decoded E2E with beam 10, length penalty 0.8-0.9, no-repeat 4).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from ..precision import autocast


@dataclass(frozen=True)
class Decoding:
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    max_new_tokens: int = 64
    batch_size: int = 32

    def kwargs(self, tokenizer) -> dict:
        return {"num_beams": self.num_beams, "length_penalty": self.length_penalty,
                "no_repeat_ngram_size": self.no_repeat_ngram_size, "max_new_tokens": self.max_new_tokens,
                "do_sample": False, "temperature": None, "top_p": None, "top_k": None, "use_cache": True,
                "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                "early_stopping": self.num_beams > 1}

    def as_dict(self) -> dict:
        return asdict(self)


def _left_padded(tokenizer, prompts, device):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        return {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}
    finally:
        tokenizer.padding_side = side


@torch.inference_mode()
def generate_all(model, tokenizer, prompts: list[str], decoding: Decoding, device, precision="fp32",
                 extra: dict | None = None, guard=None) -> dict:
    """Outputs in the order of ``prompts``, plus what they cost: {"texts", "new_tokens", "seconds"}.
    ``extra``: more ``generate`` arguments (benchmarks/generation.py tries a static cache with it).
    ``guard()`` wraps each batch's ``generate`` (parallel jobs: wait while another job times
    latency); "seconds" excludes what the guards waited (``waited_s``)."""
    import contextlib

    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(tokenizer(prompts[i])["input_ids"]))
    texts: list[str | None] = [None] * len(prompts)
    new_tokens = unstopped = 0
    waited = 0.0
    start = time.perf_counter()
    for b in range(0, len(order), decoding.batch_size):
        idx = order[b:b + decoding.batch_size]
        enc = _left_padded(tokenizer, [prompts[i] for i in idx], device)
        asked = time.perf_counter()
        with (guard or contextlib.nullcontext)():
            waited += time.perf_counter() - asked
            with autocast(device, precision):
                out = model.generate(**enc, **decoding.kwargs(tokenizer), **(extra or {}))
        generated = out[:, enc["input_ids"].shape[1]:]
        for i, row in zip(idx, generated):
            ids = row.tolist()
            stopped = tokenizer.eos_token_id in ids
            if stopped:
                ids = ids[: ids.index(tokenizer.eos_token_id)]
            new_tokens += len(ids) + stopped  # the EOS, where one was generated (not at max_new_tokens)
            unstopped += not stopped
            texts[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return {"texts": texts, "new_tokens": new_tokens, "seconds": time.perf_counter() - start - waited,
            "waited_s": waited, "unstopped": unstopped}


def generation_latency(models: dict, tokenizer, prompts: list[str], device, precision, lat: dict) -> dict:
    """For each model: time to first token (a ``generate`` of one token: the prefill) and time per
    output token ((t(generate n+1) - t(generate 1)) / n, n = ``lat["new_tokens"]``), at batch 1 and
    batch N, the models timed interleaved in one session per batch size. Prompts are real eval
    prompts, left-padded to a common length; every sequence generates exactly the same number of
    tokens (EOS is ignored), so all candidates do the same work."""
    from ..measure import time_interleaved

    n = lat.get("new_tokens", 8)
    sizes = {"b1": 1, "bN": lat["batch"]}
    out = {"new_tokens": n, "batch_N": lat["batch"], "precision": precision, "timings": {}}
    for size, bsz in sizes.items():
        batch = [prompts[i % len(prompts)] for i in range(bsz)]
        enc = _left_padded(tokenizer, batch, device)
        out[f"prompt_len_{size}"] = int(enc["input_ids"].shape[1])

        def call(m, tokens, enc=enc):
            with torch.inference_mode(), autocast(device, precision):
                m.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, num_beams=1,
                           temperature=None, top_p=None, top_k=None, use_cache=True,
                           pad_token_id=tokenizer.pad_token_id)

        candidates = {}
        for name, m in models.items():
            m.eval()
            candidates[f"{name}_first_{size}"] = lambda m=m: call(m, 1)
            candidates[f"{name}_gen_{size}"] = lambda m=m: call(m, n + 1)
        timings = time_interleaved(candidates, device, min_reps=lat.get("gen_min_reps", 5),
                                   min_time_s=lat["min_time_s"], warmup=1)
        out["timings"].update(timings)
        for name in models:
            first = timings[f"{name}_first_{size}"]["median_ms"]
            out[f"{name}_ttft_ms_{size}"] = first
            out[f"{name}_per_token_ms_{size}"] = (timings[f"{name}_gen_{size}"]["median_ms"] - first) / n
    for size in sizes:
        for name in models:
            if name != "base":
                for what in ("ttft", "per_token"):
                    out[f"ratio_{name}_{what}_{size}"] = out[f"{name}_{what}_ms_{size}"] / out[f"base_{what}_ms_{size}"]
    return out
