"""`peftbench memory`: exact trainable counts on built-in configs (no weights, meta device) and the
byte accounting of each precision regime."""


import pytest

from conftest import cli_in_process, make_model
from peftbench.studies.memory import REGIMES, project


def memory(*args):
    return cli_in_process("memory", *args)


def counts(csv_text):
    import csv
    import io

    return {(r["method"], r["knob"]): int(r["trainable"]) for r in csv.DictReader(io.StringIO(csv_text))}


def test_gpt3_175b_lora_counts_are_the_papers():
    res = memory("--model", "gpt3-175b", "--knob", "lora=1,lora=4,lora=8", "--format", "csv")
    assert res.returncode == 0, res.stderr
    c = counts(res.stdout)
    # 96 layers x (q, v) x (A: r x 12288 + B: 12288 x r): Table 4's 4.7M and 37.7M, Section 7.1's 18M
    assert c[("lora", "r=1")] == 96 * 2 * 2 * 12288 * 1 == 4_718_592
    assert c[("lora", "r=4")] == 18_874_368 and c[("lora", "r=8")] == 37_748_736
    assert c[("full", "fixed")] == 174_604_259_328
    text = memory("--model", "gpt3-175b", "--knob", "lora=4").stdout
    assert "18,874,368 trainable for LoRA (9,251x fewer" in text and "gives 9,285x" in text
    assert "16-bit checkpoint 37.7 MB (the paper's 'roughly 35 MB'" in text  # decimal, as the table's units


@pytest.mark.parametrize("model, method, knob, expected", [
    ("bloom-3b", "lora[target_modules=qkv]", 8, 2_457_600),  # the fused query_key_value of 30 layers
    ("bert-base-uncased", "lora[target_modules=q,k,v]", 3, 165_888),  # 12 x 3 x 2 x 768 x 3
    ("gpt2-medium", "lora", 4, 393_216),  # q and v slices of c_attn, as the paper's own code (loralib)
])
def test_quoted_counts(model, method, knob, expected):
    res = memory("--model", model, "--methods", method, "--knob", f"lora={knob}", "--format", "csv")
    assert res.returncode == 0, res.stderr
    assert counts(res.stdout) == {(method, f"r={knob}"): expected}


def test_regime_bytes():
    p = project(1000, 10, False, REGIMES["fp16-mixed"])  # LoRA-like: 10 trainable added to 1000 frozen
    assert p == {"weights": 1000 * 2 + 10 * 6, "gradients": 20, "optimizer": 80, "checkpoint": 20,
                 "training": 2060 + 20 + 80}
    p = project(1000, 1000, True, REGIMES["fp32"])  # full fine-tuning
    assert p["training"] == 1000 * 16 and p["checkpoint"] == 4000


def test_bad_input_and_no_training_on_a_config():
    res = memory("--precision", "fp8")
    assert res.returncode == 2 and "--precision fp8: not a regime" in res.stderr and "Traceback" not in res.stderr
    res = memory("--knob", "lora=x")
    assert res.returncode == 2 and "give method=positive integer" in res.stderr
    res = cli_in_process("run", "--model", "gpt3-175b", "--methods", "lora")
    assert res.returncode == 2 and "is a built-in config without weights" in res.stderr


def test_readme_shows_the_commands_real_output():
    from conftest import ROOT

    res = memory("--knob", "lora=4", "--precision", "fp16-mixed,pure-16bit")
    assert res.returncode == 0 and res.stdout.strip() in (ROOT / "README.md").read_text()


def test_counts_equal_the_real_modules_on_a_tiny_config(tmp_path):
    """On a tiny config, `memory` counts what applying the method to a real (CPU) model trains."""
    from peftbench import testing
    from peftbench.method import apply_method
    from peftbench.plugins import get_methods

    model = testing.tiny_model("llama", vocab=30522)
    model.config.save_pretrained(tmp_path)
    res = memory("--model", tmp_path, "--methods", "lora,adapter,prefix", "--knob", "lora=3,adapter=5,prefix=7",
                 "--format", "csv")
    assert res.returncode == 0, res.stderr
    got = counts(res.stdout)
    methods = get_methods()
    for name, knob in (("lora", 3), ("adapter", 5), ("prefix", 7)):
        real = apply_method(methods[name], testing.tiny_model("llama", vocab=30522), knob)[1].method
        key = next(k for k in got if k[0] == name)
        assert got[key] == real, name


def test_published_projection_is_the_commands_output():
    from conftest import ROOT

    published = (ROOT / "results" / "lora-paper" / "README.md").read_text()
    res = memory("--knob", "lora=1,lora=4,lora=8")
    assert res.returncode == 0 and res.stdout.strip() in published
    res = memory("--methods", "full,lora", "--knob", "lora=4", "--precision", "fp32,pure-16bit", "--activations", "1x2048")
    assert res.returncode == 0 and res.stdout.strip() in published


@pytest.mark.parametrize("family", ["bert", "gpt2-lm"])
@pytest.mark.parametrize("method,knob", [("full", None), ("bitfit", None), ("lora", 4), ("adapter", 4), ("prefix", 4)])
def test_activations_counted_on_meta_equal_those_measured_on_real_tensors(family, method, knob, plugin_manager):
    """`memory --activations` counts on the meta device what `saved_activation_bytes` measures
    in every run on real tensors: the same bytes, method by method."""
    import copy

    import torch

    from peftbench.measure import saved_activation_bytes
    from peftbench.method import apply_method
    from peftbench.plugins import get_methods
    from peftbench.studies.memory import activation_bytes

    m = get_methods()[method]
    real = make_model(family)
    real.config.pad_token_id = None
    with torch.device("meta"):
        meta = type(real)(copy.deepcopy(real.config))
    real, meta = (apply_method(m, model, knob)[0] for model in (real, meta))
    causal = family.endswith("-lm")
    ids = torch.randint(3, 1000, (3, 9), generator=torch.Generator().manual_seed(0))
    labels = ids if causal else torch.zeros(3, dtype=torch.long)
    measured = saved_activation_bytes(real, {"input_ids": ids, "labels": labels})
    assert measured > 0 and activation_bytes(meta, 3, 9, causal) == measured


def test_activations_flag():
    res = memory("--model", "gpt2-medium", "--methods", "full,lora", "--precision", "fp32", "--activations", "2x128")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("Activations of one training step at batch 2 x 128 tokens")[1].splitlines()
    acts = {ln.split()[0]: ln.split()[2:4] for ln in lines if ln.startswith(("full ", "lora "))}
    assert set(acts) == {"full", "lora"} and all(unit in ("MB", "GB") for _, unit in acts.values())
    csv_out = memory("--model", "gpt2-medium", "--methods", "lora", "--precision", "fp32", "--activations", "2x128",
                     "--format", "csv").stdout
    header, row = csv_out.splitlines()[:2]
    assert header.endswith("activations_fp32") and int(row.split(",")[-1]) > 0
    for bad, message in (("2by128", "give BATCHxSEQ, two positive integers"), ("0x128", "two positive integers"),
                         ("1x4096", "gpt2-medium has 1024 positions")):
        res = memory("--model", "gpt2-medium", "--activations", bad)
        assert res.returncode == 2 and message in res.stderr and res.stderr.count("\n") == 1, res.stderr
