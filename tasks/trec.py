"""TREC question classification (Li & Roth 2002), 6 coarse classes; the test split is the eval set."""

from pathlib import Path

import pandas as pd

import peftbench
from peftbench.errors import PeftbenchError
from peftbench.tasks import HubSource, Task

COARSE = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")


def read_trec(path: Path, task: Task) -> pd.DataFrame:
    """Lines of ``COARSE:fine question text``."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line, text in enumerate(f, start=1):
            text = text.strip()
            if not text:
                continue
            label, sep, question = text.partition(" ")
            coarse = label.split(":", 1)[0]
            if not sep or ":" not in label or coarse not in COARSE:
                raise PeftbenchError(f"{path}:{line}: expected 'COARSE:fine question', got {text[:40]!r}")
            rows.append([question, COARSE.index(coarse)])
    return pd.DataFrame(rows, columns=["text_a", "label"])


TREC = Task(
    name="trec", version=1, folder="TREC", train_file="train_5500.label", eval_file="TREC_10.label",
    text_columns=("question",), label_column="coarse", num_labels=len(COARSE), metrics=("accuracy",),
    max_seq_len=64, format="trec", reader=read_trec,
    hub=HubSource("trec", None, "train", "test", ("text",), "coarse_label"),
    description="TREC question classification, 6 coarse classes",
)


@peftbench.hookimpl
def peftbench_register_tasks(register):
    register(TREC)
