"""Task definitions, data resolution, file readers and metrics.

A task is declarative: where its files are and how to read them, its labels, its metrics
and default maximum length. A change to data handling or metrics bumps ``version``,
which goes into every run record and run id.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from .errors import PeftbenchError, PluginFailure, closest, first_line

DATA_ENV = "PEFTBENCH_DATA"


# -- metrics ---------------------------------------------------------------------------
@dataclass
class Metric:
    """A task metric: ``fn(predictions, gold) -> float`` (NumPy arrays), its direction and a description.
    Registered through the ``peftbench_register_metrics`` hook; tasks name metrics by ``name``.
    ``fn`` may be None for a metric that a task's own scorer computes (generation metrics)."""

    name: str
    fn: Callable | None
    higher_is_better: bool = True
    description: str = ""
    plugin: str = field(default="?", compare=False)

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    def validate(self):
        from .errors import PluginError

        if self.fn is not None and not callable(self.fn):
            raise PluginError(f"metric {self.name}: fn must be callable as fn(predictions, gold) -> float, or None")
        if not isinstance(self.higher_is_better, bool):
            raise PluginError(f"metric {self.name}: higher_is_better must be True or False, "
                              f"got {self.higher_is_better!r}")


@dataclass(frozen=True)
class HubSource:
    """Where the task lives on the Hugging Face hub (used only when no local data is given)."""

    path: str
    name: str | None
    train_split: str
    eval_split: str
    text_columns: tuple[str, ...]
    label_column: str


@dataclass
class Task:
    name: str
    version: int
    folder: str  # subfolder of the data directory
    train_file: str
    eval_file: str
    text_columns: tuple[str, ...]  # one (single sentence) or two (sentence pair)
    label_column: str
    metrics: tuple[str, ...] = ("accuracy",)  # the first is the primary metric
    num_labels: int = 2  # 1 = regression
    max_seq_len: int = 128
    format: str = "tsv"  # "tsv" (GLUE, unquoted), "jsonl", or a custom ``reader``
    columns: tuple[str, ...] | None = None  # names of a header-less TSV's columns
    label_map: Mapping[str, int] | None = None  # string labels -> class ids
    label_scale: float = 1.0  # regression targets are multiplied by this for training
    reader: Callable[[Path, "Task"], pd.DataFrame] | None = None
    hub: HubSource | None = None
    description: str = ""
    plugin: str = field(default="?", compare=False)

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def kind(self) -> str:
        """"classification" (regression included) or "generation" (see generation/task.py)."""
        return "classification"

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def validate(self):
        from .errors import PluginError
        from .plugins import get_metrics

        if (not isinstance(self.metrics, (tuple, list)) or not self.metrics
                or not all(isinstance(m, str) for m in self.metrics)):
            raise PluginError(f"task {self.name}: metrics must be a non-empty tuple of metric names (the first is "
                              f"the primary one), got {self.metrics!r}")
        if not isinstance(self.version, (int, str)) or isinstance(self.version, bool):
            raise PluginError(f"task {self.name}: version must be an int or a str, got {self.version!r}")
        if self.kind == "classification" and (not isinstance(self.num_labels, int) or isinstance(self.num_labels, bool)
                                              or self.num_labels < 1):
            raise PluginError(f"task {self.name}: num_labels must be a positive int (1 = regression), "
                              f"got {self.num_labels!r}")
        known = get_metrics()
        unknown = [m for m in self.metrics if m not in known]
        if unknown:
            raise PluginError(f"task {self.name}: unknown metric(s) {', '.join(unknown)}{closest(unknown[0], known)}; "
                              f"registered metrics: {', '.join(known)}")
        if self.kind == "classification" and self.format not in ("tsv", "jsonl") and self.reader is None:
            raise PluginError(f"task {self.name}: format {self.format!r} needs a reader")

    def score(self, pred, gold) -> dict[str, float]:
        from .plugins import get_metrics

        known = get_metrics()
        out = {}
        for name in self.metrics:
            if known[name].fn is None:
                raise PeftbenchError(f"task {self.name}: metric {name} has no function of its own (a generation "
                                     "task's scorer computes it); give the task a metric with fn")
            try:
                out[name] = float(known[name].fn(np.asarray(pred), np.asarray(gold)))
            except PeftbenchError:
                raise
            except Exception as e:
                raise PluginFailure("metric", name, known[name].plugin, "scoring", e) from e
        return out

    def directions(self) -> dict[str, str]:
        """metric name -> "higher" or "lower" (is better), for records and reports."""
        from .plugins import get_metrics

        known = get_metrics()
        return {name: known[name].direction for name in self.metrics}

    # -- reading -------------------------------------------------------------------------
    def read(self, path: Path) -> pd.DataFrame:
        """Read one split into a frame with columns text_a, [text_b], label."""
        if self.reader is not None:
            return self.reader(path, self)
        if self.format == "tsv":
            fast = read_tsv_fast(path, self)
            if fast is not None:
                return fast
        rows = read_jsonl(path, self) if self.format == "jsonl" else read_tsv(path, self)
        return pd.DataFrame(rows, columns=[*_text_names(self), "label"])

    def parse_label(self, raw, path, line):
        if self.label_map is not None:
            if raw not in self.label_map:
                raise PeftbenchError(
                    f"{path}:{line}: unknown label {raw!r} for task {self.name} (expected one of {', '.join(map(str, self.label_map))})"
                )
            return self.label_map[raw]
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise PeftbenchError(f"{path}:{line}: label {raw!r} is not a number (task {self.name})") from None
        if self.is_regression:
            return value
        if not value.is_integer() or not 0 <= value < self.num_labels:
            raise PeftbenchError(f"{path}:{line}: label {raw!r} is not a class id 0..{self.num_labels - 1}")
        return int(value)


def _text_names(task: Task):
    return ["text_a", "text_b"][: len(task.text_columns)]


def read_tsv_fast(path: Path, task: Task) -> pd.DataFrame | None:
    """What ``read_tsv`` returns, read by pandas' C parser (SST-2's 67k lines: ~0.05 s against
    ~0.6 s, paid by the sweep's plan and again by every run), or None where the file is anything
    but clean (a field count off, an unknown or malformed label, a byte-order mark, bad UTF-8):
    ``read_tsv`` then reads it and names the line at fault."""
    import io

    try:
        data = path.read_bytes()
    except OSError:
        return None
    # What pandas reads otherwise than csv does, left to read_tsv: a byte-order mark (pandas drops
    # it), a lone \r (a line end for both, but not in the line count below), a blank first line (csv's
    # header then), a line longer than csv's field limit (csv refuses it)
    lines = [line for line in data.split(b"\n") if line not in (b"", b"\r")]
    if (data[:3] == b"\xef\xbb\xbf" or data.count(b"\r") != data.count(b"\r\n")
            or (not task.columns and data[:1] in (b"\n", b"\r"))
            or max(map(len, lines), default=0) > csv.field_size_limit()):
        return None
    try:
        raw = pd.read_csv(io.BytesIO(data), sep="\t", quoting=csv.QUOTE_NONE, header=None, dtype=str,
                          na_filter=False, skip_blank_lines=True, encoding="utf-8", engine="c")
    except Exception:
        return None
    # Every non-empty line became a row (pandas also skips whitespace-only lines, which read_tsv
    # reports), each of raw's width: pandas refuses a longer row but fills a shorter one with ''
    # (a tab is never text here: quoting is off)
    if len(raw) != len(lines) or data.count(b"\t") != len(lines) * (raw.shape[1] - 1):
        return None
    if task.columns:
        columns = list(task.columns)
    else:
        columns, raw = list(raw.iloc[0]), raw.iloc[1:]
    wanted = (*task.text_columns, task.label_column)
    if raw.empty or len(columns) != raw.shape[1] or any(c not in columns for c in wanted):
        return None
    picked = raw.iloc[:, [columns.index(c) for c in wanted]]
    labels = picked.iloc[:, -1]
    if task.label_map is not None:
        values = labels.map(task.label_map)
        if values.isna().any():
            return None
        values = values.astype("int64")
    else:
        values = pd.to_numeric(labels, errors="coerce")
        if values.isna().any():
            return None
        if not task.is_regression:
            if ((values % 1 != 0) | (values < 0) | (values >= task.num_labels)).any():
                return None
            values = values.astype("int64")
        else:
            values = values.astype("float64")
    frame = pd.DataFrame({name: picked.iloc[:, i].to_numpy(dtype=object) for i, name in enumerate(_text_names(task))})
    frame["label"] = values.to_numpy()
    return frame


def read_tsv(path: Path, task: Task) -> list:
    """GLUE TSV, read with quoting off (the text has unbalanced quotes)."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        wanted = (*task.text_columns, task.label_column)
        columns = list(task.columns) if task.columns else None
        index = [columns.index(c) for c in wanted] if columns else None
        try:
            for line, fields in enumerate(reader, start=1):
                if columns is None:
                    columns = fields
                    missing = [c for c in wanted if c not in columns]
                    if missing:
                        raise PeftbenchError(f"{path}:1: header lacks column(s) {', '.join(missing)} (task {task.name})")
                    index = [columns.index(c) for c in wanted]
                    continue
                if not fields:
                    continue
                if len(fields) != len(columns):
                    raise PeftbenchError(
                        f"{path}:{line}: expected {len(columns)} tab-separated fields, found {len(fields)}"
                    )
                *texts, label = (fields[i] for i in index)
                rows.append([*texts, task.parse_label(label, path, line)])
        except csv.Error as e:  # e.g. a line over csv's field size limit
            raise PeftbenchError(f"{path}:{reader.line_num}: {e}; is this a {task.name} TSV file?") from None
    return rows


def read_jsonl(path: Path, task: Task) -> list:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise PeftbenchError(f"{path}:{line}: not valid JSON ({e.msg})") from None
            missing = [c for c in (*task.text_columns, task.label_column) if c not in obj]
            if missing:
                raise PeftbenchError(f"{path}:{line}: missing key(s) {', '.join(missing)}")
            texts = [str(obj[c]) for c in task.text_columns]
            rows.append([*texts, task.parse_label(str(obj[task.label_column]), path, line)])
    return rows


# -- where the data comes from -----------------------------------------------------------
@dataclass(frozen=True)
class TaskData:
    train: pd.DataFrame
    eval: pd.DataFrame
    source: str  # folder or hub id
    fingerprint: str  # content hash of the files read


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_unreachable() -> str | None:
    """Why the hub cannot be used (offline flag or no connection), or None."""
    if _hub_offline():
        return "HF_HUB_OFFLINE=1"
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as e:
        return f"{host} unreachable ({e.__class__.__name__})"
    return None


def locate(task: Task, data_dir: str | None = None, files=None) -> Path | None:
    """The task's local folder, or None when neither --data-dir nor PEFTBENCH_DATA is set.
    A given folder that lacks the task's files is an error: no silent switch of source."""
    for flag, root in (("--data-dir", data_dir), (DATA_ENV, os.environ.get(DATA_ENV))):
        if root:
            folder = Path(root).expanduser() / task.folder
            missing = [f for f in (files or (task.train_file, task.eval_file)) if not (folder / f).is_file()]
            if missing:
                raise PeftbenchError(
                    f"task {task.name}: {flag}={root} has no {task.folder}/{missing[0]}; point {flag} "
                    f"at the folder holding {task.folder}/ (e.g. ../shared/datasets)"
                )
            return folder
    return None


def load_task_data(task: Task, data_dir: str | None = None, split: str | None = None,
                   train_only: bool = False) -> TaskData:
    """The task's training and evaluation data (``split``: a generation task's eval split). With
    ``train_only`` the evaluation file is not parsed (``eval`` is None), only hashed, so that the
    fingerprint is the same as a full read's: what a learning-rate search run reads."""

    if task.kind == "generation":
        from .generation.task import load_data

        return load_data(task, data_dir, split, train_only=train_only)

    folder = locate(task, data_dir)
    if folder is not None:
        frames, digest = [], hashlib.sha256(f"{task.name}:{task.version}".encode())
        for name in (task.train_file, task.eval_file):
            path = folder / name
            try:
                digest.update(path.read_bytes())
                if not (train_only and name == task.eval_file):
                    frames.append(task.read(path))
            except UnicodeDecodeError:
                raise PeftbenchError(f"{path}:{_first_bad_line(path)}: not UTF-8 text; re-save the file as UTF-8") from None
            except OSError as e:
                raise PeftbenchError(f"{path}: cannot read it ({e.strerror or e}); check the file and its permissions") from None
            except PeftbenchError:
                raise
            except Exception as e:  # the task's reader crashed: the plugin's failure, not bad data
                raise PluginFailure("task", task.name, task.plugin, f"reading {path.name}", e) from e
        for df, name in zip(frames, (task.train_file, task.eval_file)):
            if not isinstance(df, pd.DataFrame) or not {"text_a", "label"} <= set(df.columns):  # what data.py reads
                got = f"columns {', '.join(map(str, df.columns))}" if isinstance(df, pd.DataFrame) else type(df).__name__
                raise PluginFailure("task", task.name, task.plugin, f"reading {name}", ValueError(
                    f"its reader returned {got}; a reader returns a pandas DataFrame with columns text_a, [text_b,] label"))
            if len(df) == 0:
                raise PeftbenchError(f"{folder / name}: no examples; is this the right file?")
        return TaskData(frames[0], frames[1] if not train_only else None, str(folder), digest.hexdigest()[:16])
    return _load_from_hub(task)


def _first_bad_line(path: Path) -> int:
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return line
    return 1


def _load_from_hub(task: Task) -> TaskData:
    tried = f"--data-dir not given, {DATA_ENV} not set"
    fix = f"pass --data-dir or set {DATA_ENV} to the folder holding {task.folder}/ (e.g. ../shared/datasets)"
    if task.hub is None:
        raise PeftbenchError(f"task {task.name}: no data found ({tried}, no hub copy known); {fix}")
    hub = task.hub
    hub_id = f"{hub.path}/{hub.name}" if hub.name else hub.path
    why = _hub_unreachable()
    if why:
        raise PeftbenchError(f"task {task.name}: no data found ({tried}, hub {hub_id} skipped: {why}); {fix}")
    try:
        import datasets

        ds = datasets.load_dataset(hub.path, hub.name)
        frames = []
        for split in (hub.train_split, hub.eval_split):
            df = ds[split].to_pandas()
            out = pd.DataFrame({n: df[c].astype(str) for n, c in zip(_text_names(task), hub.text_columns)})
            out["label"] = df[hub.label_column].astype(float if task.is_regression else int)
            frames.append(out)
    except Exception as e:
        raise PeftbenchError(f"task {task.name}: no data found ({tried}, hub {hub_id} failed: {first_line(e)}); {fix}") from None
    # what was read, not where from: a hub dataset's revision can change under the same id
    digest = hashlib.sha256(f"{task.name}:{task.version}:".encode() + b"".join(
        pd.util.hash_pandas_object(f, index=False).to_numpy().tobytes() + b"|" for f in frames)).hexdigest()[:16]
    return TaskData(frames[0], frames[1], f"hub:{hub_id}", f"hub:{hub_id}@{digest}")
