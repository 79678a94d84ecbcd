"""LoRA (Hu et al. 2021, arXiv 2106.09685): h = W0 x + (alpha/r) B A x.

A is random (Kaiming-uniform), B is zero, so the model starts exactly at W0; W0 is frozen.
``merge`` folds W0 + (alpha/r) B A into the base layer and removes the LoRA modules, leaving
a plain model with zero added latency (an adapted weight tied to another module, an LM head
sharing the input embeddings, is merged into its own copy: the embeddings keep W0). Works on
nn.Linear and GPT-2's Conv1D (fan_in_fan_out).

On a fused q/k/v projection (GPT-2's ``c_attn``, BLOOM's ``query_key_value``), the roles q, k, v
adapt only their slices of the output, each with its own A and B (as the LoRA paper's GPT-2
code does with ``enable_lora=[True, False, True]``); ``target_modules=qkv`` (or the module's
name) adapts the whole fused matrix, an explicit choice.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

import peftbench
from peftbench.arch import find_by_suffix, find_role, fused_qkv_slices, linear_features, replace_module
from peftbench.errors import UnsupportedModel
from peftbench.method import freeze

# Role shorthands accepted in target_modules; anything else is a module-name suffix.
ROLES = {"q": ("q",), "k": ("k",), "v": ("v",), "o": ("o",), "qkv": ("qkv",), "ffn": ("ffn_in", "ffn_out")}


@dataclass(frozen=True)
class LoRAOptions:
    alpha: float = 16.0
    dropout: float = 0.1
    #: roles q, k, v, o, qkv (a whole fused projection), ffn, or module-name suffixes (e.g. "query", "c_attn")
    target_modules: tuple[str, ...] = ("q", "v")

    def __post_init__(self):
        if not self.target_modules:
            raise ValueError("target_modules must name at least one role or module")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class LoRALayer(nn.Module):
    """A frozen linear layer plus a trainable low-rank update."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float, tied: bool = False):
        super().__init__()
        self.base = base
        self.tied = tied  # the base weight is shared with another module (an LM head tied to the embeddings)
        self.fan_in_fan_out = isinstance(base, Conv1D)
        n_in, n_out = linear_features(base)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, n_in, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(n_out, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """(alpha/r) B A, laid out like the base weight."""
        delta = (self.lora_B @ self.lora_A) * self.scaling
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x):
        out = self.base(x)
        if self.merged:
            return out
        return out + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            if self.tied:  # merge into a copy: the module sharing the weight keeps W0
                self.base.weight = nn.Parameter(self.base.weight.detach().clone(), requires_grad=False)
                self.tied = False
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False


class SlicedLoRALayer(nn.Module):
    """A frozen fused q/k/v projection plus one low-rank update per adapted slice of its output:
    h[idx] += (alpha/r) B A x for each adapted role, the other slices untouched."""

    def __init__(self, base: nn.Module, slices: dict, r: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.tied = False  # a fused q/k/v projection shares its weight with nothing
        self.fan_in_fan_out = isinstance(base, Conv1D)
        n_in, _ = linear_features(base)
        w = base.weight
        self.roles = sorted(slices)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for role in self.roles:
            self.register_buffer(f"index_{role}", slices[role].to(w.device), persistent=False)
            self.lora_A[role] = nn.Parameter(torch.empty(r, n_in, device=w.device, dtype=w.dtype))
            self.lora_B[role] = nn.Parameter(torch.zeros(len(slices[role]), r, device=w.device, dtype=w.dtype))
            nn.init.kaiming_uniform_(self.lora_A[role], a=math.sqrt(5))
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        _, n_out = linear_features(self.base)
        A = self.lora_A[self.roles[0]]
        delta = torch.zeros(n_out, A.shape[1], device=A.device, dtype=A.dtype)
        for role in self.roles:
            delta[getattr(self, f"index_{role}")] = (self.lora_B[role] @ self.lora_A[role]) * self.scaling
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x):
        out = self.base(x)
        if self.merged:
            return out
        x = self.dropout(x)
        for role in self.roles:
            update = F.linear(F.linear(x, self.lora_A[role]), self.lora_B[role]) * self.scaling
            out = out.index_add(-1, getattr(self, f"index_{role}"), update.to(out.dtype))
        return out

    merge = LoRALayer.merge
    unmerge = LoRALayer.unmerge


ANY_LORA = (LoRALayer, SlicedLoRALayer)


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ANY_LORA)]


def resolve_targets(model: nn.Module, targets) -> dict[str, tuple[nn.Module, set | None]]:
    """module name -> (module, roles of its output to adapt, or None for the whole matrix)."""
    found: dict[str, tuple[nn.Module, set | None]] = {}
    for target in targets:
        sliced = False
        if target in ROLES:
            hits = [hit for role in ROLES[target] for hit in find_role(model, role)]
            if not hits and target in ("q", "k", "v"):
                hits, sliced = find_role(model, "qkv"), True  # a fused projection: only this role's slice
        else:
            hits = find_by_suffix(model, target)
        if not hits:
            raise UnsupportedModel(
                f"lora: found no linear layers for target {target!r} in {type(model).__name__}; "
                "use roles q,k,v,o,qkv,ffn or module-name suffixes in target_modules"
            )
        for name, module in hits:
            _, roles = found.get(name, (module, set()))
            if not sliced or roles is None:
                found[name] = (module, None)  # the whole matrix was asked for
            else:
                found[name] = (module, roles | {target})
    return found


class LoRA(peftbench.Method):
    name = "lora"
    knob = "r"
    default_knob = 8
    mergeable = True
    description = "low-rank update of chosen projections (merge/unmerge)"
    default_lr = 5e-4
    lr_reference = "Hu et al. 2021 (LoRA), Table 9: RoBERTa-base, SST-2"
    Options = LoRAOptions

    def apply(self, model, knob_value, **options):
        opts = self.options(**options)
        freeze(model)
        names = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
        for name, (module, roles) in resolve_targets(model, opts.target_modules).items():
            if isinstance(module, ANY_LORA):
                continue
            if roles is None:
                tied = names[id(module.weight)] > 1  # e.g. lm_head with tie_word_embeddings
                layer = LoRALayer(module, knob_value, opts.alpha, opts.dropout, tied)
            else:
                slices = fused_qkv_slices(model, name, module)
                layer = SlicedLoRALayer(module, {r: slices[r] for r in roles}, knob_value, opts.alpha, opts.dropout)
            replace_module(model, name, layer)
        return model

    def merge(self, model):
        """Fold every LoRA update into its base layer and remove the LoRA modules."""
        for name, layer in lora_layers(model):
            layer.merge()
            replace_module(model, name, layer.base)
        return model


def merge_in_place(model):
    """Merge every LoRA layer, keeping the LoRA modules (undo with ``unmerge``)."""
    for _, layer in lora_layers(model):
        layer.merge()


def unmerge(model):
    for _, layer in lora_layers(model):
        layer.unmerge()


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(LoRA())
