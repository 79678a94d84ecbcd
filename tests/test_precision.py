"""--precision: resolved per device (CPU flags mocked), recorded, in the run id; bad values rejected."""

import json

import pytest
import torch

from peftbench import precision
from peftbench.errors import PeftbenchError


SLOW_BF16 = {"fp32": 138.4, "bf16": 74.4}  # a Xeon with avx512_bf16, no AMX (results/precision.md)
FAST_BF16 = {"fp32": 77.7, "bf16": 371.3}  # an AMD EPYC of family 26 (Zen 5), the same flag


@pytest.mark.parametrize("flags,rates,expected", [
    ({"avx2", "amx_bf16", "avx512_bf16"}, None, "bf16"),
    ({"avx2", "amx_bf16"}, None, "bf16"),
    # AVX512-BF16 without AMX: the flag alone does not say; a matmul measurement decides
    ({"avx2", "avx512_bf16", "avx512_fp16"}, SLOW_BF16, "fp32"),
    ({"avx2", "avx512_bf16"}, FAST_BF16, "bf16"),
    ({"avx2", "avx512_bf16"}, {"fp32": 100.0, "bf16": 140.0}, "fp32"),  # under the 1.5x auto asks for
    ({"avx2", "avx512f"}, None, "fp32"),
    (set(), None, "fp32"),
])
def test_auto_follows_the_cpu_flags_and_measures_where_they_do_not_say(monkeypatch, flags, rates, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    measured = []
    monkeypatch.setattr(precision, "cpu_matmul_rates", lambda: measured.append(1) or rates)
    got, why = precision.resolve("auto", "cpu")
    assert got == expected and why.startswith("auto: the CPU has" if flags else "auto: the CPU's features are unknown")
    assert bool(measured) == (rates is not None)  # only measured where the flags do not decide
    if flags and not {"amx_bf16", "avx512_bf16"} & flags:  # known to have no bf16 units (not merely unknown)
        assert why == "auto: the CPU has neither amx_bf16 nor avx512_bf16 (bf16 matmuls emulated)"
    if rates:
        assert f"bf16 matmul measured {rates['bf16']:g} vs fp32 {rates['fp32']:g} GFLOP/s" in why


def test_the_matmul_measurement_is_real_and_taken_once():
    precision.cpu_matmul_rates.cache_clear()
    rates = precision.cpu_matmul_rates(n=64, rounds=1, seconds=0.001)
    assert set(rates) == {"fp32", "bf16"} and all(v > 0 for v in rates.values())
    assert precision.cpu_matmul_rates(n=64, rounds=1, seconds=0.001) is rates
    precision.cpu_matmul_rates.cache_clear()


def test_the_record_names_the_cpu(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Some Xeon(R) 9999\n"
                    "stepping\t: 8\nflags\t\t: fpu avx2 avx512_bf16 sse\n")
    real = precision.Path
    monkeypatch.setattr(precision, "Path", lambda p: info if p == "/proc/cpuinfo" else real(p))
    assert precision.cpu_identity() == {"cpu": "Some Xeon(R) 9999", "cpu_id": "family 6 model 143 stepping 8",
                                        "cpu_bf16": ["avx512_bf16"]}
    monkeypatch.setattr(precision, "cpu_matmul_rates", lambda: SLOW_BF16)
    assert precision.resolve("auto", "cpu")[0] == "fp32"


def test_auto_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some GPU")
    # a V100 or T4 (compute capability < 8) emulates bf16: torch counts that as support by default
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert precision.resolve("auto", "cuda") == ("fp32", "auto: Some GPU has no bf16 support")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.resolve("auto", "cuda") == ("bf16", "auto: Some GPU supports bf16")


def test_explicit_and_bad_values():
    assert precision.resolve("fp32", "cpu") == ("fp32", "asked for")
    with pytest.raises(PeftbenchError, match="use one of auto, fp32, bf16, fp16"):
        precision.resolve("half", "cpu")
    with pytest.raises(PeftbenchError, match="fp16 needs a CUDA device"):
        precision.resolve("fp16", "cpu")


def test_precision_is_recorded_and_in_the_run_id(tiny_model_dirs, small_data):
    from peftbench.plan import SweepSettings, plan

    def spec(p):
        s = SweepSettings(methods="lora", model=str(tiny_model_dirs["bert"]), data_dir=str(small_data), budget="none",
                          latency=None, precision=p)
        (one,) = plan(s).specs
        return one

    fp32, bf16 = spec("fp32"), spec("bf16")
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16" and fp32["run_id"] != bf16["run_id"]
    auto = spec("auto")
    assert auto["precision"] in ("fp32", "bf16") and auto["precision_requested"] == "auto"
    assert auto["run_id"] == spec(auto["precision"])["run_id"]  # auto is the precision it resolved to


def test_bad_precision_on_the_command_line_is_one_line(cli_env, tiny_model_dirs, tmp_path):
    from conftest import cli_in_process

    res = cli_in_process("run", "--model", tiny_model_dirs["bert"], "--methods", "lora", "--precision", "fp8",
                         "--out", tmp_path / "o", env=cli_env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--precision 'fp8'" in res.stderr


def test_a_bf16_run_records_its_precision_everywhere(cli_env, tiny_model_dirs, tmp_path):
    from conftest import cli_in_process

    out = tmp_path / "o"
    res = cli_in_process("run", "--model", str(tiny_model_dirs["bert"]), "--methods", "lora", "--precision", "bf16",
                         "--out", str(out), "--max-steps", "3", "--batch-size", "8", "--latency-min-time", "0",
                         "--latency-batch", "2", "--no-progress", env=cli_env)
    assert res.returncode == 0, res.stderr
    (rec,) = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert rec["precision"]["train"] == rec["precision"]["eval"] == rec["precision"]["latency"] == "bf16"
    assert rec["latency"]["precision"] == "bf16" and rec["env"]["matmul_gflops_bf16"] > 0
    train = rec["train"]  # MFU: against the higher of the bf16 matmul rates read at the run's start and after training
    assert train["peak_gflops_start"] == rec["env"]["matmul_gflops_bf16"] and train["peak_gflops_after_training"] > 0
    assert train["mfu_peak_gflops"] == max(train["peak_gflops_start"], train["peak_gflops_after_training"])
    assert train["achieved_gflops"] > 0 and train["mfu"] == pytest.approx(train["achieved_gflops"]
                                                                          / train["mfu_peak_gflops"], rel=0.01)
    # FLOPs counted on a training step as autograd runs it, below the analytic count (input gradients before
    # the first LoRA layer are not computed), at the mean padded length of the timed batches
    assert train["flops_count"].startswith("counted") and 0 < train["flops_per_token"] < train["flops_per_token_analytic"]
    assert 1 <= train["flops_seq_len"] <= 128
    if precision.cpu_warning("bf16", "cpu") is None:  # where bf16 is emulated (AVX2 only: 0.5 GFLOP/s on a
        assert train["mfu"] < 1  # 1024² matmul) the tiny model's small matmuls outrun that "peak"
    assert rec["merge"]["tolerance"] > 0 and "precision: bf16" in res.stdout


@pytest.mark.parametrize("flags,warned", [
    ({"avx2", "fma"}, True),  # no bf16 units: emulated bf16 matmuls
    ({"avx2", "avx512_bf16"}, False), ({"avx2", "amx_bf16"}, False),
    (set(), False),  # flags unknown (not Linux): no claim
])
def test_bf16_on_a_cpu_without_bf16_units_warns(monkeypatch, flags, warned):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    message = precision.cpu_warning("bf16", "cpu")
    assert (message is not None) == warned
    if warned:
        assert "--precision fp32" in message
    assert precision.cpu_warning("fp32", "cpu") is None and precision.cpu_warning("bf16", "cuda") is None


def test_the_plan_carries_the_bf16_warning(monkeypatch, tiny_model_dirs, small_data):
    from peftbench.plan import SweepSettings, plan

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    s = SweepSettings(methods="lora", model=str(tiny_model_dirs["bert"]), data_dir=str(small_data), budget="none",
                      latency=None, precision="bf16", device="cpu")
    assert any("neither amx_bf16 nor avx512_bf16" in w for w in plan(s).warnings)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert not any("bf16" in w for w in plan(s).warnings)
