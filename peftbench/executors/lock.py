"""With several local jobs, latency is timed alone: a job about to time latency raises a pause
flag and takes the machine lock exclusively; training steps of the other jobs hold it shared,
one step at a time, and do not start a step while a pause is raised. So no training runs while
a latency measurement is being taken (flock on one file in the output folder)."""

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
        return any(self.pauses.iterdir())

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
