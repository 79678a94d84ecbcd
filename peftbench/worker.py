"""The child process of one run.

Runs are started from a fork server that has already imported torch, transformers and
the built-in plugins (so a run starts in a fraction of a second instead of re-importing),
yet every run is its own process: a crash, an OOM kill or a hang takes down only that run.

Exit codes: 0 ok, 3 run recorded as not ok, 130 interrupted (nothing recorded).
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import threading
from pathlib import Path

PRELOAD = [
    "peftbench.runner", "peftbench.train", "peftbench.data", "peftbench.measure", "peftbench.tasks",
    "peftbench.plugins", "peftbench_plugins.lora", "peftbench_plugins.adapter", "peftbench_plugins.prefix",
    "transformers.models.auto.modeling_auto", "datasets", "safetensors.torch",
]


def die_with_parent():
    """Linux: be SIGKILLed when the parent dies (the sweep, or the fork server it owns)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def child_main(spec_file: str, out: str, progress: bool) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "pthread_sigmask"):  # the fork server's children inherit SIGINT blocked
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    # tqdm would otherwise create a named multiprocessing lock (a semaphore that a killed
    # run leaks); one process needs only a thread lock.
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    code = 130
    try:
        from .runner import execute

        record = execute(json.loads(Path(spec_file).read_text()), Path(out), progress=progress)
        code = 0 if record["status"] == "ok" else 3
    except KeyboardInterrupt:
        pass
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


_context = None


def context():
    """forkserver where available (Linux, macOS), else spawn."""
    global _context
    if _context is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(PRELOAD)
            # The server is born with SIGINT ignored (an ignored signal survives exec): Ctrl-C
            # reaches the sweep and the run in progress, never the server. SIGINT is blocked
            # meanwhile, so a Ctrl-C that comes while the server starts stays pending and is
            # delivered to the sweep afterwards instead of being lost.
            main_thread = threading.current_thread() is threading.main_thread()  # else leave signals alone
            if main_thread:
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                old = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                multiprocessing.forkserver.ensure_running()
            finally:
                if main_thread:
                    signal.signal(signal.SIGINT, old)
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        else:
            _context = multiprocessing.get_context("spawn")
    return _context


def start(spec_file: Path, out: Path, progress: bool):
    """Start one run's process. The target lives in this module, so the child never needs
    the parent's ``__main__``: hide it, so that a user's unguarded script is not re-run."""
    proc = context().Process(target=child_main, args=(str(spec_file), str(out), progress), daemon=False)
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__.pop(k) for k in ("__file__",) if main is not None and k in main.__dict__}
    spec = getattr(main, "__spec__", None)
    if main is not None:
        main.__spec__ = None
    try:
        proc.start()
    finally:
        if main is not None:
            main.__dict__.update(saved)
            main.__spec__ = spec
    return proc
