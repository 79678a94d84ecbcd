"""What only a GPU can check (skipped without CUDA; `benchmarks/gpu_check.sh` runs them on one):
bf16 training and evaluation, CUDA-event latency at the run's precision, max_memory_allocated,
activation bytes without autocast's weight copies, deterministic cuBLAS."""

import os

import pytest
import torch

from conftest import batch, make_model

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_bf16_training_step_and_peak_memory():
    from peftbench.measure import PeakMemory
    from peftbench.method import apply_method
    from peftbench.plugins import get_method
    from peftbench.precision import autocast

    model, _ = apply_method(get_method("lora"), make_model("llama"), 4)
    model.cuda().train()
    inputs = {k: v.cuda() for k, v in batch().items()}
    with PeakMemory("cuda") as mem:
        with autocast("cuda", "bf16"):
            out = model(**inputs)
        assert out.logits.dtype == torch.bfloat16
        out.loss.backward()
    result = mem.result()
    assert result["peak_mem_kind"] == "cuda_max_memory_allocated" and result["peak_mem_bytes"] > 0


def test_cuda_event_latency_and_activation_bytes_at_bf16():
    from peftbench.measure import saved_activation_bytes, time_interleaved
    from peftbench.precision import autocast

    model = make_model("bert").cuda()
    inputs = {k: v.cuda() for k, v in batch().items()}
    res = time_interleaved({"m": lambda: model(**{k: v for k, v in inputs.items() if k != "labels"})}, "cuda",
                           min_reps=5, min_time_s=0.0, warmup=1)
    assert res["m"]["n"] == 5 and res["m"]["median_ms"] > 0
    for p in model.bert.parameters():
        p.requires_grad_(False)
    plain = saved_activation_bytes(model, inputs)
    with autocast("cuda", "bf16"):
        cast = saved_activation_bytes(model, inputs)
    assert 0 < cast <= plain  # bf16 activations, no bf16 copies of the frozen weights counted


def test_deterministic_cublas_is_configured():
    from peftbench.runner import CUBLAS_WORKSPACE, seed_everything

    seed_everything(0)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
