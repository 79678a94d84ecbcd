"""Generation tasks: (source, target) pairs to train a causal LM on, and (source, references)
groups to evaluate it on by generating.

A ``GenerationTask`` is a ``Task`` whose ``kind`` is "generation": its train reader gives a frame
of ``source, target``; its eval reader gives, for an evaluation split, one row per distinct
input with ``source`` and the list of its ``references``; its scorer turns predictions and
references into the task's metrics. Prompts are ``prompt.format(source=...)``; the model learns
``target_prefix + target`` followed by EOS, with the loss on those tokens only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Mapping

import pandas as pd

from ..errors import PeftbenchError, PluginFailure
from ..tasks import Task, TaskData


@dataclass
class GenerationTask(Task):
    # classification fields that a generation task does not use
    text_columns: tuple[str, ...] = ("source",)
    label_column: str = "target"
    num_labels: int = 0
    format: str = "generation"
    #: split name -> the files (relative to the task folder) its eval reader reads
    eval_splits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_split: str = "test"
    train_reader: Callable | None = None  # (folder, task) -> DataFrame[source, target]
    eval_reader: Callable | None = None  # (folder, task, split) -> DataFrame[source, references]
    scorer: Callable | None = None  # (predictions, references, metrics) -> {metric: value}
    postprocess: Callable | None = None  # a generated text -> what is scored (e.g. detokenise)
    prompt: str = "{source}"
    target_prefix: str = " "
    max_new_tokens: int = 64

    @property
    def kind(self) -> str:
        return "generation"

    def validate(self):
        from ..errors import PluginError

        super().validate()
        if not (self.train_reader and self.eval_reader and self.scorer):
            raise PluginError(f"task {self.name}: a generation task needs train_reader, eval_reader and scorer")
        if self.default_split not in self.eval_splits:
            raise PluginError(f"task {self.name}: default_split {self.default_split!r} is not in eval_splits")

    def split(self, name: str | None) -> str:
        name = name or self.default_split
        if name not in self.eval_splits:
            raise PeftbenchError(f"task {self.name}: no eval split {name!r}; use one of {', '.join(self.eval_splits)}")
        return name

    def files(self, split: str | None = None) -> list[str]:
        return [self.train_file, *self.eval_splits[self.split(split)]]

    def score(self, predictions, references, metrics=None) -> dict[str, float]:
        wanted = tuple(metrics or self.metrics)
        try:
            return self.scorer(list(predictions), list(references), wanted)
        except PeftbenchError:
            raise
        except Exception as e:
            raise PluginFailure("task", self.name, self.plugin, "scoring", e) from e


def load_data(task: GenerationTask, data_dir=None, split: str | None = None, train_only: bool = False) -> TaskData:
    """Train pairs and the eval split's groups, read from the task's folder (--data-dir, then
    PEFTBENCH_DATA), with a content hash of the split's files (``train_only``: the eval files are
    hashed, not parsed; ``eval`` None)."""
    from ..tasks import DATA_ENV, locate

    split = task.split(split)
    files = task.files(split)
    folder = locate(task, data_dir, files=files)
    if folder is None:
        raise PeftbenchError(f"task {task.name}: no data found (--data-dir not given, {DATA_ENV} not set); pass "
                             f"--data-dir or set {DATA_ENV} to the folder holding {task.folder}/ (e.g. ../shared/datasets)")
    digest = hashlib.sha256(f"{task.name}:{task.version}:{split}".encode())
    for name in files:
        digest.update((folder / name).read_bytes())
    try:
        train = task.train_reader(folder, task)
        evaluation = None if train_only else task.eval_reader(folder, task, split)
    except (PeftbenchError, UnicodeDecodeError, OSError) as e:
        if isinstance(e, PeftbenchError):
            raise
        raise PeftbenchError(f"task {task.name}: cannot read {folder}: {e}") from None
    except Exception as e:
        raise PluginFailure("task", task.name, task.plugin, "reading its data", e) from e
    checks = [(train, "training", ("source", "target"))] + ([] if train_only else [(evaluation, split, ("source", "references"))])
    for frame, what, columns in checks:
        if not isinstance(frame, pd.DataFrame) or not set(columns) <= set(frame.columns) or len(frame) == 0:
            raise PeftbenchError(f"task {task.name}: its {what} reader gave no rows with columns {', '.join(columns)}")
    return TaskData(train, evaluation, str(folder), digest.hexdigest()[:16])
