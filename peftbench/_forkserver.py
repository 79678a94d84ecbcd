"""Imported only by the fork server (the last module of ``worker.PRELOAD``).

The server lives as long as the sweep that started it and shares its stdout and stderr with the
runs it forks; when the sweep ends, the server's own interpreter teardown (finalising torch,
transformers, the plugins) took ~1 s, during which a pipe reading the sweep's output (``| tee``,
``subprocess.run(capture_output=True)``) stayed open. It has nothing to clean up: end at once.
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


if _in_fork_server():
    atexit.register(os._exit, 0)  # registered last, so it runs first: after it, nothing else runs
