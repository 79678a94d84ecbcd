"""LoRA against its definition: h = W0 x + (alpha/r) B A x, B = 0 at init, exact merge/unmerge."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from conftest import batch, make_model
from peftbench.method import apply_method
from peftbench.plugins import get_methods
from peftbench_plugins.lora import LoRALayer, lora_layers, merge_in_place, unmerge

LORA = get_methods()["lora"]


def test_layer_matches_the_formula_on_linear_and_conv1d():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6)
    lin = nn.Linear(6, 4)
    conv = Conv1D(4, 6)  # GPT-2 layout: weight is (in, out)
    conv.weight.data = lin.weight.data.T.clone()
    conv.bias.data = lin.bias.data.clone()
    for base in (lin, conv):
        layer = LoRALayer(base, r=3, alpha=12, dropout=0.0)
        assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
        torch.testing.assert_close(layer(x), base(x))  # B = 0: delta W = 0 at start
        with torch.no_grad():
            layer.lora_B.normal_()
        w0 = lin.weight  # (out, in) in both cases
        expected = x @ w0.T + lin.bias + (12 / 3) * x @ layer.lora_A.T @ layer.lora_B.T
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_merge_then_unmerge_restores_w0():
    model, _ = apply_method(LORA, make_model("gpt2"), 4)  # q and v slices of the fused c_attn
    for _, layer in lora_layers(model):
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if name.startswith("lora_B"):
                    p.normal_()
    w0 = {n: layer.base.weight.detach().clone() for n, layer in lora_layers(model)}
    model.eval()
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        before = model(**inputs).logits
        merge_in_place(model)
        merged = model(**inputs).logits
    for n, layer in lora_layers(model):
        torch.testing.assert_close(layer.base.weight - w0[n], layer.delta_weight(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(merged, before, atol=1e-5, rtol=1e-5)
    unmerge(model)
    for n, layer in lora_layers(model):
        torch.testing.assert_close(layer.base.weight, w0[n], atol=1e-6, rtol=0)
        assert not layer.merged


@pytest.mark.parametrize(
    "family,targets,expected",
    [
        ("bert", "q,v", {"attention.self.query", "attention.self.value"}),
        ("bert", "q,k,v,o,ffn", {"attention.self.query", "attention.self.key", "attention.self.value",
                                  "attention.output.dense", "intermediate.dense", "output.dense"}),
        ("gpt2", "q,v", {"attn.c_attn"}),
        ("llama", "q,v", {"self_attn.q_proj", "self_attn.v_proj"}),
        ("llama", "o,ffn", {"self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}),
        ("bert", "query", {"attention.self.query"}),
    ],
)
def test_target_modules(family, targets, expected):
    model, _ = apply_method(LORA, make_model(family), 2, {"target_modules": targets})
    found = {name.split(".", 3)[-1] if family != "bert" else name.split("layer.", 1)[1].split(".", 1)[1]
             for name, _ in lora_layers(model)}
    assert found == expected


def test_a_module_name_suffix_never_reaches_the_task_head():
    """RoBERTa's head has a ``classifier.dense``: ``dense`` adapts the base model's dense layers only
    (the head trains in full with every method and is counted apart from the budget)."""
    model, _ = apply_method(LORA, make_model("roberta"), 2, {"target_modules": "dense"})
    names = [name for name, _ in lora_layers(model)]
    assert names and all(n.startswith("roberta.") for n in names)
    assert not any(n.startswith("classifier") for n, p in model.named_parameters() if "lora_" in n)
    from peftbench.errors import UnsupportedModel

    with pytest.raises(UnsupportedModel, match="'classifier' names only the task head"):
        apply_method(LORA, make_model("bert"), 2, {"target_modules": "classifier"})


def test_alpha_and_dropout_options():
    model, _ = apply_method(LORA, make_model("bert"), 4, {"alpha": "32", "dropout": "0"})
    layer = lora_layers(model)[0][1]
    assert layer.scaling == 8.0 and isinstance(layer.dropout, nn.Identity)


@pytest.mark.slow
def test_real_minilm_lora_r8_count():
    from peftbench.models import load_config, meta_model
    from peftbench.tasks import Task

    task = Task("t", 1, "x", "a", "b", ("s",), "label")
    from peftbench.models import load_model, load_tokenizer

    tok = load_tokenizer("minilm")
    model = load_model("minilm", task, tok)
    _, counts = apply_method(LORA, model, 8)
    assert counts.method == 73_728
    assert counts.head == 384 * 2 + 2
    _, meta_counts = apply_method(LORA, meta_model(load_config("minilm")), 8)
    assert meta_counts.method == 73_728


def test_merge_into_an_lm_head_tied_to_the_embeddings_leaves_the_embeddings_alone():
    """LLaMA's lm_head shares the input embeddings' matrix: merging ΔW into it in place changed the
    embeddings too (logits off by ~6 on the tiny model); the merge goes into the head's own copy."""
    from conftest import assert_tied_head_merge_keeps_embeddings

    assert_tied_head_merge_keeps_embeddings(LORA, "lm_head,q")
