"""Numeric precision of a run: what ``--precision auto|fp32|bf16|fp16`` resolves to, and autocast.

``bf16``/``fp16`` are mixed precision: weights and optimizer state stay fp32, matmuls run under
``torch.autocast`` in the low precision (fp16 with a gradient scaler, CUDA only). ``auto`` picks
bf16 where it is faster: CUDA devices that support it; CPUs with AMX-BF16 (Intel Xeon since
Sapphire Rapids), read from /proc/cpuinfo; and CPUs with AVX512-BF16 but no AMX where a short
matmul measurement finds bf16 at least ``MEASURED_SPEEDUP`` times the fp32 rate. The flag alone
does not say: on a Xeon with AVX512-BF16 but no AMX, bf16 matmuls ran at half the fp32 rate and
bf16 autocast trained MiniLM at 0.66-0.74x fp32; on an AMD EPYC of family 26 (Zen 5) with the
same flag, bf16 matmuls ran 3.4-4.8x faster and training 1.8-2.1x faster (results/precision.md).
fp32 elsewhere. A CPU with neither flag (AVX2 only, e.g. AMD EPYC before Zen 4) emulates bf16
matmuls: 0.8 vs 29 GFLOP/s fp32 measured on one, so asking for bf16 there warns (``cpu_warning``).
Training, evaluation and latency all run at the run's precision.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from .errors import PeftbenchError

CHOICES = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # what a record says the CPU has
FAST_CPU_BF16 = "amx_bf16"  # what auto takes as fast without measuring
MEASURED_SPEEDUP = 1.5  # avx512_bf16 without AMX: bf16 if its matmul rate is at least this times fp32's


def _cpuinfo() -> dict[str, str]:
    """The first CPU's fields of /proc/cpuinfo (Linux; empty elsewhere), read once per call."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> set[str]:
    """The CPU feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    return set(_cpuinfo().get("flags", "").split())


def cpu_identity() -> dict:
    """The CPU a run ran on, for its record: its model name, family/model/stepping numbers and bf16
    features (None where unknown)."""
    import platform

    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    numbers = [info.get(k) for k in ("cpu family", "model", "stepping")]  # the name alone says "AMD EPYC"
    return {"cpu": info.get("model name") or platform.processor() or None,
            "cpu_id": "family {} model {} stepping {}".format(*numbers) if all(numbers) else None,
            "cpu_bf16": sorted(f for f in CPU_BF16_FLAGS if f in flags) if flags else None}


@functools.lru_cache(maxsize=1)
def cpu_matmul_rates(n: int = 1024, rounds: int = 3, seconds: float = 0.05) -> dict[str, float]:
    """GFLOP/s of an n x n CPU matmul in fp32 and in bf16 on one thread (as a run of a --jobs sweep
    has), best of ``rounds`` short timings taken in turn (so both see the same load); measured once
    per process (about 0.3 s)."""
    import time

    best = {"fp32": 0.0, "bf16": 0.0}
    mats = {p: torch.randn(n, n, dtype=DTYPES[p]) for p in best}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for a in mats.values():
            a @ a  # warm-up
        for _ in range(rounds):
            for p, a in mats.items():
                reps, start = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - start) < seconds or reps == 0:
                    a @ a
                    reps += 1
                best[p] = max(best[p], 2 * n**3 * reps / elapsed / 1e9)
    finally:
        torch.set_num_threads(threads)
    return {p: round(v, 1) for p, v in best.items()}


def resolve(requested: str, device: str) -> tuple[str, str]:
    """(precision, why): ``auto`` resolved for ``device`` ("cpu" or "cuda"); others checked."""
    if requested not in CHOICES:
        raise PeftbenchError(f"--precision {requested!r}: use one of {', '.join(CHOICES)}")
    if requested == "fp16" and device != "cuda":
        raise PeftbenchError("--precision fp16 needs a CUDA device (it trains with a gradient scaler); "
                             "use bf16 or fp32 on CPU")
    if requested != "auto":
        return requested, "asked for"
    if device == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):  # a V100 or T4 only emulates it
            return "bf16", f"auto: {torch.cuda.get_device_name()} supports bf16"
        return "fp32", f"auto: {torch.cuda.get_device_name()} has no bf16 support"  # in hardware
    flags = cpu_flags()
    if not flags:  # not Linux, or a CPU whose /proc/cpuinfo lists "Features" (ARM): nothing to go by
        return "fp32", "auto: the CPU's features are unknown here (no flags in /proc/cpuinfo)"
    if FAST_CPU_BF16 in flags:
        return "bf16", f"auto: the CPU has {FAST_CPU_BF16}"
    if "avx512_bf16" in flags:
        rates = cpu_matmul_rates()
        speedup = rates["bf16"] / max(rates["fp32"], 1e-9)
        measured = (f"the CPU has avx512_bf16 but no {FAST_CPU_BF16}; bf16 matmul measured {rates['bf16']:g} vs fp32 "
                    f"{rates['fp32']:g} GFLOP/s ({speedup:.1f}x)")
        if speedup >= MEASURED_SPEEDUP:
            return "bf16", f"auto: {measured}"
        return "fp32", (f"auto: {measured}, under the {MEASURED_SPEEDUP:g}x auto asks for "
                        "(--precision bf16 to use it anyway)")
    return "fp32", f"auto: the CPU has neither {' nor '.join(CPU_BF16_FLAGS)} (bf16 matmuls emulated)"


def cpu_warning(precision: str, device: str) -> str | None:
    """A warning when bf16 is asked for on a CPU known to have no bf16 units (None otherwise)."""
    flags = cpu_flags() if precision == "bf16" and device == "cpu" else None
    if not flags or any(f in flags for f in CPU_BF16_FLAGS):
        return None
    return (f"--precision bf16 on a CPU with neither {' nor '.join(CPU_BF16_FLAGS)}: torch emulates bf16 matmuls "
            "there (35-95x slower than fp32 at one thread on two AVX2-only AMD EPYCs, results/precision.md), so runs take "
            "many times longer; use --precision fp32 (what auto picks here) unless bf16 itself is what you measure")


def autocast(device, precision: str = "fp32"):
    """The autocast context of a precision on a device (a no-op for fp32)."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])
