"""SLURM through submitit: one job-array element per run. Each element runs the same
``execute_one`` as a local sweep, on its node (its own fork server, OOM counter and records), so a
run does not depend on being a child of the sweep process. ``--slurm-cluster local`` runs the
same jobs as processes of this machine (what the tests use); ``debug`` runs them in this process."""

from __future__ import annotations

import os
import time
from pathlib import Path


def remote_run(spec: dict, out: str, timeout):
    """What a job runs: one run, in its own process on the job's node; its record."""
    from ..sweep import execute_one

    return execute_one(spec, Path(out), timeout, progress=False)


def run_all(todo, out, options, timeout, progress, on_done):
    out = Path(out).resolve()  # a task's working directory is not the sweep's
    import submitit

    from ..sweep import kept_or_failure

    if not todo:  # every run has its record (a resumed sweep, or a search that is done)
        return
    opts = options.slurm
    executor = submitit.AutoExecutor(folder=str(Path(out) / "slurm" / "%j"), cluster=opts.get("cluster", "slurm"))
    params = {"timeout_min": int(opts.get("time_min") or 60)}
    if opts.get("cluster", "slurm") == "slurm":
        params.update(slurm_partition=opts.get("partition"), slurm_array_parallelism=opts.get("array_parallelism", 64),
                      gpus_per_node=opts.get("gpus_per_run", 0), tasks_per_node=1)
        params = {k: v for k, v in params.items() if v is not None}
    executor.update_parameters(**params)
    # SLURM applies the array's parallelism itself; submitit's local cluster starts every element at
    # once, so there the array goes in chunks of that size (default: this process's CPUs)
    chunk = len(todo)
    if opts.get("cluster") == "local":
        chunk = opts.get("local_parallelism") or len(os.sched_getaffinity(0))
    for first in range(0, len(todo), chunk):
        part = todo[first:first + chunk]
        started = time.time()
        jobs = executor.map_array(remote_run, part, [str(out)] * len(part), [timeout] * len(part))
        by_job = {job.job_id: spec for job, spec in zip(jobs, part)}
        for job in submitit.helpers.as_completed(jobs, poll_frequency=1):
            spec = by_job[job.job_id]
            try:
                rec = job.result()
            except Exception as e:  # the job itself died (node failure, scancel, the job's time limit)
                rec = kept_or_failure(out, spec, "failed", f"slurm job {job.job_id} failed: "
                                     f"{str(e).splitlines()[0][:300] if str(e) else type(e).__name__}", started)
            on_done(rec)
