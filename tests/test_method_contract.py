"""The contract every registered method must keep, on tiny models of several families.

The matrix is built from the plugin registry, so a new method plugin is covered without
editing this file.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from conftest import batch, make_model
from peftbench.errors import UnsupportedModel
from peftbench.measure import checkpoint_bytes
from peftbench.method import apply_method
from peftbench.plugins import get_methods

METHODS = get_methods()
FAMILIES = ["bert", "roberta", "gpt2", "llama"]
CASES = [(m, f) for m in METHODS for f in FAMILIES]


def _knob(method, value=4):
    return value if method.knob else None


def _prepared(name, family, knob=4, seed=0):
    method = METHODS[name]
    model = make_model(family, seed=seed)
    try:
        model, counts = apply_method(method, model, _knob(method, knob))
    except UnsupportedModel as e:
        pytest.skip(f"{name} does not apply to {family}: {e}")
    return method, model, counts


def _outputs(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


def _train(model, steps=4, lr=1e-2):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    for i in range(steps):
        loss = model(**batch(seed=10 + i)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("name,family", CASES)
def test_only_method_and_head_change(name, family):
    method, model, counts = _prepared(name, family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = method.head_parameter_names(model)
    assert head and head <= trainable, "the head must be trainable for every method"
    assert counts.method > 0 and counts.head == sum(p.numel() for n, p in model.named_parameters() if n in head)
    _train(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen = set(before) - trainable
    assert not (changed & frozen), f"frozen parameters changed: {sorted(changed & frozen)[:3]}"
    assert changed & head, "the head did not train"
    assert changed & (trainable - head), "none of the method's parameters trained"


@pytest.mark.parametrize("name,family", CASES)
def test_trainable_count_grows_with_knob(name, family):
    method = METHODS[name]
    counts = []
    for knob in (1, 2, 3, 8):
        _, _, c = _prepared(name, family, knob=knob)
        counts.append(c.method)
    if method.knob:
        assert all(a < b for a, b in zip(counts, counts[1:])), counts
    else:
        assert len(set(counts)) == 1, counts


@pytest.mark.parametrize("name,family", CASES)
def test_save_and_reload_trainable_state(name, family, tmp_path):
    method, model, _ = _prepared(name, family, seed=0)
    _train(model)
    method.finalize(model)
    inputs = batch(seed=3)
    expected = _outputs(model, inputs)
    path = tmp_path / "state.safetensors"
    size = checkpoint_bytes(method.trainable_state(model), path)
    assert size == path.stat().st_size > 0

    fresh_method, fresh, _ = _prepared(name, family, seed=0)  # same base weights, fresh method init
    fresh_method.finalize(fresh)
    assert not torch.allclose(_outputs(fresh, inputs), expected)
    fresh_method.load_trainable_state(fresh, load_file(path))
    torch.testing.assert_close(_outputs(fresh, inputs), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name,family", CASES)
def test_merge_gives_same_outputs_and_plain_model(name, family):
    method, model, _ = _prepared(name, family)
    _train(model)
    method.finalize(model)
    inputs = batch(seed=4)
    unmerged = _outputs(model, inputs)
    merged_model = method.merge(copy.deepcopy(model))
    torch.testing.assert_close(_outputs(merged_model, inputs), unmerged, atol=1e-5, rtol=1e-5)
    if method.mergeable:
        base = make_model(family)
        assert [type(m) for m in merged_model.modules()] == [type(m) for m in base.modules()]
        assert sum(p.numel() for p in merged_model.parameters()) == sum(p.numel() for p in base.parameters())


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
