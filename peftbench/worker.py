"""The child process of one run.

Runs are started from a fork server that has already imported torch, transformers and
the built-in plugins (so a run starts in a fraction of a second instead of re-importing),
yet every run is its own process: a crash, an OOM kill or a hang takes down only that run.

Exit codes: 0 ok, 3 run recorded as not ok, 130 interrupted (nothing recorded; the sweep records
the run as cancelled and stops), 1 an error outside the run (traceback on stderr).
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from .plugins import DEFAULT_PLUGINS

EXIT_INTERRUPTED = 130

PRELOAD = [
    "peftbench.runner", "peftbench.train", "peftbench.data", "peftbench.measure", "peftbench.tasks",
    "peftbench.plugins", *DEFAULT_PLUGINS, "transformers.models.auto.modeling_auto", "datasets",
    "safetensors.torch",
    # peft: what it imports of transformers (generation, tokenizers, masking, BERT's model code) a run
    # loads anyway. Not scikit-learn or scipy (0.6 s): the server's start is on the way to a sweep's
    # first run (with them it ended 1.2-1.7 s after the plan of make run's sweep); the runs that use
    # them (an F1, MCC or correlation metric, a search's validation split) import them themselves
    "peft",
    "peftbench._forkserver",  # last: the server's exit skips its interpreter teardown
]


def die_with_parent():
    """Linux: be SIGKILLed when the parent dies (the sweep, or the fork server it owns)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def release_fork_server() -> None:
    """The fork server hands each child the write end of its "alive" pipe (the sweep holds the
    other copy); the server exits when every copy is closed. A child that kept it would keep the
    server alive after the sweep died, and the server's death is what kills the child
    (``die_with_parent``): both would live on. Close it, so that a killed sweep ends its run."""
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
        server._forkserver_alive_fd = None


def child_main(spec_file: str, out: str, progress: bool, environ: dict | None = None) -> None:
    die_with_parent()
    release_fork_server()
    if environ is not None:  # the sweep's environment now, not the fork server's from its start
        os.environ.clear()
        os.environ.update(environ)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 1  # an exception that is not the run's (the run itself records its failures)
    try:
        if hasattr(signal, "pthread_sigmask"):  # the fork server's children inherit SIGINT blocked
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        # tqdm would otherwise create a named multiprocessing lock (a semaphore that a killed
        # run leaks); one process needs only a thread lock.
        from tqdm import tqdm

        tqdm.set_lock(threading.RLock())
        from .runner import execute

        try:
            spec = json.loads(Path(spec_file).read_text())
        except FileNotFoundError:  # the sweep gave this attempt up (a Ctrl-C came while it started us)
            code = EXIT_INTERRUPTED
            return
        record = execute(spec, Path(out), progress=progress)
        code = 0 if record["status"] == "ok" else 3
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BaseException:
        traceback.print_exc()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the exit below
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
            # The server inherits SIGINT blocked from this thread (a signal mask survives exec) and
            # imports PRELOAD with it blocked; then multiprocessing's server loop ignores SIGINT, so
            # a Ctrl-C never kills the server. This process's own SIGINT disposition is left alone:
            # a Ctrl-C that comes meanwhile is taken by another thread of this process (torch's
            # threads do not block it) or stays pending for this one, and is raised here as
            # KeyboardInterrupt either way. (Ignoring SIGINT process-wide during the start, as
            # before, dropped a Ctrl-C that the kernel delivered to one of those threads.)
            # multiprocessing starts its resource tracker first and unblocks SIGINT after doing so
            # (bpo-33613), which would let the server start with SIGINT deliverable: start it now.
            multiprocessing.resource_tracker.ensure_running()
            main_thread = threading.current_thread() is threading.main_thread()  # else leave signals alone
            if main_thread:
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                multiprocessing.forkserver.ensure_running()
            finally:
                if main_thread:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        else:
            _context = multiprocessing.get_context("spawn")
    return _context


def start(spec_file: Path, out: Path, progress: bool):
    """Start one run's process. The target lives in this module, so the child never needs
    the parent's ``__main__``: hide it, so that a user's unguarded script is not re-run.
    The child runs with this process's environment as it is now (data folder, caches, plugin
    files): the fork server was started once, maybe before the caller changed it."""
    proc = context().Process(target=child_main, args=(str(spec_file), str(out), progress, dict(os.environ)),
                             daemon=False)
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
