"""Model resolution and loading: ``minilm`` (the default encoder) and ``smollm2`` (a decoder LLM)
come from PyPI packages (see packaged_models.py); anything else is a transformers model id or
folder. Classification tasks load ``*ForSequenceClassification`` with a fresh head; generation
tasks load ``*ForCausalLM``, whose LM head is part of the frozen base."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from .errors import PeftbenchError, first_line

DEFAULT_MODEL = "minilm"


def quiet_transformers():
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    for module in ("transformers", "peft"):  # deprecation notices addressed to library authors
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)


def resolve_model(model: str) -> str:
    """A path or hub id that transformers can load."""
    from . import packaged_models
    from .studies.configs import CONFIGS

    if model in CONFIGS:
        raise PeftbenchError(f"--model {model} is a built-in config without weights (for peftbench memory and "
                             "peftbench budget); train a model folder, a transformers model id, minilm or smollm2")
    if model in packaged_models.ALIASES:
        return str(packaged_models.folder(model))
    return os.path.expanduser(model) if model.startswith("~") else model


def model_source(model: str) -> dict | None:
    """Where an alias's weights came from (e.g. smollm2: dequantised from Q4_1), for records."""
    from . import packaged_models

    return packaged_models.source(resolve_model(model)) if model in packaged_models.ALIASES else None


def planned_revision(spec: dict) -> str | None:
    """The hub commit a run was planned on (its spec's ``model_revision``): every run of a sweep loads
    those weights, however long the sweep runs and whatever is pushed to the hub meanwhile. None for
    a folder or an alias (``local:`` hashes, checked by the runner)."""
    revision = spec.get("model_revision") or ""
    return revision if re.fullmatch(r"[0-9a-f]{40}", revision) else None


def _pin(revision: str | None) -> dict:
    return {"revision": revision} if revision else {}


def load_config(model: str, num_labels: int = 2, revision: str | None = None):
    from transformers import AutoConfig

    from .studies.configs import CONFIGS, config

    quiet_transformers()
    if model in CONFIGS:  # a built-in config without weights (gpt3-175b, ...)
        return config(model, num_labels)
    path = resolve_model(model)
    if _is_path(model) and not Path(path).exists():
        raise PeftbenchError(f"--model {model}: no such folder; give a model folder, a transformers model id, "
                             "minilm or smollm2")
    try:
        config = AutoConfig.from_pretrained(path, num_labels=num_labels, **_pin(revision))
    except Exception as e:
        raise PeftbenchError(
            f"--model {model} is not a loadable model ({first_line(e)}); give a folder with config.json, "
            f"a transformers model id, minilm or smollm2{_configs_hint(model)}"
        ) from None
    return config


def _is_path(model: str) -> bool:
    """Whether --model names a folder rather than a hub id ("org/name" is an id unless such a folder exists)."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or (os.path.sep != "/" and os.path.sep in model)


def _configs_hint(model: str) -> str:
    """For `peftbench memory` and `budget`: the built-in configs without weights (where a model is only
    counted), with the closest one first."""
    from .errors import closest
    from .studies.configs import CONFIGS

    return f", or (to count, not train) a built-in config{closest(model, CONFIGS)}: {', '.join(CONFIGS)}"


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


def load_tokenizer(model: str, revision: str | None = None):
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(resolve_model(model), **_pin(revision))
    except Exception as e:
        raise PeftbenchError(f"--model {model}: cannot load its tokenizer ({first_line(e)})") from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise PeftbenchError(f"--model {model}: its tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def load_model(model: str, task, tokenizer, device="cpu", revision: str | None = None):
    """A *ForSequenceClassification model with a fresh head for a classification task, or a
    *ForCausalLM model (no new head) for a generation task; ``revision``: a hub commit to pin."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    quiet_transformers()
    if task.kind == "generation":
        auto, what, kwargs = AutoModelForCausalLM, "a causal language model", {}
    else:
        auto, what = AutoModelForSequenceClassification, "sequence classification"
        kwargs = {"num_labels": task.num_labels, "ignore_mismatched_sizes": True}
        if task.is_regression:
            kwargs["problem_type"] = "regression"
    if task.kind == "generation" and not is_causal_config(load_config(model, revision=revision)):
        raise PeftbenchError(f"--model {model} is not a causal (decoder) language model; task {task.name} generates "
                             "text: use a decoder such as smollm2, gpt2 or a LLaMA/Qwen/BLOOM checkpoint")
    try:
        # fp32 weights whatever the checkpoint's dtype (transformers loads a config's bf16 as bf16): the
        # run's precision is autocast over fp32 weights and optimizer state, as its record says
        m, info = auto.from_pretrained(resolve_model(model), output_loading_info=True, dtype=torch.float32,
                                       **_pin(revision), **kwargs)
    except Exception as e:
        raise PeftbenchError(f"--model {model}: cannot load it as {what} ({first_line(e)})") from None
    if task.kind != "generation":
        _embeddings_from_tied_lm_head(m, info, model)
    check_only_head_reinitialised(m, info, model)
    if task.kind != "generation":
        reset_head(m)
    if m.config.pad_token_id is None:
        m.config.pad_token_id = tokenizer.pad_token_id
    if hasattr(m.config, "use_cache"):
        m.config.use_cache = task.kind == "generation"  # the KV cache serves generation only
    return m.to(device)


def is_causal_config(config) -> bool:
    """Whether transformers has a causal-LM class for this config (GPT-2, LLaMA, BLOOM, ...)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING and not getattr(config, "is_encoder_decoder", False) \
        and getattr(config, "model_type", "") not in ("bert", "roberta", "xlm-roberta", "electra", "camembert")


def _embeddings_from_tied_lm_head(m, info: dict, model: str) -> None:
    """A causal LM with tied embeddings may store the shared matrix under ``lm_head.weight`` only
    (safetensors keeps one name per shared tensor; the smollm2 folder is such a file). A
    classifier built from it has no LM head, so the matrix arrives as an unexpected key and the
    input embeddings as missing: load them from that tensor."""
    import torch
    from safetensors import safe_open

    emb = m.get_input_embeddings()
    name = next((n for n, p in m.named_parameters() if p is emb.weight), None)
    missing = [str(k) for k in info.get("missing_keys") or ()]
    if (name not in missing or "lm_head.weight" not in {str(k) for k in info.get("unexpected_keys") or ()}
            or not getattr(m.config, "tie_word_embeddings", False)):
        return
    for f in sorted(Path(resolve_model(model)).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            if "lm_head.weight" in fh.keys():
                with torch.no_grad():
                    emb.weight.copy_(fh.get_tensor("lm_head.weight"))
                info["missing_keys"] = [k for k in info["missing_keys"] if str(k) != name]
                return


def check_only_head_reinitialised(m, info: dict, model: str) -> None:
    """``ignore_mismatched_sizes`` lets a checkpoint's classifier of another size be replaced; any
    other base weight loaded at the wrong shape (or missing) would be silently re-initialised."""
    from .method import head_parameter_names

    head = head_parameter_names(m)
    tied = {"lm_head.weight"} if getattr(m.config, "tie_word_embeddings", False) else set()  # shares the embeddings
    mismatched = [str(k[0] if isinstance(k, (tuple, list)) else k) for k in info.get("mismatched_keys") or ()]
    missing = [str(k) for k in info.get("missing_keys") or () if str(k) not in tied]
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


def meta_model(config, device="meta", kind="classification"):
    """The model on the meta device (shapes without memory, for counting parameters), or with
    random weights on another device; a causal LM for generation tasks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    quiet_transformers()
    auto = AutoModelForCausalLM if kind == "generation" else AutoModelForSequenceClassification
    with torch.device(device):
        return auto.from_config(config)


def counter(config, kind="classification"):
    """A budget Counter for this model config (meta device; a CPU copy for methods that need one)."""
    from .budget import Counter

    return Counter(meta_model(config, kind=kind), build_real=lambda: meta_model(config, device="cpu", kind=kind))
