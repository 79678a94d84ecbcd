"""Instruments: CUDA-correct timing, interleaved latency measurement, peak memory.

Latency: candidates (base model, method unmerged, method merged) are timed in rotating,
interleaved order so that machine noise hits them alike and their ratios are same-run
ratios. Warm-up calls first, then at least ``min_reps`` timed calls and ``min_time_s``
seconds per candidate; median, p90 and IQR are reported. On CUDA, CUDA events are
recorded around each call and read after a synchronise.

Memory: on CUDA ``max_memory_allocated`` after ``reset_peak_memory_stats``. On CPU the
peak resident set size of this process, sampled every 5 ms during training by a thread,
reported absolute and as the delta over the RSS just before training (each run has its own
process, so earlier runs do not pollute it).
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import threading
import time
import weakref

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes() -> int:
    """Current resident set size (Linux: /proc; elsewhere the lifetime peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Context manager measuring peak memory inside the block."""

    def __init__(self, device, interval_s: float = 0.005):
        self.device = torch.device(device)
        self.interval = interval_s
        self.peak = self.baseline = 0
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        # garbage of what ran before (a model in a reference cycle) collected inside the block would free
        # memory while the block allocates, and hide that much of its peak: collect it before the baseline
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self.baseline = self.peak = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        return False

    def result(self) -> dict:
        kind = "cuda_max_memory_allocated" if self.device.type == "cuda" else "cpu_peak_rss_sampled_5ms"
        return {
            "peak_mem_bytes": int(self.peak),
            "peak_mem_delta_bytes": int(self.peak - self.baseline),
            "peak_mem_kind": kind,
        }


def saved_activation_bytes(model, batch) -> int:
    """Bytes autograd keeps for the backward pass of one training-mode forward on ``batch``:
    the distinct storages the graph holds once the loss is computed, parameters and buffers
    excluded, and so are the casts autocast makes of them (a bf16 copy of a frozen weight is not an
    activation). Unlike a peak RSS this does not depend on the allocator, so it compares methods
    exactly. Saved tensors and weight casts are followed by weak references and read while the
    graph is alive: a storage is known by its address, and one freed during the forward (a cast
    nothing saved, the graph of a discarded result) may have its address reused, so reading them
    as they come would confuse them (in bf16 that undercounted MiniLM's activations by 8-13%, by a
    different amount each call). The RNG state and the train/eval mode are restored (a module
    that updates running statistics in training mode would see one extra batch). The same count
    runs on the meta device (``peftbench memory --activations``: no data pointers)."""
    params = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
    saved: list = []
    # autocast caches its copies of trainable weights within one autocast region: a copy made before
    # this call would not be seen made here, and would count as an activation
    torch.clear_autocast_cache()

    def pack(t):
        saved.append(weakref.ref(t))
        return t

    device = next(model.parameters()).device
    was_training = model.training
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            _WeightCasts(params) as casts:
        model.train()
        try:
            loss = model(**batch).loss
            copies = {t.untyped_storage()._cdata for t in _alive(casts.outputs)}  # autocast's copies of weights
            kept = {s._cdata: s.nbytes() for t in _alive(saved) for s in [t.untyped_storage()]
                    if s._cdata not in params and s._cdata not in copies}
            del loss
        finally:
            model.train(was_training)
    return sum(kept.values())


def _alive(refs):
    return [t for t in (r() for r in refs) if t is not None]


class _WeightCasts(TorchDispatchMode):
    """Follows the dtype casts of parameters and buffers (what autocast makes of a weight before a
    matmul), by weak reference: saved for backward, but copies of weights, not activations."""

    def __init__(self, weights: set):
        super().__init__()
        self.weights = weights
        self.outputs: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and torch.is_tensor(args[0]) \
                and args[0].untyped_storage()._cdata in self.weights:
            self.outputs.append(weakref.ref(out))
        return out


def summarize(times_s) -> dict:
    ms = np.asarray(times_s) * 1e3
    q25, q50, q75, q90 = np.percentile(ms, [25, 50, 75, 90])
    return {"median_ms": float(q50), "p90_ms": float(q90), "iqr_ms": float(q75 - q25), "n": int(len(ms))}


def time_interleaved(candidates: dict, device, min_reps=20, min_time_s=2.0, warmup=3, max_reps=100_000,
                     clock=time.perf_counter) -> dict:
    """Time each zero-argument callable in ``candidates``; returns name -> summary. ``clock`` (on
    CPU) is injectable so that tests check the logic without timing real work."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    names = list(candidates)
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                candidates[name]()
        sync(device)
        times = {name: [] for name in names}
        spent = dict.fromkeys(names, 0.0)
        rnd = 0
        while rnd < max_reps and any(len(times[n]) < min_reps or spent[n] < min_time_s for n in names):
            order = names[rnd % len(names):] + names[: rnd % len(names)]  # rotate who goes first
            for name in order:
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    candidates[name]()
                    end.record()
                    end.synchronize()
                    dt = start.elapsed_time(end) / 1e3
                else:
                    t0 = clock()
                    candidates[name]()
                    dt = clock() - t0
                times[name].append(dt)
                spent[name] += dt
            rnd += 1
    return {name: summarize(times[name]) for name in names}


def checkpoint_bytes(state: dict, path) -> int:
    """Save ``state`` as safetensors at ``path`` and return the file size."""
    from safetensors.torch import save_file

    from .records import atomic_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_file(path) as tmp:  # temp file in the same folder, fsynced, then renamed
        save_file(tensors, tmp)
    return os.path.getsize(path)


def counted_train_flops(model, batch) -> float:
    """FLOPs of one training step on ``batch`` as autograd runs it: a training-mode forward and the
    gradients of the trainable parameters (``torch.autograd.grad``, which leaves ``.grad`` alone and
    runs no gradient-accumulation hooks such as DDP's), counted by torch's FlopCounterMode (matmuls
    and attention, by shape). Unlike the analytic count it charges no input gradient before the first
    trainable parameter, since autograd computes none. Attention runs on SDPA's math kernel here:
    FlopCounterMode has no formula for the fused CPU kernel SDPA picks without dropout (a LLaMA's
    attention would count nothing), and the math kernel's matmuls are the same FLOPs. The RNG state
    and the train/eval mode are restored; the weights are not touched."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    trainable = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    was_training = model.training
    counter = FlopCounterMode(display=False)
    if not hasattr(counter, "mod_tracker"):  # torch changed what is replaced below: fail, the caller says so
        raise RuntimeError("torch's FlopCounterMode has no mod_tracker to replace")
    counter.mod_tracker = _NoModuleTracking()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            sdpa_kernel(SDPBackend.MATH), counter:
        model.train()
        try:
            loss = model(**batch).loss
            torch.autograd.grad(loss, trainable, allow_unused=True)
        finally:
            model.train(was_training)
    return float(counter.get_total_flops())


class _NoModuleTracking:
    """FlopCounterMode's per-module breakdown hooks the backward in a way ``torch.autograd.grad``
    does not support (a parameter as a module's input); the total needs no breakdown."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def train_flops_per_token(model, seq_len: float, extra_seq_len: int = 0) -> float:
    """Analytic FLOPs of one training step per processed token (padding included).

    Every matmul weight W (Linear/Conv1D layers, and 2-D trainable tensors used as matmuls such
    as LoRA's A and B) costs 2|W| forward and 2|W| for the input gradient; only trainable ones
    cost another 2|W| for their own gradient (frozen weights need none). Attention adds per layer
    2 x 2 x (keys seen) x width forward (scores and the weighted sum), twice that backward; keys
    seen = the sequence plus prefix positions. Input gradients are counted through every layer,
    also before the first trainable parameter where autograd computes none (an upper bound:
    ``counted_train_flops`` is what records use since it exists; this count stays for comparison
    and as the fallback the record names). Embedding lookups cost nothing.
    """
    from .arch import is_linear

    matmul = trainable = 0
    in_linear = set()
    for module in model.modules():
        if is_linear(module):
            n = module.weight.numel()
            in_linear.add(id(module.weight))
            matmul += n
            trainable += n if module.weight.requires_grad else 0
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    for p in model.parameters():
        if p.requires_grad and p.dim() == 2 and id(p) not in in_linear and id(p) not in embeddings:
            matmul += p.numel()
            trainable += p.numel()
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", 0) or 0
    width = getattr(config, "hidden_size", 0) or 0
    attention = 4 * layers * (seq_len + extra_seq_len) * width
    return float(2 * matmul + 2 * matmul + 2 * trainable + 3 * attention)
