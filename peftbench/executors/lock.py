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
        self.alongside: list[str] | None = None  # set by ``training``: who trained at the same time

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

    @contextlib.contextmanager
    def training(self, run_id: str):
        """Around a run's training: afterwards ``self.alongside`` lists the runs (ids) whose training
        overlapped it on this machine: those training at its end (a mark per live process) and those
        that started and ended within it (a line each in a log beside the lock)."""
        running = self.path.with_name(self.path.name + ".running")
        log = self.path.with_name(self.path.name + ".trained")
        running.mkdir(parents=True, exist_ok=True)
        mark = running / f"{os.getpid()}.{run_id}"
        tmp = running / f".{os.getpid()}.{run_id}.tmp"
        tmp.write_text(run_id)
        os.replace(tmp, mark)  # never read half-written
        start = time.time()
        try:
            yield
        finally:
            end = time.time()
            others = set()
            for f in running.iterdir():
                if f == mark or f.name.startswith("."):
                    continue
                if not _alive(f.name.split(".")[0]):  # a run killed while training (SIGKILL, OOM) left its mark
                    f.unlink(missing_ok=True)
                    continue
                with contextlib.suppress(FileNotFoundError):  # it ended meanwhile: its log line says so
                    others.add(f.read_text())
            if log.exists():
                for line in log.read_text().splitlines():
                    other, t0, t1 = line.split("\t")
                    if float(t0) < end and float(t1) > start:
                        others.add(other)
            with open(log, "a") as f:  # one short line, one write: appends from several processes do not interleave
                f.write(f"{run_id}\t{start}\t{end}\n")
            mark.unlink(missing_ok=True)
            others.discard(run_id)
            self.alongside = sorted(others)


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
