"""What a record must say about where it came from: library versions, content hashes of the
code and data that ran, and which of them decide a run's identity.

Content hashes of large files (data, model weights) are computed once in full and cached by
path, size and modification time under ``PEFTBENCH_CACHE``, so they cost nothing on reruns.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path

# The libraries whose versions every record carries (those installed).
LIBRARIES = ("torch", "transformers", "peft", "datasets", "tokenizers", "safetensors", "accelerate",
             "numpy", "gguf", "pluggy",
             # what metrics and splits are computed with: f1/mcc and the stratified validation split
             # (scikit-learn), pearson/spearman (scipy), the data files' parsing (pandas), METEOR's jar
             "scikit-learn", "scipy", "pandas", "pycocoevalcap")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def versions_line() -> str:
    """The environment in one line, e.g. for CI logs."""
    return " ".join(f"{k}=={v}" for k, v in library_versions().items())


# -- content hashes ----------------------------------------------------------------------
def _cache_file() -> Path:
    root = os.environ.get("PEFTBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "peftbench")
    return Path(root) / "file-hashes.json"


def file_sha256(path) -> str:
    """sha256 of a file's whole content, cached by (resolved path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    cache = _cache_file()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    known[key] = digest.hexdigest()
    try:
        from .records import write_atomic

        write_atomic(cache, known)
    except OSError:
        pass  # a read-only cache only costs rehashing
    return known[key]


_HOST = None


def host_code_hash() -> str:
    """Content hash of the host package's Python files (every file under peftbench/): what makes a
    record *stale* when it changes (see records.STALE_FIELDS), without changing run ids."""
    global _HOST
    if _HOST is None:
        root = Path(__file__).resolve().parent
        digest = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
        _HOST = digest.hexdigest()[:16]
    return _HOST


def current_environment() -> dict:
    """The host code and library versions installed now, keyed as in a record's ``env``."""
    return {"host_code": host_code_hash(), **library_versions()}
