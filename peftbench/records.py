"""Run records: one JSON file per run, keyed by run id, written atomically.

A record is the single source of truth for everything reported. Writes go to a temp
file in the same folder, are fsynced, then ``os.replace``d over the target, so a crash
never leaves a half-written record and never destroys a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

SCHEMA = 1
_UMASK = os.umask(0)
os.umask(_UMASK)
STATUSES = ("ok", "failed", "oom", "diverged", "timeout", "cancelled")

# The spec fields that determine a run's result, and so its id: what was asked for (method and
# options, size, task, model, seeds, schedule, measurement settings) and the content of what it
# depends on directly: the method's and the task's plugin code (content hash of the plugin's
# module file, with the package version for a pip plugin, plus the plugin's declared version), the
# data files' content and the model weights' content. Editing a plugin file or a data file
# therefore reruns exactly the runs that used it.
ID_FIELDS = (
    "method", "options", "knob", "knob_value", "budget", "budget_params", "task", "task_version",
    "model", "model_revision", "seed", "data_seed", "train_samples", "lr", "epochs", "max_steps",
    "batch_size", "max_seq_len", "warmup_ratio", "weight_decay", "max_grad_norm", "device",
    "latency", "peftbench_version", "train_subset", "method_version", "method_code", "task_code", "data_sha",
    "precision", "eval_split", "eval_samples", "generation", "metrics", "lr_selection", "role", "validation",
    "nproc",
)
# What a record says about the rest of the code that ran, which does not enter the id: a change
# of the host package (peftbench/) or of a library makes existing records *stale* (reports warn,
# `peftbench run --rerun-stale` refreshes them) instead of silently invalidating every result.
STALE_ENV_FIELDS = ("host_code", "python", "torch", "transformers", "peft", "datasets", "tokenizers", "safetensors",
                    "accelerate", "numpy", "gguf")
# Fields added after records were published: left out of the id at their default value, so that
# the ids of earlier records (which lack the field) stay valid.
ID_DEFAULTS = {"train_subset": "random", "lr_selection": None, "role": None, "validation": None, "nproc": 1}


def run_id(spec: dict) -> str:
    key = {k: spec.get(k) for k in ID_FIELDS if not (k in ID_DEFAULTS and spec.get(k, ID_DEFAULTS[k]) == ID_DEFAULTS[k])}
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yields a temp path in ``path``'s folder; once the block has written it, it is fsynced and
    renamed over ``path`` (and the rename made durable). On any error the temp file is removed and
    an existing ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a record is an ordinary file
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def write_atomic(path: Path, data, text: bool = False) -> None:
    """Write a JSON record (or ``text``) atomically."""
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data if text else json.dumps(data, indent=1, sort_keys=False, default=str) + "\n")


def records_dir(out: Path) -> Path:
    return Path(out) / "records"


def record_path(out: Path, rid: str) -> Path:
    return records_dir(out) / f"{rid}.json"


def read_record(path: Path) -> dict | None:
    """The record at ``path``; None if missing. Raises ValueError if corrupt or truncated."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt record ({e.msg} at line {e.lineno})") from None
    if not isinstance(rec, dict) or rec.get("status") not in STATUSES or "run_id" not in rec:
        raise ValueError(f"{path}: not a peftbench run record")
    return rec


def load_records(folder: Path, warn=None) -> dict[str, dict]:
    """run id -> record for every record under ``folder`` (a run folder or its records/).
    Corrupt records are reported through ``warn(message)`` and treated as missing."""
    folder = Path(folder)
    base = records_dir(folder) if records_dir(folder).is_dir() else folder
    out = {}
    for path in sorted(base.glob("[!.]*.json")):  # dotfiles are temp or spec files
        try:
            rec = read_record(path)
        except ValueError as e:
            if warn:
                warn(f"{e}; treating it as missing")
            continue
        if rec is not None:
            out[rec["run_id"]] = rec
    return out


def stale_reasons(record: dict, current: dict) -> list[str]:
    """How the code and libraries that made ``record`` differ from ``current`` (an environment
    dict as runner.environment writes it), e.g. ``["host_code 1a2b -> 3c4d", "torch 2.12 -> 2.13"]``."""
    env = record.get("env") or {}
    return [f"{k} {env.get(k)} -> {current.get(k)}" for k in STALE_ENV_FIELDS
            if (k in env or k in current) and env.get(k) != current.get(k)]


def checkpoint_file(record_path: Path, rec: dict) -> Path | None:
    """A run's kept checkpoint: the copy in its folder's ``checkpoints/`` (a published folder's) first, else the
    path the record names; None when neither is there."""
    stored = (rec.get("checkpoint") or {}).get("path")
    return next((c for c in [checkpoint_beside(record_path, rec)] + ([Path(stored)] if stored else []) if c.is_file()),
                None)


def checkpoint_beside(record_path: Path, rec: dict) -> Path:
    """Where the folder of a record keeps the run's checkpoint (``<folder>/checkpoints/<run id>.safetensors``)."""
    return Path(record_path).parent.parent / "checkpoints" / f"{rec['run_id']}.safetensors"

