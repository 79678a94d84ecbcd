"""Shared fixtures: tiny models built from configs in code, small slices of the real data,
and hygiene (no third-party plugins, no hub, a private tokenisation cache)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest

os.environ["PEFTBENCH_LOAD_PLUGINS"] = ""  # tests never load installed third-party plugins
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ.pop("PEFTBENCH_PLUGINS", None)

from peftbench import testing  # noqa: E402
from peftbench.models import quiet_transformers  # noqa: E402

quiet_transformers()
ROOT = Path(__file__).resolve().parent.parent
VOCAB = 30522  # MiniLM's tokenizer, reused by the tiny models saved to disk


FAMILIES = dict.fromkeys(testing.FAMILIES)


def make_model(family, seed=0, **kw):
    return testing.tiny_model(family, seed=seed, **kw)


batch = testing.tiny_batch


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
    # E2E: the official CSVs (header + rows) and their row-aligned LoRA-format files
    "E2E": {"lora/train.txt": 64, "devset.csv": 31, "lora/valid.txt": 30, "testset_w_refs.csv": 31,
            "lora/test.txt": 30},
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
            (dst / folder / name).parent.mkdir(parents=True, exist_ok=True)
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
    """Tiny random BERT, GPT-2 and causal LLaMA / GPT-2 LMs saved with MiniLM's tokenizer (with
    [SEP] as EOS for the causal ones), loadable by --model PATH."""
    import copy

    root = tmp_path_factory.mktemp("models")
    dirs = {}
    causal_tokenizer = copy.deepcopy(minilm_tokenizer)
    causal_tokenizer.eos_token = "[SEP]"
    for family in ("bert", "gpt2", "llama-lm", "gpt2-lm"):
        causal = family.endswith("-lm")
        tok = causal_tokenizer if causal else minilm_tokenizer
        extra = {"eos_token_id": tok.eos_token_id, "bos_token_id": tok.cls_token_id} if causal else {}
        model = make_model(family, vocab=VOCAB, **extra)
        model.config.pad_token_id = tok.pad_token_id
        path = root / f"tiny-{family}"
        model.save_pretrained(path)
        tok.save_pretrained(path)
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


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def cli_in_process(*args, env=None) -> CliResult:
    """``peftbench ARGS`` in this process, with ``env`` as the environment meanwhile: ~5 s less each
    than a subprocess importing torch, transformers and the plugins anew and starting its own fork
    server. Runs still get their own processes, from the one fork server of this test session,
    with ``env`` as their environment (``worker.start`` hands each child the sweep's). What the
    runs themselves print is not captured (the server's output is the test session's); what the
    sweep prints and the records are. Plugins it loads are unregistered afterwards; the exit code
    is main()'s (the console script exits with it). Tests of signals, the console script and the
    Ray and SLURM executors keep a subprocess."""
    import contextlib
    import io

    from peftbench import plugins
    from peftbench.cli import main

    plugins.load_plugins()
    before, files, saved = set(plugins.pm.get_plugins()), dict(plugins._loaded_files), dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for plugin in set(plugins.pm.get_plugins()) - before:
            plugins.pm.unregister(plugin)
        plugins._loaded_files.clear()
        plugins._loaded_files.update(files)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli_env(small_data, tmp_path):
    """Environment for peftbench subprocesses: the small data, a private cache."""
    env = dict(os.environ)
    env["PEFTBENCH_DATA"] = str(small_data)
    env.pop("PEFTBENCH_PLUGINS", None)
    return env


def copytree(src, dst):
    shutil.copytree(src, dst)


def assert_tied_head_merge_keeps_embeddings(method, targets: str):
    """A LoRA method on a tiny LLaMA whose LM head shares the input embeddings, targets including the
    head: merging keeps the outputs and leaves the embeddings at W0."""
    import torch

    from peftbench.method import apply_method
    from peftbench.testing import tiny_model

    model = tiny_model("llama-lm")
    embeddings = model.get_input_embeddings().weight.detach().clone()
    model, _ = apply_method(method, model, 4, {"target_modules": targets})
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(2, 1000, (2, 8))
    model.eval()
    with torch.no_grad():
        before = model(ids).logits
        merged = method.merge(model)
        after = merged(ids).logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(merged.get_input_embeddings().weight, embeddings, atol=0, rtol=0)
