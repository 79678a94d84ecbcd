"""Where runs execute. The sweep plans run specs and skips what has an ok record; an executor runs
the rest, each run in its own process through ``sweep.execute_one`` (which writes the run's
record), wherever that process lives:

- ``local`` (default): on this machine, one run at a time or ``--jobs N`` at once, each job with
  its own CPUs (threads split) or GPU (``CUDA_VISIBLE_DEVICES``), latency timed alone.
- ``ray``: one Ray task per run (one GPU, or N CPUs), on a cluster or a local one.
- ``slurm``: one submitit job-array element per run (``--slurm-cluster local`` runs the same jobs
  on this machine, as the tests do).

Records stay the single source of truth, so a sweep started on one executor resumes on another.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from ..errors import PeftbenchError

EXECUTORS = ("local", "ray", "slurm")


@dataclass
class ExecutorOptions:
    name: str = "local"
    jobs: int = 1
    slurm: dict = field(default_factory=dict)  # partition, time_min, gpus_per_run, array_parallelism, cluster
    ray: dict = field(default_factory=dict)  # address, cpus_per_run
    gpu: bool = True  # False: every run asked for --device cpu (local jobs then get CPU sets on a GPU machine)

    @property
    def elsewhere(self) -> bool:
        """Runs execute on other machines (a SLURM cluster, a Ray cluster at an address)."""
        return ((self.name == "slurm" and self.slurm.get("cluster", "slurm") == "slurm")
                or (self.name == "ray" and bool(self.ray.get("address"))))

    def validate(self):
        if self.name not in EXECUTORS:
            raise PeftbenchError(f"--executor {self.name}: choose one of {', '.join(EXECUTORS)}")
        if self.jobs < 1:
            raise PeftbenchError(f"--jobs {self.jobs}: give a positive number of parallel runs")
        if self.name == "local" and self.jobs > 1:
            from .placement import slots

            slots(self.jobs, self.gpu)  # enough CPUs (or GPUs) for the jobs, else one line now
        if self.name == "ray":
            try:
                import ray  # noqa: F401
            except ImportError:
                raise PeftbenchError("--executor ray needs ray: pip install 'peftbench[ray]'") from None
            if self.ray.get("address"):
                from .ray import check_address

                check_address(self.ray["address"])
        if self.name == "slurm":
            try:
                import submitit  # noqa: F401
            except ImportError:
                raise PeftbenchError("--executor slurm needs submitit: pip install 'peftbench[slurm]'") from None
            cluster = self.slurm.get("cluster", "slurm")
            if cluster not in ("slurm", "local", "debug"):
                raise PeftbenchError(f"--slurm-cluster {cluster}: choose slurm, local or debug")
            if cluster == "slurm" and not shutil.which("srun"):
                raise PeftbenchError("--executor slurm: no srun on this machine's PATH; run it on a SLURM login node "
                                     "(or --slurm-cluster local to try the sweep through submitit here)")
            for flag, key in (("--slurm-time", "time_min"), ("--slurm-array-parallelism", "array_parallelism"),
                              ("--slurm-gpus-per-run", "gpus_per_run")):
                value = self.slurm.get(key)
                least = 0 if key == "gpus_per_run" else 1
                if value is not None and value < least:
                    raise PeftbenchError(f"{flag} {value}: give a number of {least} or more")
        if self.name == "ray" and self.ray.get("cpus_per_run") is not None and self.ray["cpus_per_run"] <= 0:
            raise PeftbenchError(f"--ray-cpus-per-run {self.ray['cpus_per_run']}: give a positive number of CPUs")
        return self


def run_all(todo, out, options: ExecutorOptions, timeout, progress, on_done):
    """Run every spec of ``todo``; ``on_done(record)`` as each finishes (from the calling thread)."""
    if options.name == "slurm":
        from .slurm import run_all as run
    elif options.name == "ray":
        from .ray import run_all as run
    else:
        from .local import run_all as run
    run(todo, out, options, timeout, progress, on_done)
