"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021).

An adapter is down-projection, nonlinearity, up-projection and a residual connection,
initialised near the identity (up-projection zero). Houlsby placement puts one after the
attention output projection and one after the FFN output; Pfeiffer only after the FFN.
Adapters sit in the forward path, so they cannot merge and add inference latency.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import peftbench
from peftbench.arch import linear_features, replace_module, require_role
from peftbench.method import freeze

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}
PLACEMENTS = {"houlsby": ("o", "ffn_out"), "pfeiffer": ("ffn_out",)}


@dataclass(frozen=True)
class AdapterOptions:
    placement: str = "houlsby"
    activation: str = "relu"
    init_std: float = 0.01

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")


class Adapter(nn.Module):
    def __init__(self, hidden: int, bottleneck: int, activation: str, init_std: float, like: torch.Tensor):
        super().__init__()
        kw = {"device": like.device, "dtype": like.dtype}
        self.down = nn.Linear(hidden, bottleneck, **kw)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden, **kw)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # starts as the identity
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return h + self.up(self.act(self.down(h)))


class WithAdapter(nn.Module):
    """A frozen output projection followed by an adapter."""

    def __init__(self, base: nn.Module, adapter: Adapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x):
        return self.adapter(self.base(x))


class BottleneckAdapter(peftbench.Method):
    name = "adapter"
    knob = "bottleneck"
    default_knob = 16
    description = "bottleneck adapters, Houlsby (attn+FFN) or Pfeiffer (FFN) placement"
    default_lr = 1e-3
    lr_reference = "Houlsby et al. 2019: grid 3e-5..3e-3; Pfeiffer et al. 2021: 1e-4..1e-3"
    Options = AdapterOptions

    def apply(self, model, knob_value, **options):
        opts = self.options(**options)
        freeze(model)
        for role in PLACEMENTS[opts.placement]:
            for name, proj in require_role(model, role, "adapter"):
                _, hidden = linear_features(proj)
                adapter = Adapter(hidden, knob_value, opts.activation, opts.init_std, proj.weight)
                replace_module(model, name, WithAdapter(proj, adapter))
        return model


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(BottleneckAdapter())
