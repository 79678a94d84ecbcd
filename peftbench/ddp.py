"""One run over several processes (``--nproc N``): torchrun starts N ranks of this module; each
trains a DistributedDataParallel copy of the model on its share of every global batch (gloo on
the CPU, NCCL on GPUs, one GPU per rank); rank 0 alone evaluates, checkpoints, times latency and
writes the record, with throughput summed and peak memory that of the rank with the largest peak.

    python -m torch.distributed.run --standalone --nproc_per_node N -m peftbench.ddp SPEC_FILE OUT
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def init(device: str) -> str:
    """Join the process group torchrun set up; the device this rank trains on."""
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return f"cuda:{local}"
    dist.init_process_group("gloo")
    return device


def shard(batch: dict) -> dict:
    """This rank's contiguous share of a global batch (sizes differ by at most one)."""
    import torch

    n, r = world(), rank()
    return {k: torch.tensor_split(v, n)[r] for k, v in batch.items()}


def reduce_stats(stats) -> dict:
    """Sum throughput counters over ranks and take the longest step time; the memory fields are those of
    the rank with the largest peak (its peak and its growth over its own start of training, never a mix
    of two ranks), every rank's listed beside them."""
    import torch
    import torch.distributed as dist

    counters = torch.tensor([stats.timed_samples, stats.timed_tokens, stats.timed_padded_tokens,
                             stats.timed_target_tokens], dtype=torch.float64)
    dist.all_reduce(counters)
    stats.timed_samples, stats.timed_tokens, stats.timed_padded_tokens, stats.timed_target_tokens = (
        int(x) for x in counters.tolist())
    longest = torch.tensor([stats.timed_time_s], dtype=torch.float64)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    stats.timed_time_s = float(longest[0])
    mine = torch.tensor([float(stats.memory.get(k) or 0) for k in ("peak_mem_bytes", "peak_mem_delta_bytes")],
                        dtype=torch.float64)
    ranks = [torch.zeros_like(mine) for _ in range(world())]
    dist.all_gather(ranks, mine)
    peaks, deltas = [int(r[0]) for r in ranks], [int(r[1]) for r in ranks]
    top = max(range(len(peaks)), key=peaks.__getitem__)
    stats.memory["peak_mem_bytes"], stats.memory["peak_mem_delta_bytes"] = peaks[top], deltas[top]
    return {"peak_mem_bytes_per_rank": peaks, "peak_mem_delta_bytes_per_rank": deltas}


def checksums(model) -> list[float]:
    import torch.distributed as dist

    mine = float(sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad))
    out = [None] * world()
    dist.all_gather_object(out, mine)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    spec_file, out = argv[0], argv[1]
    from .runner import execute

    spec = json.loads(Path(spec_file).read_text())
    execute(spec, Path(out), progress=False)


class Launched:
    """A torchrun launch with the parts of ``multiprocessing.Process`` that ``execute_one`` uses."""

    def __init__(self, spec_file: Path, out: Path, nproc: int):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "peftbench.ddp", str(spec_file), str(out)]
        # its own process group, so that killing the launch kills every rank too
        self.proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
                                     start_new_session=True)

    def join(self, timeout=None):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    @property
    def exitcode(self):
        return self.proc.poll()

    def is_alive(self):
        return self.proc.poll() is None

    def kill(self):
        self._signal_group("SIGKILL")

    def interrupt(self):
        self._signal_group("SIGINT")

    def _signal_group(self, name):
        import signal

        try:
            os.killpg(self.proc.pid, getattr(signal, name))
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    main()
