"""Shared fixtures: tiny models built from configs in code, small slices of the real data,
and hygiene (no third-party plugins, no hub, a private tokenisation cache)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["PEFTBENCH_LOAD_PLUGINS"] = ""  # tests never load installed third-party plugins
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ.pop("PEFTBENCH_PLUGINS", None)

import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from peftbench.models import quiet_transformers  # noqa: E402

quiet_transformers()
ROOT = Path(__file__).resolve().parent.parent
VOCAB = 30522  # MiniLM's tokenizer, reused by the tiny models saved to disk


def tiny_bert(num_labels=2, vocab=1000, **kw):
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, num_labels=num_labels, **kw)
    return BertForSequenceClassification(cfg)


def tiny_roberta(num_labels=2, vocab=1000, **kw):
    cfg = RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=130, num_labels=num_labels,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2, **kw)
    return RobertaForSequenceClassification(cfg)


def tiny_gpt2(num_labels=2, vocab=1000, **kw):
    cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128, num_labels=num_labels,
                     pad_token_id=0, bos_token_id=1, eos_token_id=1, **kw)
    return GPT2ForSequenceClassification(cfg)


def tiny_llama(num_labels=2, vocab=1000, **kw):
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                      num_labels=num_labels, pad_token_id=0, bos_token_id=1, eos_token_id=1, **kw)
    return LlamaForSequenceClassification(cfg)


FAMILIES = {"bert": tiny_bert, "roberta": tiny_roberta, "gpt2": tiny_gpt2, "llama": tiny_llama}


def make_model(family, seed=0, **kw):
    torch.manual_seed(seed)
    return FAMILIES[family](**kw)


def batch(vocab=1000, seed=1, bsz=3, length=9, labels=True):
    """Token ids with right padding in the last row (pad id 0 is never used for real tokens)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (bsz, length), generator=g)
    mask = torch.ones(bsz, length, dtype=torch.long)
    mask[-1, length - 3:] = 0
    ids[-1, length - 3:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if labels:
        out["labels"] = torch.tensor([i % 2 for i in range(bsz)])
    return out


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    os.environ["PEFTBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def shared_datasets() -> Path | None:
    for candidate in (os.environ.get("PEFTBENCH_DATA"), ROOT.parent / "shared" / "datasets"):
        if candidate and (Path(candidate) / "SST-2" / "train.tsv").is_file():
            return Path(candidate)
    return None


# How many lines of each file the test slices keep (header included where there is one).
SLICES = {
    "SST-2": {"train.tsv": 161, "dev.tsv": 41},
    "CoLA": {"train.tsv": 120, "dev.tsv": 40},
    "RTE": {"train.tsv": 81, "dev.tsv": 41},
    "STS-B": {"train.tsv": 81, "dev.tsv": 41},
    "MRPC": {"train.jsonl": 80, "validation.jsonl": 40},
    "TREC": {"train_5500.label": 120, "TREC_10.label": 40},
}


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """Small slices of the real datasets (never committed: cut from ../shared/datasets)."""
    src = shared_datasets()
    if src is None:
        pytest.skip("the shared datasets are not available (set PEFTBENCH_DATA)")
    dst = tmp_path_factory.mktemp("data")
    for folder, files in SLICES.items():
        (dst / folder).mkdir()
        for name, n in files.items():
            with open(src / folder / name, encoding="utf-8", errors="replace") as f:
                lines = [next(f) for _ in range(n)]
            (dst / folder / name).write_text("".join(lines), encoding="utf-8")
    return dst


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from peftbench.models import load_tokenizer

    return load_tokenizer("minilm")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, minilm_tokenizer):
    """Tiny random BERT and GPT-2 saved with MiniLM's tokenizer, loadable by --model PATH."""
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for family in ("bert", "gpt2"):
        model = make_model(family, vocab=VOCAB)
        if family == "gpt2":
            model.config.pad_token_id = minilm_tokenizer.pad_token_id
        path = root / f"tiny-{family}"
        model.save_pretrained(path)
        minilm_tokenizer.save_pretrained(path)
        dirs[family] = path
    return dirs


@pytest.fixture
def plugin_manager():
    """The plugin manager with built-ins loaded; plugins registered in a test are removed."""
    from peftbench import plugins

    plugins.load_plugins()
    before = set(plugins.pm.get_plugins())
    yield plugins.pm
    for plugin in set(plugins.pm.get_plugins()) - before:
        plugins.pm.unregister(plugin)
    plugins._loaded_files.clear()


def write_plugin(tmp_path, name, body) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(body)
    return path


@pytest.fixture
def cli_env(small_data, tmp_path):
    """Environment for peftbench subprocesses: the small data, a private cache."""
    env = dict(os.environ)
    env["PEFTBENCH_DATA"] = str(small_data)
    env.pop("PEFTBENCH_PLUGINS", None)
    return env


def copytree(src, dst):
    shutil.copytree(src, dst)
