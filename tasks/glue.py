"""GLUE tasks in their GLUE-layout files (see ../shared/datasets/SOURCES.md)."""

import peftbench
from peftbench.tasks import HubSource, Task

SST2 = Task(
    name="sst2", version=1, folder="SST-2", train_file="train.tsv", eval_file="dev.tsv",
    text_columns=("sentence",), label_column="label", metrics=("accuracy",), max_seq_len=64,
    hub=HubSource("glue", "sst2", "train", "validation", ("sentence",), "label"),
    description="Stanford Sentiment Treebank, binary sentiment",
)
COLA = Task(
    name="cola", version=1, folder="CoLA", train_file="train.tsv", eval_file="dev.tsv",
    columns=("source", "label", "mark", "sentence"),  # no header row
    text_columns=("sentence",), label_column="label", metrics=("mcc", "accuracy"), max_seq_len=64,
    hub=HubSource("glue", "cola", "train", "validation", ("sentence",), "label"),
    description="Corpus of Linguistic Acceptability",
)
RTE = Task(
    name="rte", version=1, folder="RTE", train_file="train.tsv", eval_file="dev.tsv",
    text_columns=("sentence1", "sentence2"), label_column="label",
    label_map={"entailment": 0, "not_entailment": 1}, metrics=("accuracy",), max_seq_len=128,
    hub=HubSource("glue", "rte", "train", "validation", ("sentence1", "sentence2"), "label"),
    description="Recognizing Textual Entailment",
)
MRPC = Task(
    name="mrpc", version=1, folder="MRPC", train_file="train.jsonl", eval_file="validation.jsonl",
    format="jsonl", text_columns=("sentence1", "sentence2"), label_column="label",
    metrics=("accuracy", "f1"), max_seq_len=128,
    hub=HubSource("glue", "mrpc", "train", "validation", ("sentence1", "sentence2"), "label"),
    description="Microsoft Research Paraphrase Corpus",
)
STSB = Task(
    name="stsb", version=1, folder="STS-B", train_file="train.tsv", eval_file="dev.tsv",
    text_columns=("sentence1", "sentence2"), label_column="score", num_labels=1,
    label_scale=0.2,  # train on score/5 in [0, 1]; correlations are scale-free
    metrics=("pearson", "spearman"), max_seq_len=128,
    hub=HubSource("glue", "stsb", "train", "validation", ("sentence1", "sentence2"), "label"),
    description="Semantic Textual Similarity Benchmark (regression, 0-5)",
)


@peftbench.hookimpl
def peftbench_register_tasks(register):
    for task in (SST2, COLA, RTE, MRPC, STSB):
        register(task)
