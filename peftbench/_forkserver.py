"""Imported only by the fork server (the last module of ``worker.PRELOAD``).

The server lives as long as the sweep that started it and shares its stdout and stderr with the
runs it forks; when the sweep ends, the server's own interpreter teardown (finalising torch,
transformers, the plugins) took ~1 s, during which a pipe reading the sweep's output (``| tee``,
``subprocess.run(capture_output=True)``) stayed open. It has nothing to clean up: end at once.

A Ctrl-C that comes while the sweep starts a run can stop it after the server forked the run's
process but before the sweep sent it what to run: that process then reads an empty pipe, and the
server's loop printed the EOFError's traceback on the sweep's stderr under "Interrupted". The
sweep records that run as cancelled itself; the process it abandoned now exits silently.

Imported anywhere else (not from multiprocessing's fork server loop) it does nothing.
"""

import atexit
import os
import sys


def _in_fork_server() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "main" and code.co_filename.endswith(os.path.join("multiprocessing", "forkserver.py")):
            return True
        frame = frame.f_back
    return False


def quiet_abandoned_start(exc_type, exc, tb, _hook=sys.excepthook):
    """The server's children report an exception raised before their run begins with
    ``sys.excepthook``: an EOFError there is a start the sweep gave up (nothing to report)."""
    if not issubclass(exc_type, EOFError):
        _hook(exc_type, exc, tb)


if _in_fork_server():
    sys.excepthook = quiet_abandoned_start  # a run's own exceptions are caught by worker.child_main
    atexit.register(os._exit, 0)  # registered last, so it runs first: after it, nothing else runs
