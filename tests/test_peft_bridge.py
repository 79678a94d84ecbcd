"""The HF peft bridge: parity of peft-lora with the native LoRA, options, errors."""

import copy

import pytest
import torch

pytest.importorskip("peft")

from conftest import batch, make_model  # noqa: E402
from peftbench.budget import Counter, solve  # noqa: E402
from peftbench.errors import PeftbenchError, UnsupportedModel  # noqa: E402
from peftbench.method import apply_method  # noqa: E402
from peftbench.plugins import get_methods  # noqa: E402
from peftbench.testing import copy_native_lora_into_peft  # noqa: E402

METHODS = get_methods()
NATIVE, PEFT = METHODS["lora"], METHODS["peft-lora"]


def _pair(family, r=4, **opts):
    native, n_counts = apply_method(NATIVE, make_model(family), r, {"dropout": 0, **opts.get("native", {})})
    bridged, p_counts = apply_method(PEFT, make_model(family), r, {"lora_dropout": 0, **opts.get("peft", {})})
    return native, n_counts, bridged, p_counts


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_native_and_peft_lora_agree(family):
    # peft adapts GPT-2's whole fused c_attn by default; the native LoRA's q,v would adapt slices
    native, n_counts, bridged, p_counts = _pair(family, native={"target_modules": "qkv"} if family == "gpt2" else {})
    assert n_counts == p_counts
    assert copy_native_lora_into_peft(native, bridged) == 2 * (2 if family != "gpt2" else 1) * 2
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    native.eval(), bridged.eval()
    with torch.no_grad():
        a, b = native(**inputs).logits, bridged(**inputs).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        merged_n = NATIVE.merge(copy.deepcopy(native))(**inputs).logits
        merged_p = PEFT.merge(copy.deepcopy(bridged))(**inputs).logits
    torch.testing.assert_close(merged_n, a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged_p, b, atol=1e-5, rtol=1e-5)


def test_identical_training_steps_give_the_same_losses():
    native, _, bridged, _ = _pair("bert")
    copy_native_lora_into_peft(native, bridged)
    losses = []
    for model in (native, bridged):
        torch.manual_seed(0)  # the base model's own dropout draws the same masks
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        run = []
        for step in range(5):
            loss = model(**batch(seed=20 + step)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            run.append(loss.item())
        losses.append(run)
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=1e-5)


def test_options_pass_through_and_unknown_ones_are_rejected():
    _, counts = apply_method(PEFT, make_model("bert"), 2, {"target_modules": "query,key,value", "lora_alpha": "32"})
    _, native = apply_method(NATIVE, make_model("bert"), 2, {"target_modules": "q,k,v"})
    assert counts.method == native.method
    with pytest.raises(PeftbenchError, match="unknown option 'lora_alpah'.*did you mean lora_alpha"):
        PEFT.options(lora_alpah="3")


def test_inapplicable_method_is_a_one_line_error():
    with pytest.raises(UnsupportedModel, match="peft-loha: peft cannot apply LoHaConfig to GPT2ForSequenceClassification"):
        apply_method(METHODS["peft-loha"], make_model("gpt2"), 2)


def test_budget_solver_treats_peft_lora_like_native():
    model = make_model("bert")
    with torch.device("meta"):
        meta = type(model)(model.config)
    counter = Counter(meta)
    for target in (500, 2000, 5000):
        assert solve(PEFT, {}, target, counter).knob_value == solve(NATIVE, {}, target, counter).knob_value


def test_prefix_counts_native_vs_peft():
    """Both learn length x layers x 2 (key, value) x kv-heads x head-dim values (GQA-aware
    on LLaMA); peft's head is a trained copy of the same size."""
    for family, kv_width in (("bert", 32), ("llama", 2 * 8)):
        _, native = apply_method(METHODS["prefix"], make_model(family), 5)
        _, bridged = apply_method(METHODS["peft-prefix"], make_model(family), 5)
        assert bridged.head == native.head
        assert bridged.method == native.method == 5 * 2 * 2 * kv_width


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_adalora_allocates_ranks_through_the_training_loop(family):
    """The training loop calls the method's after-step hook: AdaLoRA prunes from init_r to
    target_r (the knob is init_r), and the merged model gives the same outputs."""
    from peftbench.data import Collator
    from peftbench.train import TrainConfig, train

    method = METHODS["peft-adalora"]
    model, counts = apply_method(method, make_model(family), 6, {"target_r": 2})
    n_modules = sum(1 for n, _ in model.named_parameters() if "lora_E" in n)
    assert n_modules and counts.method == sum(p.numel() for n, p in model.named_parameters()
                                              if p.requires_grad and ".lora_" in n)
    with torch.device("meta"):  # the budget solver's count on the meta device is the real count
        meta = type(make_model(family))(make_model(family).config)
    assert Counter(meta).count(method, {"target_r": 2}, 6) == counts.method
    gen = torch.Generator().manual_seed(0)
    examples = [{"input_ids": torch.randint(5, 90, (6,), generator=gen).tolist(), "attention_mask": [1] * 6,
                 "labels": i % 2} for i in range(48)]
    stats = train(model, examples, Collator(0, False), TrainConfig(lr=1e-2, batch_size=8, epochs=1), "cpu",
                  on_start=lambda total: method.on_train_start(model, total))  # as the runner calls it
    assert stats.steps == 6
    kept = sum(int((p != 0).sum()) for n, p in model.named_parameters() if "lora_E" in n)
    assert kept == 2 * n_modules  # the final mask: target_r per module on average
    inputs = {k: v for k, v in batch(seed=3).items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        before = model(**inputs).logits
        merged = method.merge(copy.deepcopy(model))
        assert not any("lora" in n for n, _ in merged.named_modules())
        torch.testing.assert_close(merged(**inputs).logits, before, atol=1e-5, rtol=0)


def test_adalora_rejects_a_target_rank_above_the_initial_rank():
    with pytest.raises(UnsupportedModel, match="target_r=8 exceeds init_r=4"):
        apply_method(METHODS["peft-adalora"], make_model("bert"), 4, {"target_r": 8})


def test_registering_the_bridge_imports_no_peft():
    """peft (0.6 s to import) is imported where a peft method is first used, not by every process
    that loads the plugins (a sweep's plan, each run of lora or adapter)."""
    import subprocess
    import sys

    code = ("import sys; from peftbench.plugins import load_plugins, get_methods; load_plugins(()); "
            "m = get_methods(); assert 'peft-lora' in m and m['peft-lora'].version.startswith('1+peft'); "
            "print('peft' in sys.modules); m['peft-lora'].options(lora_alpha='32'); print('peft' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "True"]


def test_a_target_suffix_never_reaches_the_task_head():
    """``dense`` also names RoBERTa's ``classifier.dense``: as with the native LoRA, peft adapts the base
    model's dense layers only, so the method's count is the native one and the head's count is the head."""
    native, n_counts, bridged, p_counts = _pair("roberta", native={"target_modules": "dense"},
                                                peft={"target_modules": "dense"})
    assert p_counts == n_counts
    assert not any(n.startswith("classifier") and "lora_" in n for n, _ in bridged.named_parameters())
    with pytest.raises(UnsupportedModel, match="target_modules=out_proj names only the task head"):
        apply_method(PEFT, make_model("roberta"), 2, {"target_modules": "out_proj"})
    # peft's all-linear (a keyword, not a module name) leaves out an LM's output layer only: not a classifier
    model, counts = apply_method(PEFT, make_model("roberta"), 2, {"target_modules": "all-linear"})
    assert not any(n.startswith("classifier") and "lora_" in n for n, _ in model.named_parameters())
    assert any(".intermediate.dense.lora_A" in w for w in counts.where)  # the base model's linears, all of them
    assert counts.head == sum(p.numel() for n, p in make_model("roberta").named_parameters() if n.startswith("classifier"))


def test_merging_into_an_lm_head_tied_to_the_embeddings_leaves_the_embeddings_alone():
    """peft adds ΔW to the matrix the LM head shares with the input embeddings (its own warning says
    so): the merged model's logits were off by ~6 (the merge check fails the run); the head merges into
    its own copy."""
    from conftest import assert_tied_head_merge_keeps_embeddings

    assert_tied_head_merge_keeps_embeddings(PEFT, "lm_head,q_proj")


def test_leaving_the_head_out_keeps_peft_options_that_read_target_modules():
    """The head goes into exclude_modules, target_modules stays as given: layers_to_transform still
    selects layers (a list of full names skipped it), IA3's feedforward_modules is still a subset."""
    model, _ = apply_method(PEFT, make_model("roberta"), 2, {"target_modules": "dense", "layers_to_transform": "0"})
    adapted = {n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert adapted and all(".layer.0." in n for n in adapted) and not any("classifier" in n for n in adapted)
    ia3, _ = apply_method(METHODS["peft-ia3"], make_model("roberta"), None,
                          {"target_modules": "query,dense", "feedforward_modules": "dense"})
    assert not any(n.startswith("classifier") and "ia3_" in n for n, _ in ia3.named_parameters())


def test_prompt_learning_is_refused_where_a_parent_class_pools_the_last_token():
    """transformers' generic decoder classifier finds the last token in its own forward, which a model's
    forward may call (Cohere's text classifier): the check reads every class's forward."""
    import transformers

    from peftbench_plugins.peft_bridge import _pools_last_token

    cls = getattr(transformers, "CohereCompassTextForSequenceClassification", None)
    if cls is None:
        pytest.skip("this transformers has no CohereCompassTextForSequenceClassification")
    config = transformers.CohereCompassTextConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, num_labels=2, pad_token_id=0,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0}})
    assert _pools_last_token(cls(config))
    assert not _pools_last_token(make_model("roberta")) and _pools_last_token(make_model("llama"))
