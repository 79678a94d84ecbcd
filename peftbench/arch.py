"""Find transformer blocks, their projections and attention modules in a transformers model.

Layers are located by module type (``nn.Linear`` / GPT-2's ``Conv1D``), by the number of
blocks the config declares, and by the projection names the families use (BERT/RoBERTa,
GPT-2, LLaMA/Mistral/Qwen, DistilBERT, OPT, GPT-NeoX), never by one checkpoint's paths.
"""

from __future__ import annotations

import re

from torch import nn
from transformers.pytorch_utils import Conv1D

from .errors import PeftbenchError, UnsupportedModel

# Block-relative module names of each role, one pattern per naming family.
ROLE_PATTERNS = {
    "q": r"(^|\.)(query|q_proj|q_lin)$",
    "k": r"(^|\.)(key|k_proj|k_lin)$",
    "v": r"(^|\.)(value|v_proj|v_lin)$",
    "qkv": r"(^|\.)(c_attn|query_key_value|qkv_proj|Wqkv)$",
    "o": r"((^|\.)(o_proj|out_lin|out_proj)|(^|\.)(attention|attn|self_attention)(\.output)?\.(dense|c_proj))$",
    "ffn_in": r"(^intermediate\.dense|(^|\.)(c_fc|gate_proj|up_proj|lin1|fc1|dense_h_to_4h))$",
    "ffn_out": r"(^output\.dense|(mlp|ffn|feed_forward)\.(c_proj|down_proj|lin2|dense_4h_to_h)|(^|\.)fc2)$",
}


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def linear_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a Conv1D (whose weight is in x out)."""
    if isinstance(module, Conv1D):
        n_in, n_out = module.weight.shape
        return int(n_in), int(n_out)
    return module.in_features, module.out_features


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ``config.num_hidden_layers`` transformer blocks, as (qualified name, module)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not n:
        raise UnsupportedModel(f"{type(model).__name__}: its config has no num_hidden_layers")
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return [(f"{name}.{i}", block) for i, block in enumerate(module)]
    raise UnsupportedModel(
        f"{type(model).__name__}: found no list of {n} transformer blocks (config.num_hidden_layers)"
    )


def find_role(model: nn.Module, role: str) -> list[tuple[str, nn.Module]]:
    """Linear layers of one role in every block, as (qualified name, module)."""
    pattern = re.compile(ROLE_PATTERNS[role])
    found = []
    for block_name, block in transformer_blocks(model):
        for rel, module in block.named_modules():
            if rel and is_linear(module) and pattern.search(rel):
                found.append((f"{block_name}.{rel}", module))
    return found


def find_by_suffix(model: nn.Module, suffix: str) -> list[tuple[str, nn.Module]]:
    """Linear layers whose qualified name is ``suffix`` or ends with ``.suffix``, never in the task head
    (RoBERTa's ``classifier.dense`` for ``dense``): every method trains the head in full and the budget
    counts it apart, so an update there would hide in the head's count."""
    hits = [
        (n, m)
        for n, m in model.named_modules()
        if is_linear(m) and (n == suffix or n.endswith("." + suffix))
    ]
    head = head_modules(model, [n for n, _ in hits])
    if hits and len(head) == len(hits):
        raise UnsupportedModel(
            f"target {suffix!r} names only the task head ({', '.join(head)}), which every method trains in "
            "full; name layers of the base model"
        )
    return [(n, m) for n, m in hits if n not in head]


def head_modules(model: nn.Module, names: list[str]) -> list[str]:
    """Those of ``names`` in the task head (outside ``base_model_prefix``; a causal LM has none)."""
    from .method import head_parameter_names

    try:
        head = head_parameter_names(model)
    except PeftbenchError:  # not a transformers task model: no head to keep apart
        return []
    return [name for name in names if any(p.startswith(name + ".") for p in head)]


def require_role(model: nn.Module, role: str, method: str) -> list[tuple[str, nn.Module]]:
    found = find_role(model, role)
    if not found:
        raise UnsupportedModel(
            f"{method}: found no {role!r} projections in {type(model).__name__} "
            f"(looked for names matching {ROLE_PATTERNS[role]} inside its transformer blocks)"
        )
    return found


def attention_modules(model: nn.Module, method: str) -> list[tuple[str, nn.Module]]:
    """The self-attention module of every block: the parent of its query (or fused qkv)
    projection, which dispatches through transformers' attention interface."""
    projections = find_role(model, "q") or find_role(model, "qkv")
    found = []
    for name, _ in projections:
        parent_name = name.rsplit(".", 1)[0]
        parent = model.get_submodule(parent_name)
        if not hasattr(parent, "layer_idx") or not hasattr(parent, "config"):
            parent = None
        found.append((parent_name, parent))
    if not found or any(m is None for _, m in found):
        raise UnsupportedModel(
            f"{method}: found no self-attention modules using transformers' attention interface in "
            f"{type(model).__name__} (a module with layer_idx and config above each query projection)"
        )
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def fused_qkv_slices(model: nn.Module, name: str, module: nn.Module) -> dict:
    """Which output features of a fused q/k/v projection belong to q, k and v: role -> index
    tensor. GPT-2's ``c_attn`` is [q | k | v]; BLOOM's and GPT-NeoX's ``query_key_value`` are
    per head [q, k, v] of head_dim each. Other fused layouts are not known: an error, so that
    nothing adapts a whole fused matrix when q or v alone was asked for."""
    import torch

    config = model.config
    _, n_out = linear_features(module)
    model_type = getattr(config, "model_type", "")
    if model_type == "gpt2" or name.endswith("c_attn"):
        third = n_out // 3
        return {role: torch.arange(i * third, (i + 1) * third) for i, role in enumerate("qkv")}
    if model_type in ("bloom", "gpt_neox"):
        heads = config.num_attention_heads
        head_dim = n_out // (3 * heads)
        base = torch.arange(heads)[:, None] * 3 * head_dim
        return {role: (base + i * head_dim + torch.arange(head_dim)[None, :]).reshape(-1) for i, role in enumerate("qkv")}
    raise UnsupportedModel(
        f"the fused projection {name} of {type(model).__name__} has a q/k/v layout peftbench does not know; "
        "adapt the whole fused layer explicitly (LoRA: target_modules=qkv)"
    )
