"""With several local jobs, latency is timed alone: a job about to time latency raises a pause
flag and takes the machine lock exclusively; training steps, evaluation batches (forward
passes, ``generate`` calls) and side measurements (matmul readings, the activation count, the
merge check) of the other jobs hold it shared, one at a time, and do not start while a pause is
raised. So neither training nor evaluation runs while a latency measurement is
being taken (flock on one file in the output folder); the time a run waited is left out of its
training and generation timings and recorded. Another job's data loading and model loading may
still run meanwhile."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path


class MachineLock:
    def __init__(self, path):
        self.path = Path(path)
        self.pauses = self.path.with_name(self.path.name + ".pause")
        self.pauses.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self.waited_s = 0.0  # how long this process's training waited for others' latency

    def paused(self) -> bool:
        """A pause is raised by a live process; the flag of one that died measuring (SIGKILL: a
        per-run timeout, the OOM killer) is removed, else the other jobs would wait for ever."""
        for flag in list(self.pauses.iterdir()):
            if _alive(flag.name):
                return True
            flag.unlink(missing_ok=True)
        return False

    @contextlib.contextmanager
    def step(self):
        """Around one training step: wait out pauses, then hold the lock shared."""
        t0 = time.perf_counter()
        while self.paused():
            time.sleep(0.05)
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        self.waited_s += time.perf_counter() - t0
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self):
        """Around a latency measurement: no training step of another job runs meanwhile."""
        flag = self.pauses / str(os.getpid())
        flag.touch()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            flag.unlink(missing_ok=True)


def _alive(name: str) -> bool:
    try:
        os.kill(int(name), 0)
    except ValueError:  # not a pid: not this module's flag to judge
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
