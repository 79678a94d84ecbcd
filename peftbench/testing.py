"""The contract every method plugin must keep, for built-in and third-party methods alike.

Each check applies a method to tiny models of several families (built from configs in code,
no downloads) and raises ``ContractFailure`` naming the property that does not hold:

- ``trains only its own parameters and the head``: after a few optimizer steps no frozen base
  weight changed, the head trained, and some of the method's own parameters trained;
- ``count grows with the knob``: the method's trainable count rises strictly with its knob
  (the budget solver relies on it), or stays fixed for a method without one;
- ``checkpoint restores the model``: ``trainable_state`` saved as safetensors and loaded into a
  fresh model whose method was initialised under a *different* seed gives the trained outputs;
- ``merge keeps the outputs``: ``merge`` gives the unmerged outputs; for a mergeable method the
  merged model is a plain base model (same module types and parameter count), for the others
  ``merge`` is the identity;
- on classifiers also ``padding does not change outputs``: a row scores in a right-padded batch as it does
  alone (a method that hides ``input_ids`` from a decoder classifier breaks its last-token pooling);
- on causal LMs (GPT-2, LLaMA with tied embeddings, BLOOM's fused ``query_key_value``) also
  ``loss on target tokens only`` and ``generation: cache, padding, EOS`` (``generate`` with the KV
  cache equals greedy decoding by full forward passes, a prompt generates the same alone and in a
  left-padded batch, each sequence stops at its own EOS).
  The LM head is part of the frozen base there: a method may not train it unless it says so.

Use it three ways: ``peftbench check FILE.py|ENTRY_POINT`` prints a pass/fail table;
``pytest -p peftbench.testing --peftbench-methods NAME[,NAME]`` adds the matrix to a test run
(``--peftbench-plugins FILE.py`` loads local plugin files first); or call ``run_checks`` /
``CHECKS`` from your own tests.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UnsupportedModel

FAMILIES = ("bert", "roberta", "gpt2", "llama")  # sequence classification
CAUSAL_FAMILIES = ("gpt2-lm", "llama-lm", "bloom-lm")  # causal language models (generation tasks)
ALL_FAMILIES = FAMILIES + CAUSAL_FAMILIES
EOS = 1  # the tiny causal models' EOS (and BOS) token id; 0 is padding


def tiny_model(family: str, seed: int = 0, num_labels: int = 2, vocab: int = 1000, **kw):
    """A two-layer model of ``family`` with random weights from ``seed``: sequence classification,
    or a causal LM for the ``-lm`` families (tied embeddings for LLaMA and BLOOM)."""
    from transformers import (BertConfig, BertForSequenceClassification, BloomConfig, BloomForCausalLM, GPT2Config,
                              GPT2ForSequenceClassification, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                              LlamaForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

    torch.manual_seed(seed)
    if family.endswith("-lm"):
        lm = {"vocab_size": vocab, "pad_token_id": 0, "bos_token_id": EOS, "eos_token_id": EOS, **kw}
        if family == "gpt2-lm":
            return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **lm))
        if family == "llama-lm":
            return LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                num_key_value_heads=2, intermediate_size=64,
                                                max_position_embeddings=128, tie_word_embeddings=True, **lm))
        if family == "bloom-lm":
            return BloomForCausalLM(BloomConfig(hidden_size=32, n_layer=2, n_head=4, **lm))
    common = dict(num_labels=num_labels, vocab_size=vocab, **kw)
    if family == "bert":
        return BertForSequenceClassification(BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=128, **common))
    if family == "roberta":
        return RobertaForSequenceClassification(RobertaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2, **common))
    if family == "gpt2":
        return GPT2ForSequenceClassification(GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_positions=128, pad_token_id=0, bos_token_id=1, eos_token_id=1,
            **common))
    if family == "llama":
        return LlamaForSequenceClassification(LlamaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=1,
            **common))
    raise ValueError(f"unknown family {family!r}; use one of {', '.join(ALL_FAMILIES)}")


def tiny_batch(vocab: int = 1000, seed: int = 1, bsz: int = 3, length: int = 9, labels: bool = True,
               family: str = "bert") -> dict:
    """Token ids with right padding in the last row (pad id 0 is never used for real tokens). For
    a causal LM the labels are the ids, -100 on a 3-token "prompt" and on padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (bsz, length), generator=g)
    mask = torch.ones(bsz, length, dtype=torch.long)
    mask[-1, length - 3:] = 0
    ids[-1, length - 3:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if labels and family.endswith("-lm"):
        out["labels"] = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
        out["labels"][:, :3] = -100
    elif labels:
        out["labels"] = torch.tensor([i % 2 for i in range(bsz)])
    return out


class ContractFailure(AssertionError):
    """A method breaks the contract; the message names the property."""


class NotApplicable(Exception):
    """The method does not apply to this model family (it said so with UnsupportedModel)."""


def prepared(method, family: str, knob: int = 4, seed: int = 0, method_seed: int | None = None):
    """(model, counts): ``family``'s tiny model (base weights from ``seed``) with ``method`` applied,
    its own random initialisation drawn under ``method_seed`` (default: right after the base)."""
    from .method import apply_method

    model = tiny_model(family, seed=seed)
    if method_seed is not None:
        torch.manual_seed(method_seed)
    try:
        return apply_method(method, model, knob if method.knob else None)
    except UnsupportedModel as e:
        raise NotApplicable(str(e)) from None


def outputs(model, inputs) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


def train_steps(model, steps: int = 4, lr: float = 1e-2, family: str = "bert") -> None:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # a probe on a causal LM trains nothing at all
        return
    opt = torch.optim.AdamW(params, lr=lr)
    for i in range(steps):
        loss = model(**tiny_batch(seed=10 + i, family=family)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


def _fail(what: str, detail: str = ""):
    raise ContractFailure(what + (f": {detail}" if detail else ""))


def check_trains_only_its_own_parameters(method, family):
    model, counts = prepared(method, family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = method.head_parameter_names(model)
    causal = family.endswith("-lm")
    if causal and head:
        _fail("a causal LM has no task head, yet the method names one", ", ".join(sorted(head)[:3]))
    if not causal and (not head or not head <= trainable):
        _fail("the head is not trainable", ", ".join(sorted(head - trainable)[:3]))
    if counts.head != sum(p.numel() for n, p in model.named_parameters() if n in head):
        _fail("head parameters miscounted")
    train_steps(model, family=family)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen_changed = changed - trainable
    if frozen_changed:
        _fail("trains frozen weights", ", ".join(sorted(frozen_changed)[:3]))
    if not causal and not changed & head:
        _fail("the head did not train")
    if not getattr(method, "probe", False) and not changed & (trainable - head):
        _fail("none of the method's own parameters trained")


def check_count_grows_with_knob(method, family):
    counts = [prepared(method, family, knob=k)[1].method for k in (1, 2, 3, 8)]
    if method.knob and not all(a < b for a, b in zip(counts, counts[1:])):
        _fail(f"trainable count does not grow strictly with {method.knob}", f"{counts} at 1, 2, 3, 8")
    if not method.knob and len(set(counts)) != 1:
        _fail("a method without a knob changes its count", str(counts))
    return None if method.knob else "no knob: the count stays the same"


def check_checkpoint_restores(method, family):
    from safetensors.torch import load_file

    from .measure import checkpoint_bytes

    model, _ = prepared(method, family)
    train_steps(model, family=family)
    method.finalize(model)
    inputs = tiny_batch(seed=3, family=family)
    expected = outputs(model, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.safetensors"
        if checkpoint_bytes(method.trainable_state(model), path) <= 0:
            _fail("checkpoint is empty")
        # same base weights, the method's own initialisation under another seed: a checkpoint
        # that leaves out a random tensor the method needs (e.g. a frozen random projection) fails
        fresh, _ = prepared(method, family, method_seed=1234)
        method.finalize(fresh)
        method.load_trainable_state(fresh, load_file(path))
    got = outputs(fresh, inputs)
    if not torch.allclose(got, expected, atol=1e-6, rtol=1e-5):
        _fail("checkpoint does not restore the trained model",
              f"max |difference| {float((got - expected).abs().max()):.3g} after loading trainable_state")


def check_merge_keeps_outputs(method, family):
    model, _ = prepared(method, family)
    train_steps(model, family=family)
    method.finalize(model)
    inputs = tiny_batch(seed=4, family=family)
    unmerged = outputs(model, inputs)
    if not method.mergeable:
        if method.merge(model) is not model:
            _fail("merge of a non-mergeable method must return the model unchanged")
        return "not mergeable: merge returns the model unchanged"
    merged = method.merge(copy.deepcopy(model))
    got = outputs(merged, inputs)
    if not torch.allclose(got, unmerged, atol=1e-5, rtol=1e-5):
        _fail("merge changes outputs", f"max |difference| {float((got - unmerged).abs().max()):.3g}")
    base = tiny_model(family)
    if [type(m) for m in merged.modules()] != [type(m) for m in base.modules()]:
        _fail("merged model is not a plain base model", "its module types differ from the base model's")
    if sum(p.numel() for p in merged.parameters()) != sum(p.numel() for p in base.parameters()):
        _fail("merged model has a different parameter count than the base model")


def check_loss_on_targets_only(method, family):
    """A causal LM's loss reaches the logits of the positions that predict a target token and no
    others (prompt and padding carry no loss); a regulariser a method adds does not matter here."""
    model, _ = prepared(method, family)
    if not any(p.requires_grad for p in model.parameters()):
        return  # nothing trains: no loss reaches anything
    batch = tiny_batch(seed=5, family=family)
    model.train()
    out = model(**batch)
    out.logits.retain_grad()
    out.loss.backward()
    rows = out.logits.grad.abs().sum(-1) > 0  # (batch, positions) that the loss reached
    labels = batch["labels"]
    expected = labels[:, 1:] != -100  # position t predicts token t + 1
    if rows.shape[1] == labels.shape[1]:
        if not torch.equal(rows[:, :-1], expected) or rows[:, -1].any():
            _fail("the loss reaches positions other than those predicting target tokens")
    elif int(rows.sum()) != int(expected.sum()):  # virtual tokens prepended (prompt tuning)
        _fail("the loss reaches more or fewer positions than there are target tokens",
              f"{int(rows.sum())} vs {int(expected.sum())}")


def _greedy_by_forward(model, ids, steps):
    """Greedy decoding by full forward passes, no cache: the reference for ``generate``."""
    for _ in range(steps):
        token = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, token], 1)
    return ids


def check_generation(method, family):
    """``generate`` with the KV cache equals greedy decoding by full forward passes; a prompt
    gives the same output alone as inside a left-padded batch; each sequence stops at its EOS."""
    model, _ = prepared(method, family)
    train_steps(model, family=family)
    method.finalize(model)
    model.eval()
    g = torch.Generator().manual_seed(7)
    kw = dict(max_new_tokens=4, do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
              pad_token_id=0, use_cache=True)
    same = torch.randint(3, 1000, (2, 5), generator=g)
    with torch.no_grad():
        cached = model.generate(input_ids=same, attention_mask=torch.ones_like(same), eos_token_id=None, **kw)
        if not torch.equal(cached, _greedy_by_forward(model, same, kw["max_new_tokens"])):
            _fail("generation with the KV cache differs from greedy decoding by full forward passes")
        prompts = [torch.randint(3, 1000, (n,), generator=g) for n in (5, 2)]
        length = max(len(p) for p in prompts)
        ids = torch.stack([torch.cat([torch.zeros(length - len(p), dtype=torch.long), p]) for p in prompts])
        mask = (ids != 0).long()
        batched = model.generate(input_ids=ids, attention_mask=mask, eos_token_id=None, **kw)[:, length:]
        for row, p in enumerate(prompts):
            alone = model.generate(input_ids=p[None], attention_mask=torch.ones_like(p[None]), eos_token_id=None, **kw)
            if not torch.equal(alone[0, len(p):], batched[row]):
                _fail("left padding changes what a prompt generates", f"alone {alone[0, len(p):].tolist()}, "
                      f"in a batch {batched[row].tolist()}")
        stop = int(batched[0, 1])  # a token the first prompt generates, made the EOS
        stopped = model.generate(input_ids=ids, attention_mask=mask, eos_token_id=stop, **kw)[:, length:]
    for row in range(len(prompts)):
        free, got = batched[row].tolist(), stopped[row].tolist()
        end = free.index(stop) + 1 if stop in free else len(free)
        if got[:end] != free[:end] or any(t != 0 for t in got[end:]):
            _fail("a sequence did not stop at its EOS", f"row {row}: {got} with EOS {stop}, free run {free}")


def check_padding(method, family):
    """A classifier's output for a row does not depend on its batch's padding: the right-padded row of
    ``tiny_batch`` scores as it does alone without its padding."""
    model, _ = prepared(method, family)
    train_steps(model, family=family)
    method.finalize(model)
    inputs = tiny_batch(seed=4, family=family)
    padded = outputs(model, inputs)[-1]
    keep = inputs["attention_mask"][-1].bool()
    alone = outputs(model, {k: inputs[k][-1:, keep] for k in ("input_ids", "attention_mask")})[0]
    if not torch.allclose(padded, alone, atol=1e-5, rtol=1e-5):
        _fail("padding changes a classifier's outputs", f"max |difference| {float((padded - alone).abs().max()):.3g}")


CHECKS = {
    "trains only its own parameters and the head": check_trains_only_its_own_parameters,
    "count grows with the knob": check_count_grows_with_knob,
    "checkpoint restores the model": check_checkpoint_restores,
    "merge keeps the outputs": check_merge_keeps_outputs,
}
CLASSIFIER_CHECKS = {**CHECKS, "padding does not change outputs": check_padding}
CAUSAL_CHECKS = {
    **CHECKS,
    "loss on target tokens only": check_loss_on_targets_only,
    "generation: cache, padding, EOS": check_generation,
}


def checks_for(family: str) -> dict:
    return CAUSAL_CHECKS if family.endswith("-lm") else CLASSIFIER_CHECKS


@dataclass(frozen=True)
class Result:
    method: str
    family: str
    check: str
    status: str  # "pass", "FAIL", "n/a"
    detail: str = ""


def parse_families(text: str) -> list[str]:
    """The families of a comma list (``--families``, ``--peftbench-families``); ValueError naming
    those that are not families."""
    families = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in families if f not in ALL_FAMILIES]
    if bad:
        raise ValueError(f"unknown {', '.join(bad)}; use {', '.join(ALL_FAMILIES)}")
    return families


def run_checks(methods, families=ALL_FAMILIES) -> list[Result]:
    """Every check on every (method, family); a method that does not apply to a family is n/a."""
    results = []
    for method in methods:
        for family in families:
            for check, fn in checks_for(family).items():
                try:
                    note = fn(method, family)  # a check may say which form of it applied
                except NotApplicable as e:
                    results.append(Result(method.name, family, check, "n/a", str(e)))
                except ContractFailure as e:
                    results.append(Result(method.name, family, check, "FAIL", str(e)))
                except Exception as e:  # the method crashed: that is a failure of the check too
                    results.append(Result(method.name, family, check, "FAIL", f"raised {type(e).__name__}: {e}"))
                else:
                    results.append(Result(method.name, family, check, "pass", note or ""))
    return results


# -- the pytest plugin -------------------------------------------------------------------
def pytest_addoption(parser):
    group = parser.getgroup("peftbench", "peftbench method contract")
    group.addoption("--peftbench-methods", default=None,
                    help="comma list of registered methods to run the peftbench contract on")
    group.addoption("--peftbench-plugins", action="append", default=[], metavar="FILE.py",
                    help="load a local peftbench plugin file first (repeatable)")
    group.addoption("--peftbench-families", default=",".join(ALL_FAMILIES),
                    help=f"tiny model families to check on (default {','.join(ALL_FAMILIES)})")


def pytest_collection_modifyitems(session, config, items):
    if not config.getoption("peftbench_methods"):
        return
    import pytest

    module = pytest.Module.from_parent(session, path=Path(__file__).with_name("_contract_tests.py"))
    items.extend(session.genitems(module))


def copy_native_lora_into_peft(native, bridged, std: float = 1.0) -> int:
    """Give native LoRA random A and B (B non-zero, so that the update matters) and copy them, and
    the trained head, into the same model under peft's LoRA; the number of LoRA tensors copied.
    Used by the bridge's parity test and benchmarks/train_step.py's parity check."""
    import torch

    theirs = dict(bridged.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, p in native.named_parameters():
            if ".lora_" in name:
                stem, which = name.rsplit(".lora_", 1)
                p.normal_(std=std)
                theirs[f"{stem}.lora_{which}.default.weight"].copy_(p)
                copied += 1
            elif p.requires_grad:  # the task head
                theirs[name].copy_(p)
    return copied
