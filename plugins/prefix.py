"""Prefix-tuning (Li & Liang 2021): learned key/value vectors prepended in every attention layer.

The prefix is inserted where attention is computed: each self-attention module dispatches
through transformers' attention interface, and peftbench routes those modules (only those)
through a wrapper that prepends the layer's prefix keys/values and extends the attention
mask by the prefix length. Position ids and the model's inputs are untouched, so the same
code serves encoders (BERT, RoBERTa) and decoders (GPT-2, LLaMA; causal masks keep the
prefix visible to every position).

With ``reparam=true`` the prefix is produced by an MLP from a smaller embedding during
training (Li & Liang's reparameterisation); ``finalize`` folds it into plain tensors.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

import peftbench
from peftbench.arch import attention_modules
from peftbench.errors import UnsupportedModel
from peftbench.method import freeze

ATTN_NAME = "peftbench_prefix"
SUPPORTED_BASE = ("sdpa", "eager")


@dataclass(frozen=True)
class PrefixOptions:
    reparam: bool = False
    reparam_hidden: int = 512

    def __post_init__(self):
        if self.reparam_hidden < 1:
            raise ValueError("reparam_hidden must be a positive integer")


class PrefixEncoder(nn.Module):
    """Produces (layers, 2, kv_heads, length, head_dim) prefix keys/values."""

    def __init__(self, layers, kv_heads, length, head_dim, hidden, opts: PrefixOptions, like):
        super().__init__()
        kw = {"device": like.device, "dtype": like.dtype}
        self.shape = (layers, 2, kv_heads, length, head_dim)
        if opts.reparam:
            self.embedding = nn.Parameter(torch.randn(length, hidden, **kw))
            self.mlp = nn.Sequential(
                nn.Linear(hidden, opts.reparam_hidden, **kw),
                nn.Tanh(),
                nn.Linear(opts.reparam_hidden, layers * 2 * kv_heads * head_dim, **kw),
            )
        else:
            self.prefix = nn.Parameter(torch.randn(self.shape, **kw))

    @property
    def reparam(self) -> bool:
        return hasattr(self, "mlp")

    def forward(self) -> torch.Tensor:
        if not self.reparam:
            return self.prefix
        layers, _, kv_heads, length, head_dim = self.shape
        out = self.mlp(self.embedding)  # (length, layers*2*kv_heads*head_dim)
        return out.view(length, layers, 2, kv_heads, head_dim).permute(1, 2, 3, 0, 4)

    @torch.no_grad()
    def fold(self):
        """Replace the reparameterisation by the plain prefix it produces."""
        if self.reparam:
            prefix = self().detach().clone().contiguous()
            del self.mlp, self.embedding
            self.prefix = nn.Parameter(prefix)


def _extend_mask(mask, length, query, key_len, causal):
    """Make ``mask`` cover ``length`` prefix positions in front of the keys, all visible."""
    if mask is None:
        q_len = query.shape[2]
        if not causal or q_len == 1:
            return None
        pos = torch.arange(key_len, device=query.device)
        keep = pos[None, :] <= pos[-q_len:, None]  # causal over the real keys
        mask = keep.view(1, 1, q_len, key_len)
    pad_shape = (*mask.shape[:-1], length)
    if mask.dtype == torch.bool:
        pad = torch.ones(pad_shape, dtype=torch.bool, device=mask.device)
    else:
        pad = torch.zeros(pad_shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask], dim=-1)


def prefix_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention with this layer's prefix prepended, then the model's own implementation."""
    base = module._peftbench_base_attn
    if base == "eager":
        fn = sys.modules[type(module).__module__].eager_attention_forward
    else:
        fn = ALL_ATTENTION_FUNCTIONS[base]
    kv = getattr(module, "_peftbench_kv", None)
    if kv is not None:
        pk, pv = kv
        b = key.shape[0]
        length = pk.shape[-2]
        causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", False)))
        attention_mask = _extend_mask(attention_mask, length, query, key.shape[2], causal)
        key = torch.cat([pk.to(key.dtype).unsqueeze(0).expand(b, -1, -1, -1), key], dim=2)
        value = torch.cat([pv.to(value.dtype).unsqueeze(0).expand(b, -1, -1, -1), value], dim=2)
    return fn(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTN_NAME, prefix_attention)


def _compute_prefix(base_model, args):
    """Forward pre-hook on the base model: compute every layer's prefix once per forward."""
    kv = base_model.peftbench_prefix()
    for i, attn in enumerate(base_model._peftbench_attn):
        attn._peftbench_kv = (kv[i, 0], kv[i, 1])


class Prefix(peftbench.Method):
    name = "prefix"
    knob = "prefix_len"
    default_knob = 20
    description = "prefix-tuning: learned keys/values in every attention layer"
    default_lr = 1e-2
    lr_reference = "Liu et al. 2022 (P-tuning v2): 5e-3..1e-2 on GLUE/SuperGLUE"
    Options = PrefixOptions

    def apply(self, model, knob_value, **options):
        opts = self.options(**options)
        config = model.config
        attns = [m for _, m in attention_modules(model, "prefix")]
        base_impl = getattr(config, "_attn_implementation", None)
        if base_impl not in SUPPORTED_BASE:
            raise UnsupportedModel(
                f"prefix: {type(model).__name__} uses attention {base_impl!r}; prefix supports "
                f"{' and '.join(SUPPORTED_BASE)} (load the model with attn_implementation='sdpa')"
            )
        unsure = [type(m).__name__ for m in attns if not isinstance(getattr(m, "is_causal", None), bool)]
        if unsure:  # sdpa takes a missing mask as causal: with prefix keys it would crop the real ones
            raise UnsupportedModel(
                f"prefix: {unsure[0]} does not say whether its attention is causal (no is_causal attribute); "
                "prefix-tuning needs it to build the mask over the prefix"
            )
        freeze(model)
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        routed = copy.copy(config)
        routed._attn_implementation_internal = ATTN_NAME
        for attn in attns:
            attn.config = routed
            attn._peftbench_base_attn = base_impl
        base_model = model.base_model
        like = next(model.parameters())
        base_model.peftbench_prefix = PrefixEncoder(
            len(attns), kv_heads, knob_value, head_dim, config.hidden_size, opts, like
        )
        base_model._peftbench_attn = attns
        base_model.register_forward_pre_hook(_compute_prefix)
        return model

    def finalize(self, model):
        model.base_model.peftbench_prefix.fold()

    def extra_sequence_length(self, model):
        return model.base_model.peftbench_prefix.shape[3]


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(Prefix())
