"""Tokenisation (cached on disk per task and its code, data, tokenizer, max length and the tokenising
code) and dynamic padding."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

CACHE_ENV = "PEFTBENCH_CACHE"


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "peftbench")
    return Path(root) / "tokenized"


def tokenizer_fingerprint(tokenizer) -> str:
    """Identifies what the tokenizer does (its full serialised definition when it has one),
    not where it is installed."""
    digest = hashlib.sha256(f"{type(tokenizer).__name__}:{len(tokenizer)}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else str(tokenizer.name_or_path).encode())
    return digest.hexdigest()[:16]


def cached(key_parts: dict, build):
    """A ``datasets.Dataset`` of the columns ``build()`` returns, cached on disk under a key built
    from ``key_parts`` (task and its code, data, tokenizer, max length, split) and the code that
    tokenises (this module's and the generation data's, transformers', tokenizers'; the cache is
    shared by checkouts): built once, then loaded."""
    import datasets

    from .provenance import library_versions

    datasets.disable_progress_bars()
    versions = library_versions()
    key_parts = {**key_parts, "tokenising_code": _tokenising_code(),
                 **{lib: versions.get(lib) for lib in ("transformers", "tokenizers")}}
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / key
    if path.exists():
        try:
            return datasets.load_from_disk(str(path))
        except Exception:
            shutil.rmtree(path, ignore_errors=True)  # a damaged cache entry is rebuilt
    ds = datasets.Dataset.from_dict(build())
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
        ds.save_to_disk(str(tmp))
        os.replace(tmp, path)  # atomic: a concurrent or killed writer leaves no half entry
        ds = datasets.load_from_disk(str(path))
    except OSError:
        pass  # a read-only cache folder only costs re-tokenising; a concurrent writer's entry is as good
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # what os.replace did not move (another writer was first)
    return ds


@functools.cache
def _tokenising_code() -> str:
    """A hash of the modules that turn examples into tokens (this one's and the generation data's)."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for f in (here / "data.py", here / "generation" / "data.py"):
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def tokenize(task, frame, tokenizer, max_len: int, key_parts: dict):
    """A ``datasets.Dataset`` of input_ids / attention_mask / [token_type_ids] / labels for a
    classification task, cached (see ``cached``)."""

    def build():
        texts = [frame[c].tolist() for c in ("text_a", "text_b") if c in frame]
        enc = tokenizer(*texts, truncation=True, max_length=max_len)
        labels = frame["label"].to_numpy()
        if task.is_regression:
            labels = labels.astype(np.float32) * task.label_scale
        columns = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        return {**columns, "labels": labels.tolist()}

    return cached(key_parts, build)


def subset_indices(n_total: int, n: int, how: str, data_seed: int) -> np.ndarray:
    """Which training examples ``--train-samples n`` uses: ``random`` draws n of them with
    ``data_seed`` (the same subset for every method and seed), kept in file order; ``first``
    takes the first n rows, like datasets' ``split="train[:n]"``."""
    if how == "first":
        return np.arange(min(n, n_total))
    if how != "random":
        raise ValueError(f"unknown train subset {how!r}; use random or first")
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(data_seed).choice(n_total, n, replace=False))


def validation_split(n_total: int, n_val: int, seed: int, labels=None,
                     groups=None) -> tuple[np.ndarray, np.ndarray, bool]:
    """(validation indices, remaining indices, stratified?): ``n_val`` examples held out of the
    training data, seeded, stratified by ``labels`` when given (classification) and possible.
    With ``groups`` (a generation task's inputs: E2E has several references per meaning
    representation) whole groups are held out, in a seeded order, until ``n_val`` examples are:
    no held-out input is also trained on."""
    from sklearn.model_selection import train_test_split

    from .errors import PeftbenchError

    if not 0 < n_val < n_total:
        raise PeftbenchError(f"--val-samples {n_val}: the training file has {n_total} examples; hold out fewer")
    idx = np.arange(n_total)
    if groups is not None:
        codes, uniques = pd.factorize(pd.Series(list(groups)))
        order = np.random.default_rng(seed).permutation(len(uniques))
        sizes = np.bincount(codes, minlength=len(uniques))[order]
        held = order[: int(np.searchsorted(np.cumsum(sizes), n_val)) + 1]
        if len(held) >= len(uniques):
            raise PeftbenchError(f"--val-samples {n_val}: holding out whole inputs leaves no training input "
                                 f"({len(uniques)} distinct inputs); hold out fewer")
        in_val = np.isin(codes, held)
        return idx[in_val], idx[~in_val], False
    try:
        pool, val = train_test_split(idx, test_size=n_val, random_state=seed, stratify=labels)
        stratified = labels is not None
    except ValueError:  # a class too small to split: held out at random, and the record says so
        pool, val = train_test_split(idx, test_size=n_val, random_state=seed)
        stratified = False
    return np.sort(val), np.sort(pool), stratified


class Collator:
    """Pads each batch to its own longest sequence (dynamic padding)."""

    def __init__(self, pad_token_id: int, regression: bool):
        self.pad = pad_token_id
        self.label_dtype = torch.float32 if regression else torch.long

    def __call__(self, examples):
        length = max(len(e["input_ids"]) for e in examples)
        batch = {}
        for key, fill in (("input_ids", self.pad), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in examples[0]:
                batch[key] = torch.tensor([e[key] + [fill] * (length - len(e[key])) for e in examples])
        batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=self.label_dtype)
        return batch


def fixed_length_batch(ds, tokenizer_pad_id: int, batch_size: int, seq_len: int, device):
    """``batch_size`` real examples padded/truncated to exactly ``seq_len`` (for latency)."""
    rows = [ds[i % len(ds)] for i in range(batch_size)]
    batch = {}
    for key, fill in (("input_ids", tokenizer_pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
        if key in rows[0]:
            batch[key] = torch.tensor([(r[key] + [fill] * seq_len)[:seq_len] for r in rows], device=device)
    return batch
