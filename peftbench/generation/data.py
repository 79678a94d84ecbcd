"""Causal-LM training examples: prompt + target + EOS, the loss on the target tokens only."""

from __future__ import annotations

import torch

IGNORE = -100  # label of tokens that carry no loss (prompt, padding)


def encode_pair(tokenizer, task, source: str, target: str, max_len: int) -> dict:
    """input_ids = prompt tokens + target tokens + EOS; labels = -100 on the prompt. A pair
    longer than ``max_len`` loses prompt tokens from the left first (the target is what is
    learned), then target tokens from the right."""
    prompt = tokenizer(task.prompt.format(source=source))["input_ids"]
    target_ids = tokenizer(task.target_prefix + target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    target_ids = target_ids[:max_len]
    prompt = prompt[max(0, len(prompt) + len(target_ids) - max_len):]
    ids = prompt + target_ids
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE] * len(prompt) + target_ids}


def tokenize_pairs(task, frame, tokenizer, max_len: int, key_parts: dict):
    """A cached ``datasets.Dataset`` of input_ids / attention_mask / labels (see data.cached)."""
    from ..data import cached

    def build():
        rows = [encode_pair(tokenizer, task, s, t, max_len) for s, t in zip(frame["source"], frame["target"])]
        return {k: [r[k] for r in rows] for k in ("input_ids", "attention_mask", "labels")}

    return cached(key_parts, build)


class Collator:
    """Right-pads input_ids with the pad token, attention_mask with 0 and labels with -100."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, examples):
        length = max(len(e["input_ids"]) for e in examples)
        out = {}
        for key, fill in (("input_ids", self.pad), ("attention_mask", 0), ("labels", IGNORE)):
            out[key] = torch.tensor([e[key] + [fill] * (length - len(e[key])) for e in examples])
        return out
