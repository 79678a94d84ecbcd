"""Prefix-tuning inserted at the attention interface: checked against its own invariants."""

import pytest
import torch

from conftest import batch, make_model
from peftbench.method import apply_method
from peftbench.plugins import get_methods

PREFIX = get_methods()["prefix"]


def _logits(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def _with_prefix(family, attn, knob=3, **opts):
    model = make_model(family, seed=0, attn_implementation=attn)
    model, _ = apply_method(PREFIX, model, knob, opts)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.base_model.peftbench_prefix.parameters():
            p.normal_()
    return model


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_eager_and_sdpa_agree(family):
    """The two attention implementations take different mask formats (float vs bool/None)."""
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    eager = _logits(_with_prefix(family, "eager"), inputs)
    sdpa = _logits(_with_prefix(family, "sdpa"), inputs)
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_models_stay_causal(family):
    """Changing a later token must not change an earlier position's hidden state."""
    model = _with_prefix(family, "sdpa").eval()
    ids = torch.randint(3, 1000, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 7) % 1000
    with torch.no_grad():
        a = model.base_model(input_ids=ids).last_hidden_state
        b = model.base_model(input_ids=changed).last_hidden_state
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_prefix_changes_outputs_and_padding_still_masked(family):
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    base = _logits(make_model(family, attn_implementation="sdpa"), inputs)
    model = _with_prefix(family, "sdpa")
    out = _logits(model, inputs)
    assert not torch.allclose(out, base)
    if family == "bert":
        noisy = {k: v.clone() for k, v in inputs.items()}
        noisy["input_ids"][-1, -3:] = 5  # change padded positions (attention_mask 0) only
        torch.testing.assert_close(_logits(model, noisy), out, atol=1e-6, rtol=1e-5)
        return
    # GPT-2 is causal: right padding sits after every real token anyway, and its pooling finds the
    # last token by pad id; pad on the left instead, where only the mask hides the pads
    ids = inputs["input_ids"][:1].clone()
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    noisy = ids.clone()
    noisy[0, :3] = 5
    with torch.no_grad():
        a = model.eval().base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = model.base_model(input_ids=noisy, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a[:, 3:], b[:, 3:], atol=1e-6, rtol=1e-5)


def test_reparam_folds_into_plain_prefix():
    model = make_model("bert")
    model, counts = apply_method(PREFIX, model, 4, {"reparam": "true", "reparam_hidden": "16"})
    enc = model.base_model.peftbench_prefix
    assert enc.reparam and counts.method == 4 * 32 + (32 * 16 + 16) + (16 * 2 * 2 * 32 + 2 * 2 * 32)
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    before = _logits(model, inputs)
    PREFIX.finalize(model)
    assert not enc.reparam and enc.prefix.shape == (2, 2, 4, 4, 8)
    torch.testing.assert_close(_logits(model, inputs), before, atol=1e-6, rtol=1e-5)
    assert PREFIX.extra_sequence_length(model) == 4


def test_prefix_count_matches_layers_heads_and_length():
    _, counts = apply_method(PREFIX, make_model("llama"), 5)  # GQA: 2 kv heads of dim 8
    assert counts.method == 2 * 2 * 2 * 5 * 8
    _, counts = apply_method(PREFIX, make_model("bert"), 5)
    assert counts.method == 2 * 2 * 4 * 5 * 8


def test_an_attention_that_does_not_say_whether_it_is_causal_is_refused():
    """sdpa takes a missing mask as causal and would crop the real keys behind the prefix: an
    attention module without ``is_causal`` cannot be prefixed safely."""
    from peftbench.arch import attention_modules
    from peftbench.errors import UnsupportedModel

    model = make_model("bert")
    for _, attn in attention_modules(model, "prefix"):
        attn.is_causal = None
    with pytest.raises(UnsupportedModel, match="does not say whether its attention is causal"):
        apply_method(PREFIX, model, 4)
