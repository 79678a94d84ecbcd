"""E2E NLG (Novikova et al. 2017): restaurant meaning representations to text, as in the LoRA
paper's GPT-2 experiments (see ../shared/datasets/SOURCES.md for the files).

- Training: ``lora/train.txt`` (``MR||REF`` per line, the LoRA repository's tokenised format:
  ``name : The Vaults | Type : pub | ...``), 42,061 pairs.
- Evaluation: the official ``testset_w_refs.csv`` (split ``test``, the default, as the paper
  reports) or ``devset.csv`` (``dev``): one output per distinct MR, in order of first appearance,
  scored against all of that MR's references, raw as the official scorer reads them. The prompt
  is the same MR in the training format, taken from the row-aligned ``lora/test.txt`` /
  ``lora/valid.txt``.
- Outputs are detokenised (the inverse of the training text's tokenisation: no space before
  punctuation, ``£ 20`` -> ``£20``, ``family - friendly`` -> ``family-friendly``) before scoring;
  on the dev set this turns the training-format references back into the raw ones byte for byte
  for 82.6% of rows and for all of them spaces aside (the rest differ by the raw text's own spacing).
- Metrics: BLEU, NIST, METEOR, ROUGE-L, CIDEr as the official scorer computes them
  (peftbench/generation/metrics.py); METEOR needs Java and the ``meteor`` extra.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd

import peftbench
from peftbench.errors import PeftbenchError
from peftbench.generation.task import GenerationTask
from peftbench.tasks import Metric

SPLITS = {"test": ("testset_w_refs.csv", "lora/test.txt"), "dev": ("devset.csv", "lora/valid.txt")}


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """``MR||REF`` lines (stripped, as the LoRA repository's converter does)."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            text = text.strip()
            if not text:
                continue
            if "||" not in text:
                raise PeftbenchError(f"{path}:{line}: expected 'MR||REF', found no '||'")
            mr, ref = text.split("||", 1)
            pairs.append((mr.strip(), ref.strip()))
    return pairs


def read_train(folder: Path, task) -> pd.DataFrame:
    return pd.DataFrame(read_pairs(folder / task.train_file), columns=["source", "target"])


def read_official(path: Path) -> list[tuple[str, str]]:
    """(mr, ref) rows of an official CSV (header ``mr,ref``; quoted fields with commas)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(rows[0]) != {"mr", "ref"}:
        raise PeftbenchError(f"{path}: expected a CSV with the header mr,ref")
    return [(r["mr"], r["ref"]) for r in rows]


def read_eval(folder: Path, task, split: str) -> pd.DataFrame:
    """One row per distinct MR (first-appearance order): its prompt MR and all its references."""
    official_file, lora_file = SPLITS[split]
    official = read_official(folder / official_file)
    prompts = read_pairs(folder / lora_file)
    if len(prompts) != len(official):
        raise PeftbenchError(f"{folder / lora_file}: {len(prompts)} rows, but {official_file} has {len(official)}; "
                             "the two files must be row-aligned (see SOURCES.md)")
    groups: dict[str, dict] = {}
    for (mr, ref), (prompt, _) in zip(official, prompts):
        group = groups.setdefault(mr, {"mr": mr, "source": prompt, "references": []})
        group["references"].append(ref)
    return pd.DataFrame(list(groups.values()), columns=["mr", "source", "references"])


def detokenize(text: str) -> str:
    """Undo the LoRA files' tokenisation of the text the model learned to write."""
    text = " ".join(text.split())
    text = re.sub(r" ([.,!?;:%)])", r"\1", text)
    text = re.sub(r"([(£$]) ", r"\1", text)
    text = re.sub(r" - ", "-", text)
    text = re.sub(r"(\w) (n't|'t|'s|'re|'ll|'ve|'m|'d)\b", r"\1\2", text)
    return text


def score(predictions, references, metrics) -> dict[str, float]:
    from peftbench.generation.metrics import score_e2e

    return score_e2e(predictions, references, metrics=metrics)


E2E = GenerationTask(
    name="e2e", version=1, folder="E2E", train_file="lora/train.txt", eval_file="testset_w_refs.csv",
    metrics=("bleu", "nist", "meteor", "rouge_l", "cider"), max_seq_len=128,
    eval_splits=SPLITS, default_split="test", train_reader=read_train, eval_reader=read_eval, scorer=score,
    postprocess=detokenize, prompt="{source}\nDescription:", target_prefix=" ", max_new_tokens=64,
    description="E2E NLG: restaurant meaning representation to text (BLEU, NIST, METEOR, ROUGE-L, CIDEr)",
)

# The metrics' names and directions; the task's scorer computes them together (one tokenisation).
METRICS = tuple(
    Metric(name, fn=None, description=text) for name, text in (
        ("bleu", "BLEU-4, mteval-v13a as the E2E scorer (multi-reference)"),
        ("nist", "NIST-5, mteval-v13a as the E2E scorer"),
        ("meteor", "METEOR 1.5 (Java), as the E2E scorer"),
        ("rouge_l", "ROUGE-L (F, beta 1.2) after PTB tokenisation, as the E2E scorer"),
        ("cider", "CIDEr-D after PTB tokenisation, as the E2E scorer"),
    )
)


@peftbench.hookimpl
def peftbench_register_metrics(register):
    for metric in METRICS:
        register(metric)


@peftbench.hookimpl
def peftbench_register_tasks(register):
    register(E2E)
