"""A local job's share of the machine: its CPUs (and so its torch threads) or its GPU. Applied in
the run's own process before anything runs, and recorded."""

from __future__ import annotations

import os

from ..errors import PeftbenchError


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def _gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def slots(jobs: int, gpu: bool = True) -> list[dict]:
    """One placement per parallel job: a GPU each where there are GPUs and the runs use them
    (``gpu``: not every run asked for ``--device cpu``), else disjoint CPU sets. GPU k is the k-th
    of those this process sees (``CUDA_VISIBLE_DEVICES`` a scheduler set, e.g. ``2,3``, is kept)."""
    gpus = _gpus() if gpu else 0
    if gpus:
        if jobs > gpus:
            raise PeftbenchError(f"--jobs {jobs}: this machine has {gpus} GPU(s); give --jobs {gpus} or fewer "
                                 "(one GPU per job)")
        visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        ids = visible if len(visible) >= gpus else [str(k) for k in range(gpus)]
        return [{"slot": k, "jobs": jobs, "cuda_visible_devices": ids[k]} for k in range(jobs)]
    cpus = _cpus()
    if jobs > len(cpus):
        raise PeftbenchError(f"--jobs {jobs}: this process may use {len(cpus)} CPU(s); give --jobs {len(cpus)} "
                             "or fewer (each job needs a CPU of its own)")
    per = len(cpus) // jobs
    return [{"slot": k, "jobs": jobs, "cpus": cpus[k * per:(k + 1) * per]} for k in range(jobs)]


def apply(placement: dict) -> dict:
    """Confine this process to its placement; what it got, for the record."""
    import torch

    got = dict(placement)
    if placement.get("cpus"):
        os.sched_setaffinity(0, placement["cpus"])
        torch.set_num_threads(len(placement["cpus"]))
    if placement.get("cuda_visible_devices") is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = placement["cuda_visible_devices"]  # before CUDA initialises
    got["torch_threads"] = torch.get_num_threads()
    got["shared_machine"] = placement.get("shared_machine", placement.get("jobs", 1) > 1)
    return got
