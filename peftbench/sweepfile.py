"""Declarative sweeps: ``peftbench run --config sweep.toml``.

A sweep file holds what the ``run`` flags say, with the same names (``max_steps`` for
``--max-steps``) and the same validation; unknown keys are rejected. Top-level keys are
defaults; each ``[[sweep]]`` table is one sweep that overrides them (none: the top level is the
one sweep); ``[task.<name>]`` tables override the schedule for one task (e.g. more epochs on a
harder task). A top-level ``lr_extend`` applies to the sweeps that search a rate (a sweep of
methods without a grid, such as a baseline, has nothing to grow; a file where no sweep searches
is told so). ``out`` is relative to the file's folder, so a results folder can keep the file
that made it::

    out = "."
    tasks = ["sst2", "trec"]
    seeds = [0, 1, 2]
    keep_checkpoints = false

    [[sweep]]
    methods = ["full", "lora", "adapter[placement=pfeiffer]"]
    budget = "lora:r=8"

    [[sweep]]
    methods = ["peft-adalora"]
    lr = { peft-adalora = 1e-2 }

    [task.trec]
    train_samples = "all"
    epochs = 2
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from .errors import PeftbenchError, closest

# key -> how a value becomes the SweepSettings field (lists and tables become the flag's text)
_LISTS = ("methods", "tasks", "seeds", "budget", "plugins")
_TABLES = ("knob", "lr")
_SCALARS = ("model", "data_dir", "epochs", "max_steps", "train_samples", "data_seed", "train_subset", "batch_size",
            "max_seq_len", "warmup_ratio", "weight_decay", "max_grad_norm", "device", "keep_checkpoints",
            "latency", "latency_batch", "latency_seq_len", "latency_min_time", "precision", "eval_split",
            "eval_samples", "num_beams", "length_penalty", "no_repeat_ngram_size", "max_new_tokens", "meteor",
            "lr_search", "lr_grid", "val_samples", "search_seeds", "lr_extend", "nproc")
KEYS = (*_LISTS, *_TABLES, *_SCALARS)
TASK_KEYS = ("epochs", "max_steps", "train_samples", "batch_size", "max_seq_len", "lr", "warmup_ratio",
             "weight_decay", "max_grad_norm", "data_seed", "train_subset")
FILE_KEYS = ("out", "sweep", "task")
DEVICES = ("auto", "cpu", "cuda")  # what --device takes


def _check_keys(table: dict, allowed, where: str, path) -> None:
    for key in table:
        if key not in allowed:
            raise PeftbenchError(f"{path}: unknown key {key!r} in {where}{closest(key, allowed)}; "
                                 f"valid keys: {', '.join(allowed)}")


def _text(key, value, path) -> str | None:
    if value is None:
        return None
    if key in _TABLES:
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                    grid = " (a grid of rates to search: lr_grid)" if key == "lr" else ""
                    raise PeftbenchError(f"{path}: {key}.{k} = {v!r}: give one value per method{grid}")
            return ",".join(f"{k}={v}" for k, v in value.items())
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise PeftbenchError(f"{path}: {key} = {value!r} is not a valid value; give a string, a number or a list")


def settings_from(values: dict, path):
    """The SweepSettings for one sweep entry (keys already merged and checked)."""
    from .plan import SweepSettings, latency_settings, parse_train_samples

    kw = {}
    for key in ("methods", "tasks", "seeds", "budget", "knob", "lr"):
        if key in values:
            kw[key] = _text(key, values[key], path)
    for key in ("model", "data_dir", "train_subset", "device", "precision", "eval_split"):
        if key in values:
            kw[key] = str(values[key])
    if kw.get("device", "auto") not in DEVICES:
        raise PeftbenchError(f"{path}: device = {kw['device']!r}: give one of {', '.join(DEVICES)}")
    for key, cast in (("epochs", float), ("max_steps", int), ("data_seed", int), ("batch_size", int),
                      ("max_seq_len", int), ("warmup_ratio", float), ("weight_decay", float), ("max_grad_norm", float),
                      ("eval_samples", int), ("num_beams", int), ("length_penalty", float),
                      ("no_repeat_ngram_size", int), ("max_new_tokens", int), ("val_samples", int), ("lr_extend", int), ("nproc", int)):
        if key in values:
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (cast is int and value != int(value)):
                raise PeftbenchError(f"{path}: {key} = {value!r} must be a{'n integer' if cast is int else ' number'}")
            kw[key] = cast(value)
    if "train_samples" in values:
        kw["train_samples"] = parse_train_samples(str(values["train_samples"]))
    if "meteor" in values:
        kw["meteor"] = _bool(values["meteor"], "meteor", path)
    if "lr_search" in values:
        kw["lr_search"] = _bool(values["lr_search"], "lr_search", path)
    if "lr_grid" in values:  # { lora = [1e-4, 3e-4], full = [1e-5, 3e-5] }: the grids of this sweep's methods
        grid = values["lr_grid"]
        if not isinstance(grid, dict):
            raise PeftbenchError(f"{path}: lr_grid must be a table of method = [rates]")
        names = _method_names(values.get("methods", []))
        kw["lr_grid"] = tuple(f"{m}={','.join(map(str, r if isinstance(r, list) else [r]))}" for m, r in grid.items()
                              if m in names)
    if "search_seeds" in values:
        kw["search_seeds"] = _text("search_seeds", values["search_seeds"], path)
    if "keep_checkpoints" in values:
        kw["keep_checkpoint"] = _bool(values["keep_checkpoints"], "keep_checkpoints", path)
    if "plugins" in values:
        plugins = values["plugins"] if isinstance(values["plugins"], list) else [values["plugins"]]
        kw["plugins"] = tuple(str((Path(path).parent / p).resolve()) for p in plugins)
    if "methods" not in kw:
        raise PeftbenchError(f"{path}: a sweep needs methods = [...]")
    measure = _bool(values.get("latency", True), "latency", path)
    kw["latency"] = latency_settings(measure, values.get("latency_batch", 32), values.get("latency_seq_len"),
                                     values.get("latency_min_time", 2.0))
    valid = {f.name for f in dataclasses.fields(SweepSettings)}
    return SweepSettings(**{k: v for k, v in kw.items() if k in valid})


def _method_names(methods) -> set[str]:
    """``["lora", "adapter[placement=pfeiffer]"]`` (or the comma text) -> {"lora", "adapter"}."""
    text = ",".join(methods) if isinstance(methods, list) else str(methods)
    names, depth, current = set(), 0, ""
    for ch in text + ",":
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            names.add(current.split("[")[0].strip())
            current = ""
        else:
            current += ch
    return names - {""}


def _searches(values: dict) -> bool:
    """Whether a sweep searches a learning rate: lr_search, or an lr_grid for one of its methods."""
    grid = values.get("lr_grid")
    return values.get("lr_search") is True or (
        isinstance(grid, dict) and bool(set(grid) & _method_names(values.get("methods", []))))


def _bool(value, key, path) -> bool:
    if not isinstance(value, bool):
        raise PeftbenchError(f"{path}: {key} = {value!r} must be true or false")
    return value


def load(path) -> tuple[list, Path | None]:
    """The sweep file at ``path`` as a list of SweepSettings (one per sweep entry and task) and
    its ``out`` folder (None if it names none)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PeftbenchError(f"--config {path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PeftbenchError(f"--config {path}: not valid TOML ({e})") from None
    _check_keys(data, (*KEYS, *FILE_KEYS), "the top level", path)
    defaults = {k: v for k, v in data.items() if k in KEYS}
    entries = data.get("sweep", [{}])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise PeftbenchError(f"{path}: write each sweep as a [[sweep]] table")
    per_task = data.get("task", {})
    if not isinstance(per_task, dict):
        raise PeftbenchError(f"{path}: write per-task settings as [task.<name>] tables")
    for name, table in per_task.items():
        _check_keys(table, TASK_KEYS, f"[task.{name}]", path)
    out = data.get("out")
    if out is not None and not isinstance(out, str):
        raise PeftbenchError(f"{path}: out = {out!r} must be a folder's path in quotes (relative to the file's folder)")
    all_tasks = set()
    settings = []
    searching = any(_searches({**defaults, **e}) for e in entries)
    for i, entry in enumerate(entries, 1):
        _check_keys(entry, KEYS, f"[[sweep]] number {i}", path)
        merged = {**defaults, **entry}
        if "lr_extend" not in entry and searching and not _searches(merged):  # a default grows the grids
            merged.pop("lr_extend", None)  # of the sweeps that search, not a baseline's (which has none)
        tasks = merged.get("tasks", ["sst2"])
        tasks = tasks if isinstance(tasks, list) else [t for t in str(tasks).split(",") if t.strip()]
        groups: dict = {}  # tasks with the same overrides are planned together
        all_tasks.update(t.strip() for t in tasks)
        for task in tasks:
            groups.setdefault(repr(sorted(per_task.get(task.strip(), {}).items())), []).append(task.strip())
        for names in groups.values():
            overrides = per_task.get(names[0], {})
            if "lr" in overrides and "lr" in merged and isinstance(merged["lr"], dict) and isinstance(overrides["lr"], dict):
                overrides = {**overrides, "lr": {**merged["lr"], **overrides["lr"]}}
            settings.append(settings_from({**merged, **overrides, "tasks": names}, path))
    for entry in entries:
        grid = {**defaults, **entry}.get("lr_grid")
        if isinstance(grid, dict):
            unrun = sorted(set(grid) - set().union(*(_method_names({**defaults, **e}.get("methods", [])) for e in entries)))
            with_options = [name for name in unrun if "[" in name]
            if with_options:
                name = with_options[0]
                raise PeftbenchError(f"{path}: lr_grid key {name!r}: a grid belongs to a method and serves all its "
                                     f"variants; name it without options ({name.split('[')[0]} = [...])")
            if unrun:
                raise PeftbenchError(f"{path}: lr_grid names {unrun[0]}, which no sweep runs; add it to methods or "
                                     "remove it from lr_grid")
    unused = sorted(set(per_task) - all_tasks)
    if unused:
        raise PeftbenchError(f"{path}: [task.{unused[0]}] names a task that no sweep runs{closest(unused[0], all_tasks)}; "
                             "add it to tasks or remove the table")
    return settings, (path.parent / out).resolve() if out is not None else None
