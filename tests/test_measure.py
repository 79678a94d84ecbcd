"""The instruments on known workloads (never the wall time of real models)."""

import time

import numpy as np
import pytest
import torch

from peftbench.measure import PeakMemory, summarize, time_interleaved
from peftbench.train import static_memory


class FakeClock:
    """A clock that only moves when a fake model 'runs': timings are exact, whatever the load."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_model(clock, ms_per_call):
    """A callable whose i-th call takes ms_per_call[i % len] milliseconds of fake time."""
    calls = []

    def run():
        clock.now += ms_per_call[len(calls) % len(ms_per_call)] / 1e3
        calls.append(1)

    run.calls = calls
    return run


def test_interleaved_timing_summaries_are_exact_with_an_injected_clock():
    clock = FakeClock()
    fast, slow = fake_model(clock, [20, 22, 18]), fake_model(clock, [50])
    order = []
    res = time_interleaved({"fast": lambda: (order.append("f"), fast()), "slow": lambda: (order.append("s"), slow())},
                           "cpu", min_reps=20, min_time_s=0.3, warmup=2, clock=clock)
    assert len(fast.calls) == len(slow.calls) == 2 + 20  # warm-up, then rounds until both have 20 reps and 0.3 s
    assert res["slow"]["n"] == res["fast"]["n"] == 20  # 20 reps: 0.4 s and 1.0 s, both past min_time
    assert res["slow"]["median_ms"] == pytest.approx(50) and res["slow"]["iqr_ms"] == pytest.approx(0)
    # warm-up took calls 0 and 1 (20, 22 ms); timed calls cycle 18, 20, 22, ...: median 20
    assert res["fast"]["median_ms"] == pytest.approx(20) and res["fast"]["p90_ms"] == pytest.approx(22)
    timed = order[4:]  # rounds alternate who goes first, so drift hits both alike
    assert timed[:4] == ["f", "s", "s", "f"]


def test_min_time_extends_repetitions():
    clock = FakeClock()
    model = fake_model(clock, [5])
    res = time_interleaved({"a": model}, "cpu", min_reps=3, min_time_s=0.2, warmup=0, clock=clock)
    assert res["a"]["n"] == 40  # 40 x 5 ms = 0.2 s, far beyond min_reps


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


def test_autocast_copies_of_frozen_weights_are_not_activations():
    """Under bf16 autocast a frozen Linear's bf16 weight copy is saved for backward; it is a
    weight, not an activation (a 256x64 layer: 33 kB of casts versus 256 B of input)."""
    from peftbench.measure import saved_activation_bytes

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.frozen = torch.nn.Linear(256, 64).requires_grad_(False)
            self.head = torch.nn.Linear(64, 2)

        def forward(self, x):
            class Out:
                loss = self.head(self.frozen(x)).float().sum()
            return Out()

    net, x = Net(), torch.randn(1, 256)
    plain = saved_activation_bytes(net, {"x": x})
    assert plain == 64 * 4  # the head keeps its input
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = saved_activation_bytes(net, {"x": x})
    assert cast == 64 * 2  # the same activation in bf16; no weight copies


class _TwoLayers(torch.nn.Module):
    """x -> Linear(4, 8) -> Linear(8, 2) -> sum: FLOPs known by hand."""

    def __init__(self, train_first: bool, train_second: bool):
        super().__init__()
        self.first, self.second = torch.nn.Linear(4, 8, bias=False), torch.nn.Linear(8, 2, bias=False)
        self.first.weight.requires_grad_(train_first)
        self.second.weight.requires_grad_(train_second)
        self.dropout = torch.nn.Dropout(0.5)  # draws random numbers in training mode: no FLOPs counted

    def forward(self, x):
        from types import SimpleNamespace

        return SimpleNamespace(loss=self.second(self.dropout(self.first(x))).sum())


@pytest.mark.parametrize("train_first,train_second,backward", [
    (False, True, 2 * 16),  # the second layer's weight gradient only: its input gradient leads nowhere
    (True, False, 2 * 16 + 2 * 32),  # the second layer's input gradient, then the first's weight gradient
    (True, True, 2 * 16 + 2 * 16 + 2 * 32),
])
def test_counted_train_flops_is_what_autograd_runs(train_first, train_second, backward):
    from peftbench.measure import counted_train_flops, train_flops_per_token

    torch.manual_seed(0)
    model = _TwoLayers(train_first, train_second).eval()
    x = torch.randn(3, 4)
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    forward = 2 * 32 + 2 * 16  # per example
    assert counted_train_flops(model, {"x": x}) == 3 * (forward + backward)
    # the analytic count charges every input gradient, also the one autograd skips
    assert train_flops_per_token(model, 1) == forward + 2 * 48 + 2 * (32 * train_first + 16 * train_second)
    assert not model.training and all(p.grad is None for p in model.parameters())  # mode and .grad left alone
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.equal(rng, torch.get_rng_state())  # the dropout's draws did not move the training's RNG


def test_counted_flops_include_attention_on_a_llama_without_dropout():
    """SDPA on CPU without dropout picks a fused kernel FlopCounterMode has no formula for: counted on
    it, a LLaMA's FLOPs per token would not grow with the sequence (attention counted as nothing)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from peftbench.measure import counted_train_flops

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.0,
                         attn_implementation="sdpa")
    model = LlamaForCausalLM(config)

    def per_token(length):
        ids = torch.randint(0, 100, (1, length))
        return counted_train_flops(model, {"input_ids": ids, "labels": ids}) / length

    short, long = per_token(8), per_token(32)
    # attention: QK^T and AV, 2 x 2 x L x width per token and layer forward, twice that backward
    assert long - short == pytest.approx(3 * 2 * 2 * 2 * (32 - 8) * 32)


def test_train_flops_charge_a_once_per_batch_cost_once_per_batch():
    """A prefix reparametrisation's MLP runs once per forward: counted on one example and charged per
    example, it would be overcharged by the batch size. The count extrapolates from one and two rows to
    the steps' mean rows, so it equals a count on the real batch shape."""
    from types import SimpleNamespace

    from transformers import BertConfig, BertForSequenceClassification

    from peftbench.data import Collator
    from peftbench.measure import counted_train_flops
    from peftbench.method import apply_method
    from peftbench.plugins import get_method, load_plugins
    from peftbench.runner import train_flops

    load_plugins(())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=2)
    method = get_method("prefix")
    model, _ = apply_method(method, BertForSequenceClassification(config), 4, {"reparam": True, "reparam_hidden": 64})
    ds = [{"input_ids": [2, 5, 7, 9, 3], "attention_mask": [1] * 5, "labels": 1}]
    stats = SimpleNamespace(timed_padded_tokens=3 * 8 * 12, timed_samples=3 * 8, timed_steps=3, timed_time_s=1.0)
    out = train_flops(model, method, stats, {"matmul_gflops": 1.0}, "fp32", ds, Collator(0, False), "cpu")
    assert out["flops_count"].startswith("counted") and out["flops_rows"] == 8 and out["flops_seq_len"] == 12
    ids = torch.randint(3, 100, (8, 12))
    real = counted_train_flops(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                       "labels": torch.zeros(8, dtype=torch.long)}) / (8 * 12)
    assert out["flops_per_token"] == pytest.approx(real, rel=1e-9)
    one = counted_train_flops(model, {"input_ids": ids[:1], "attention_mask": torch.ones_like(ids[:1]),
                                      "labels": torch.zeros(1, dtype=torch.long)}) / 12
    assert one > 1.2 * real  # per example, the MLP's cost would have been charged 8 times over


def test_a_freed_weight_cast_does_not_hide_an_activation():
    """Under bf16 a frozen weight's copy that nothing saves is freed at once, and a later activation
    may get its address: it must still be counted (the count was 8-13% low on MiniLM, and varied);
    and a weight copy autocast cached before the call is still a weight, not an activation.
    Reference: the same count with every saved tensor and every weight copy held until the end."""
    from peftbench import testing
    from peftbench.measure import _WeightCasts, saved_activation_bytes
    from peftbench.method import apply_method
    from peftbench.plugins import get_method

    def held(model, batch):
        weights = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
        keep, saved = [], {}

        def pack(t):
            keep.append(t)
            if t.untyped_storage()._cdata not in weights:
                saved[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
            return t

        class Held(_WeightCasts):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = super().__torch_dispatch__(func, types, args, kwargs)
                keep.append(out)
                return out

        torch.clear_autocast_cache()
        with torch.random.fork_rng(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                Held(weights) as casts:
            model(**batch).loss
        copies = {r().untyped_storage()._cdata for r in casts.outputs}
        return sum(v for k, v in saved.items() if k not in copies)

    torch.manual_seed(0)
    model, _ = apply_method(get_method("adapter"), testing.tiny_model("bert"), 8, {})
    model.train()
    batch = {"input_ids": torch.randint(2, 1000, (32, 64)), "attention_mask": torch.ones(32, 64, dtype=torch.long),
             "labels": torch.randint(0, 2, (32,))}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # one region: autocast's cache of weight copies persists
        counts = [saved_activation_bytes(model, batch) for _ in range(3)]
        reference = held(model, batch)
    assert counts == [reference] * 3, (counts, reference)
