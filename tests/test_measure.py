"""The instruments on known workloads (never the wall time of real models)."""

import time

import numpy as np
import pytest
import torch

from peftbench.measure import PeakMemory, summarize, time_interleaved
from peftbench.train import static_memory


class Sleeper(torch.nn.Module):
    """A deliberately slow model: each call takes ``ms`` milliseconds."""

    def __init__(self, ms):
        super().__init__()
        self.ms = ms

    def forward(self):
        time.sleep(self.ms / 1e3)


def test_latency_of_slow_dummy_models_within_15_percent():
    fast, slow = Sleeper(20), Sleeper(50)
    res = time_interleaved({"fast": fast, "slow": slow}, "cpu", min_reps=20, min_time_s=0.3, warmup=2)
    assert res["fast"]["n"] >= 20 and res["slow"]["n"] >= 20
    assert res["fast"]["median_ms"] == pytest.approx(20, rel=0.15)
    assert res["slow"]["median_ms"] == pytest.approx(50, rel=0.15)
    assert res["slow"]["median_ms"] / res["fast"]["median_ms"] == pytest.approx(2.5, rel=0.15)
    assert res["fast"]["p90_ms"] >= res["fast"]["median_ms"]


def test_min_time_extends_repetitions():
    res = time_interleaved({"a": Sleeper(5)}, "cpu", min_reps=3, min_time_s=0.2, warmup=0)
    assert res["a"]["n"] >= 0.2 / 0.005 * 0.8


def test_summary_statistics():
    s = summarize(np.array([1, 2, 3, 4, 100]) / 1e3)
    assert s["median_ms"] == pytest.approx(3)
    assert s["iqr_ms"] == pytest.approx(2)
    assert s["n"] == 5


def test_static_memory_breakdown_counts_known_tensors():
    model = torch.nn.Module()
    model.frozen = torch.nn.Parameter(torch.zeros(1000), requires_grad=False)
    model.trained = torch.nn.Parameter(torch.zeros(250))
    opt = torch.optim.AdamW([model.trained], lr=0.1)
    model.trained.grad = torch.ones(250)
    opt.step()
    mem = static_memory(model, opt)
    assert mem["param_bytes"] == 1250 * 4
    assert mem["grad_bytes"] == 250 * 4
    # AdamW: exp_avg and exp_avg_sq (2 x trainable) plus a scalar step tensor
    assert 2 * 250 * 4 <= mem["optimizer_bytes"] <= 2 * 250 * 4 + 8


def test_peak_memory_sees_a_known_allocation():
    size = 200 * 2**20
    with PeakMemory("cpu") as mem:
        block = torch.ones(size // 4, dtype=torch.float32)  # touch every page
        time.sleep(0.05)
        del block
    result = mem.result()
    assert result["peak_mem_delta_bytes"] >= 0.9 * size
    assert result["peak_mem_delta_bytes"] < 1.5 * size
    assert result["peak_mem_kind"].startswith("cpu_peak_rss")


def test_saved_activation_bytes_counts_what_autograd_keeps():
    from peftbench.measure import saved_activation_bytes

    # y = relu(x @ W): autograd keeps x (for W's gradient) and the relu output; W and buffers are excluded
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(16, 32))
            self.register_buffer("buf", torch.randn(32, 4))

        def forward(self, x):
            class Out:  # w @ buf keeps the buffer for w's gradient: a buffer is not an activation
                loss = torch.relu(x @ self.w).sum() + (self.w @ self.buf).sum()
            return Out()

    net = Net()
    x = torch.randn(8, 16)
    assert saved_activation_bytes(net, {"x": x}) == 8 * 16 * 4 + 8 * 32 * 4
    net.w.requires_grad_(False)
    assert saved_activation_bytes(net, {"x": x}) == 0  # nothing needs a gradient: no graph


def test_saved_activations_of_lora_dropout_and_rng_untouched():
    from conftest import batch, make_model
    from peftbench.measure import saved_activation_bytes
    from peftbench.method import apply_method
    from peftbench.plugins import get_method

    sizes = {}
    for dropout in (0.0, 0.1):
        model, _ = apply_method(get_method("lora"), make_model("bert"), 4, {"dropout": dropout})
        model.eval()
        state = torch.get_rng_state()
        sizes[dropout] = saved_activation_bytes(model, batch())
        assert torch.equal(state, torch.get_rng_state()) and not model.training
    assert sizes[0.1] > sizes[0.0] > 0  # dropout keeps a dropped copy of each adapted input
