"""Running a planned sweep: one child process per run (a crash, OOM kill or hang of one run
cannot take the sweep down), resuming from the records already in the output folder."""

from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import worker
from .errors import PeftbenchError
from .records import load_records, read_record, record_path, records_dir, stale_reasons, write_atomic


# -- execution ---------------------------------------------------------------------------
def check_output_dir(out: Path, create: bool = True) -> None:
    """--out must be a folder; with ``create`` (a run, not a dry run) it is made and must be writable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PeftbenchError(f"--out {out} is a file; give a folder")
    if not create:  # a dry run creates nothing: the folder it would make must be makeable
        above = next(p for p in (out, *out.absolute().parents) if p.exists())
        if not above.is_dir():
            raise PeftbenchError(f"--out {out}: {above} is a file, so the folder cannot be made; choose another")
        if not os.access(above, os.W_OK | os.X_OK):
            raise PeftbenchError(f"--out {out} is not writable ({above}: permission denied); choose another folder")
        return
    try:
        records_dir(out).mkdir(parents=True, exist_ok=True)
        probe = records_dir(out) / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PeftbenchError(f"--out {out} is not writable ({e.strerror}); choose another folder") from None


def oom_kill_count() -> int | None:
    """How many processes the kernel's OOM killer has killed since boot (Linux >= 4.13), else None."""
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def record_failure(out, spec, status, error, started, attempt=None, error_type=None) -> dict:
    """Write (atomically) and return the record of a run that did not write its own: it failed
    before starting, died, hung, was cancelled, or its executor lost it (every executor uses this).
    A plugin's traceback from planning (``spec["plan_error_traceback"]``) goes to the side file a
    failed run's traceback goes to."""
    spec = dict(spec)
    tb_text = spec.pop("plan_error_traceback", None)
    rec = {
        "schema": 1, "run_id": spec["run_id"], "attempt": attempt, "status": status,
        "spec": spec, "error_type": error_type or status, "error": error,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": time.time() - started,
    }
    if spec.get("plan_error"):  # a plugin failed while the sweep was planned: name its code as a run would
        from .plugins import run_plugins

        rec["plugins"] = run_plugins(spec)
    if tb_text:
        tb = record_path(out, spec["run_id"]).with_suffix(".traceback.txt")
        write_atomic(tb, tb_text, text=True)
        rec["traceback_file"] = tb.name
    write_atomic(record_path(out, spec["run_id"]), rec)
    return rec


def kept_or_failure(out, spec, status, error, started) -> dict:
    """A remote executor lost a run (its job or task died): the record the run wrote itself if it
    got that far (ok, or cancelled, which a resume reruns) since ``started``, else a failure record.
    Runs are only started without an ok record, so an ok record written since is this run's."""
    path = record_path(out, spec["run_id"])
    try:
        rec = read_record(path)
        if rec is not None and rec.get("status") in ("ok", "cancelled") and path.stat().st_mtime >= started:
            return rec
    except (ValueError, OSError):
        pass
    return record_failure(out, spec, status, error, started)


def _own_record(out, spec, attempt) -> dict | None:
    """The run's record if this attempt wrote it (not an older one, not a corrupt file)."""
    try:
        rec = read_record(record_path(out, spec["run_id"]))
    except ValueError:
        return None
    return rec if rec is not None and rec.get("attempt") == attempt else None


def _join(proc, timeout: float | None, stop) -> bool:
    """Wait for the run's process (at most ``timeout`` s). With ``stop`` (an event another thread sets
    when the sweep is interrupted) the run is sent a Ctrl-C once it is set: a run started just as the
    sweep was interrupted never got the terminal's. True if that happened."""
    if stop is None:
        proc.join(timeout)
        return False
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.is_alive():
        if stop.is_set():
            proc.interrupt() if hasattr(proc, "interrupt") else os.kill(proc.pid, signal.SIGINT)
            proc.join(10)
            return True
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        proc.join(0.5 if left is None else min(0.5, left))
    return False


def execute_one(spec: dict, out: Path, timeout: float | None, progress: bool, stop=None) -> dict:
    """Run one spec in its own process and return its record (written by the child, or
    here when the child died, hung or was interrupted). ``stop``: see ``_join``."""
    attempt = uuid.uuid4().hex[:12]
    started = time.time()
    if spec.get("plan_error"):  # a plugin crashed while the sweep was planned: nothing to start
        return record_failure(out, spec, "failed", spec["plan_error"], started, attempt,
                              error_type=spec.get("plan_error_type"))
    spec_file = records_dir(out) / f".{spec['run_id']}.spec"
    oom_kills_before = oom_kill_count()
    proc = None
    timed_out = interrupted = False
    try:  # from the moment the spec exists, a Ctrl-C leaves a cancelled record and no spec file
        write_atomic(spec_file, {**spec, "attempt": attempt})
        if spec.get("nproc", 1) > 1:  # one run over several processes: torchrun, rank 0 writes the record
            from .ddp import Launched

            proc = Launched(spec_file, out, spec["nproc"])
        else:
            proc = worker.start(spec_file, out, progress)
        interrupted = _join(proc, timeout, stop)
        if proc.exitcode is None:  # still running: hung (or deaf to the Ctrl-C it was sent)
            proc.kill()
            proc.join()
            timed_out = not interrupted
    except KeyboardInterrupt:
        if proc is not None and proc.is_alive():
            proc.join(10)  # the run got the same SIGINT from the terminal
        if _own_record(out, spec, attempt) is None:  # keep a record the run finished itself
            record_failure(out, spec, "cancelled", "interrupted (Ctrl-C)", started, attempt)
        raise
    finally:
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join()
        spec_file.unlink(missing_ok=True)
    rec = _own_record(out, spec, attempt)
    if rec is None and (proc.exitcode == worker.EXIT_INTERRUPTED or interrupted):
        # the run was interrupted by a SIGINT this process did not get (e.g. `kill -INT <run pid>`):
        # the interrupt still ends the sweep
        record_failure(out, spec, "cancelled", "interrupted (Ctrl-C)", started, attempt)
        raise KeyboardInterrupt
    if rec is None:  # the child died before writing its record
        rc = proc.exitcode
        if timed_out:
            status, error = "timeout", f"killed after --timeout-per-run {timeout:g} s"
        elif rc == -signal.SIGKILL and oom_kills_before is not None and (oom_kill_count() or 0) > oom_kills_before:
            status, error = "oom", "run process killed by SIGKILL while the kernel's OOM killer fired"
        elif rc < 0:
            status = "failed"
            error = f"run process killed by {_signal_name(rc)}" + (
                " (the kernel's OOM killer sends SIGKILL; it did not fire during this run as far as "
                "/proc/vmstat tells)" if rc == -signal.SIGKILL else "")
        else:
            status, error = "failed", f"run process exited with code {rc} without a record"
        rec = record_failure(out, spec, status, error, started, attempt)
    return rec


@dataclass
class SweepResult:
    records: list
    skipped_ok: int = 0
    skipped_failed: int = 0
    replaced: int = 0  # ok records rerun (--force, --rerun-stale); the old ones are in records/superseded/
    ran: int = 0


def run_sweep(specs, out: Path, *, rerun_failed=False, force=False, rerun_stale=False, timeout=None, progress=True,
              on_record=None, on_start=None, warn=None, executor=None) -> SweepResult:
    """Run what has no ok record yet (with ``rerun_stale``, also what has an ok record made by other
    host code or libraries than the installed ones). ``on_start(result, n_todo)`` is called once the
    skips are known, ``on_record(record, i, n_todo)`` after each run."""
    from .provenance import current_environment

    out = Path(out)
    check_output_dir(out)
    existing = load_records(out, warn=warn)
    result = SweepResult(records=[])
    todo = []
    current = current_environment() if rerun_stale else None
    for spec in specs:
        rec = existing.get(spec["run_id"])
        replace = force or (rerun_stale and rec is not None and bool(stale_reasons(rec, current)))
        if rec and replace and rec["status"] == "ok":  # a rerun replaces the record: keep the old result
            write_atomic(records_dir(out) / "superseded" / f"{spec['run_id']}.{rec.get('attempt') or 'old'}.json", rec)
            result.replaced += 1
        if rec and not replace:
            if rec["status"] == "ok":
                result.skipped_ok += 1
                result.records.append(rec)
                continue
            if rec["status"] != "cancelled" and not rerun_failed:
                result.skipped_failed += 1
                result.records.append(rec)
                continue
        todo.append(spec)
    if on_start:
        on_start(result, len(todo))
    from .executors import ExecutorOptions, run_all

    def done(rec):
        result.ran += 1
        result.records.append(rec)
        if on_record:
            on_record(rec, result.ran, len(todo))

    run_all(todo, out, executor or ExecutorOptions(), timeout, progress, done)
    return result
