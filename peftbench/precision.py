"""Numeric precision of a run: what ``--precision auto|fp32|bf16|fp16`` resolves to, and autocast.

``bf16``/``fp16`` are mixed precision: weights and optimizer state stay fp32, matmuls run under
``torch.autocast`` in the low precision (fp16 with a gradient scaler, CUDA only). ``auto`` picks
bf16 where the hardware has bf16 units: CUDA devices that support it, and CPUs with AMX-BF16 or
AVX512-BF16 (Intel Xeon since Sapphire Rapids, AMD since Zen 4), read from /proc/cpuinfo;
fp32 elsewhere. Training, evaluation and latency all run at the run's precision.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .errors import PeftbenchError

CHOICES = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    """The CPU feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {torch.cuda.get_device_name()} supports bf16"
        return "fp32", f"auto: {torch.cuda.get_device_name()} has no bf16 support"
    found = [f for f in CPU_BF16_FLAGS if f in cpu_flags()]
    if found:
        return "bf16", f"auto: the CPU has {'/'.join(found)}"
    return "fp32", f"auto: the CPU has none of {', '.join(CPU_BF16_FLAGS)}"


def autocast(device, precision: str = "fp32"):
    """The autocast context of a precision on a device (a no-op for fp32)."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])
