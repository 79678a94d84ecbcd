"""`peftbench memory`: exact trainable counts on built-in configs (no weights, meta device) and the
byte accounting of each precision regime."""


import pytest

from conftest import cli_in_process
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
    # 96 layers x (q, v) x (A: r x 12288 + B: 12288 x r): Table 4's 4.7M, 18.9M, 37.7M
    assert c[("lora", "r=1")] == 96 * 2 * 2 * 12288 * 1 == 4_718_592
    assert c[("lora", "r=4")] == 18_874_368 and c[("lora", "r=8")] == 37_748_736
    assert c[("full", "fixed")] == 174_604_259_328
    text = memory("--model", "gpt3-175b", "--knob", "lora=4").stdout
    assert "18,874,368 trainable for LoRA (9,251x fewer" in text and "37,748,736 B = 36.0 MiB" in text


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

    res = memory("--knob", "lora=1,lora=4,lora=8")
    assert res.returncode == 0 and res.stdout.strip() in (ROOT / "results" / "lora-paper" / "README.md").read_text()
