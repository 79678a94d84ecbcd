"""Ray: each run is a Ray task asking for one GPU where the cluster has GPUs (Ray sets the task's
``CUDA_VISIBLE_DEVICES``), else ``--ray-cpus-per-run`` CPUs. A task runs the same ``execute_one``
as a local sweep, in the task's worker: the run is its own process there. A worker that dies
(SIGKILL, OOM) is recorded as a failed run and the sweep goes on. ``--ray-address`` joins a
running cluster (checked first: an unreachable address is one line, not a hang); without it a
local cluster starts for the sweep. ``--plugins`` files travel to the workers as the tasks' working
directory; ``--out`` must be on a filesystem every node shares, as with SLURM."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from ..errors import PeftbenchError


FORWARD = ("PEFTBENCH_", "HF_", "TRANSFORMERS_", "CUBLAS_WORKSPACE_CONFIG")


def remote_run(spec: dict, out: str, timeout):
    import ray

    from ..sweep import execute_one

    ctx = ray.get_runtime_context()
    # Ray may place several runs on one node at once: their throughput is marked as shared
    placement = {"executor": "ray", "node": ctx.get_node_id(), "shared_machine": True,
                 "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if placement["cuda_visible_devices"] is None:
        del placement["cuda_visible_devices"]
    return execute_one({**spec, "placement": placement}, Path(out), timeout, progress=False)


def ship_plugins(todo):
    """Copy the specs' plugin files into one folder for Ray to upload to every node, and point the
    specs at their copies there (relative paths: a task runs in that folder). (specs, folder or None)"""
    import shutil
    import tempfile

    files = sorted({p for spec in todo for p in spec.get("plugins", ())})
    if not files:
        return todo, None
    folder = Path(tempfile.mkdtemp(prefix="peftbench-plugins-"))
    names = {}
    for i, f in enumerate(files):
        names[f] = f"p{i}_{Path(f).name}"
        shutil.copy2(f, folder / names[f])
    return [{**spec, "plugins": [names[p] for p in spec.get("plugins", ())]} for spec in todo], str(folder)


def check_address(address: str) -> None:
    """A cluster's GCS answers at host:port; say so in one line if it does not (ray.init would wait)."""
    if address in ("auto", "local"):
        return
    host, _, port = address.replace("ray://", "").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise PeftbenchError(f"--ray-address {address}: no Ray cluster answers there ({e}); start one with "
                             "`ray start --head` and give its address, or drop --ray-address for a local "
                             "cluster") from None


def run_all(todo, out, options, timeout, progress, on_done):
    out = Path(out).resolve()  # a task's working directory is not the sweep's
    import ray

    from ..sweep import kept_or_failure

    address = options.ray.get("address")
    started_here = not ray.is_initialized()
    # the sweep's own settings from its environment (data folder, caches, offline flags) travel
    # with the job, and so do the plugin files (as its working directory; paths do not enter run
    # ids): a cluster's workers start with the cluster's environment and files, not ours
    runtime_env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(FORWARD)}}
    if started_here:
        todo, shipped = ship_plugins(todo)
        if shipped:
            runtime_env["working_dir"] = shipped
        if address:
            check_address(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     runtime_env=runtime_env)
        except ConnectionError as e:  # it answers but will not have us: most often token authentication
            raise PeftbenchError(
                f"--ray-address {address}: the cluster answers but refused this client ({str(e)[:200]}); a "
                "cluster with token authentication needs RAY_AUTH_MODE=token here, with its token in "
                "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token") from None
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        resources = {"num_gpus": 1} if gpus else {"num_cpus": options.ray.get("cpus_per_run") or 1}
        task = ray.remote(max_retries=0, **resources)(remote_run)
        started = time.time()
        futures = {task.remote(spec, str(out), timeout): spec for spec in todo}
        while futures:
            ready, _ = ray.wait(list(futures), num_returns=1, timeout=1.0)
            for ref in ready:
                spec = futures.pop(ref)
                try:
                    rec = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker died (SIGKILL, OOM) or the task failed
                    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                    rec = kept_or_failure(out, spec, "failed", f"ray task failed ({type(e).__name__}): {first}", started)
                on_done(rec)
    finally:
        if started_here:
            ray.shutdown()
