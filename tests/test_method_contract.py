"""The contract every registered method must keep, on tiny models of several families.

The matrix is built from the plugin registry (the checks live in peftbench.testing, which
third-party plugins run with `peftbench check` or `pytest -p peftbench.testing`).
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_model
from peftbench.errors import UnsupportedModel
from peftbench.method import apply_method
from peftbench.plugins import get_methods
from peftbench.testing import CAUSAL_FAMILIES, FAMILIES, NotApplicable, checks_for

METHODS = get_methods()
CASES = [(m, f, c) for m in METHODS for f in FAMILIES + CAUSAL_FAMILIES for c in checks_for(f)]


@pytest.mark.parametrize("name,family,check", CASES)
def test_contract(name, family, check):
    """peftbench.testing's checks (what `peftbench check` and `pytest -p peftbench.testing` run), on
    classifiers and causal LMs."""
    try:
        checks_for(family)[check](METHODS[name], family)
    except NotApplicable as e:
        pytest.skip(f"{name} does not apply to {family}: {e}")


@pytest.mark.parametrize("family", FAMILIES)
def test_bitfit_trains_exactly_the_biases(family):
    model = make_model(family)
    try:
        model, counts = apply_method(METHODS["bitfit"], model, None)
    except UnsupportedModel as e:
        assert family == "llama" and "no bias terms" in str(e)
        return
    head = METHODS["bitfit"].head_parameter_names(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} - head == {
        n for n, _ in model.named_parameters() if n.endswith(".bias") and n not in head
    }


def test_unsupported_architecture_names_model_class():
    class NotATransformer(torch.nn.Module):
        base_model_prefix = "body"

        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 4)
            self.config = type("Cfg", (), {"num_hidden_layers": 2})()

    for name in ("lora", "adapter", "prefix"):
        with pytest.raises(UnsupportedModel, match="NotATransformer"):
            apply_method(METHODS[name], NotATransformer(), 2)


def test_bad_knob_and_options_are_rejected():
    from peftbench.errors import PeftbenchError

    model = make_model("bert")
    with pytest.raises(PeftbenchError, match="positive integer"):
        apply_method(METHODS["lora"], model, 0)
    with pytest.raises(PeftbenchError, match="no size knob"):
        apply_method(METHODS["full"], model, 4)
    with pytest.raises(PeftbenchError, match="unknown option 'alpah'.*did you mean alpha"):
        apply_method(METHODS["lora"], model, 4, {"alpah": "32"})
    with pytest.raises(PeftbenchError, match="placement must be one of"):
        apply_method(METHODS["adapter"], model, 4, {"placement": "sideways"})
