"""A sweep: methods x tasks x budgets x seeds expanded into run specs, validated up front,
then executed one child process per run (a crash, OOM kill or hang of one run cannot take
the sweep down), resuming from the records already in the output folder."""

from __future__ import annotations

import math
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, worker
from .budget import Budget, budget_params, parse_budgets, solve, split_top
from .errors import PeftbenchError, PluginFailure, closest
from .method import non_default_options, options_dict
from .records import load_records, read_record, record_path, records_dir, run_id, stale_reasons, write_atomic

DEFAULT_BUDGET = "lora:r=8"


# -- parsing ---------------------------------------------------------------------------
@dataclass
class MethodChoice:
    method: object
    options: dict  # resolved, every option
    label: str  # "adapter" or "adapter[placement=pfeiffer]"


def _fmt(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_method_spec(text: str, methods: dict) -> MethodChoice:
    """``name`` or ``name[key=value,key=a,b]`` (a token without '=' continues a list)."""
    text = text.strip()
    name, _, rest = text.partition("[")
    name = name.strip()
    if name not in methods:
        raise PeftbenchError(f"unknown method {name!r}{closest(name, methods)}; `peftbench methods` lists them")
    raw: dict = {}
    if rest:
        if not rest.endswith("]"):
            raise PeftbenchError(f"method spec {text!r}: missing ']'; write e.g. adapter[placement=pfeiffer]")
        key = None
        for token in rest[:-1].split(","):
            token = token.strip()
            if "=" in token:
                key, value = (s.strip() for s in token.split("=", 1))
                raw[key] = value
            elif key is not None and token:
                raw[key] = f"{raw[key]},{token}"
            elif token:
                raise PeftbenchError(f"method spec {text!r}: {token!r} is not key=value")
    method = methods[name]
    resolved = method.options(**raw)
    extra = non_default_options(resolved)
    label = name + ("[" + ",".join(f"{k}={_fmt(v)}" for k, v in sorted(extra.items())) + "]" if extra else "")
    return MethodChoice(method, options_dict(resolved), label)


def reference_resolver(methods: dict):
    """For budgets like ``adapter[placement=pfeiffer]:bottleneck=8``: spec -> (method, options)."""

    def resolve(spec: str):
        ref = parse_method_spec(spec, methods)
        return ref.method, ref.options

    return resolve


def parse_methods(text: str, methods: dict) -> list[MethodChoice]:
    choices, seen = [], set()
    for part in split_top(text):
        choice = parse_method_spec(part, methods)
        if choice.label not in seen:
            seen.add(choice.label)
            choices.append(choice)
    if not choices:
        raise PeftbenchError("--methods is empty; e.g. --methods lora,adapter")
    return choices


def parse_assignments(text: str | None, flag: str, cast, valid_keys) -> dict:
    """``lora=8,adapter=16`` -> {"lora": 8, "adapter": 16}; a bare value applies to every key ("*")."""
    out = {}
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.rpartition("=")
        key = key.strip() if sep else "*"
        if key != "*" and key not in valid_keys:
            raise PeftbenchError(f"{flag} {part!r}: {key!r} is not a method in --methods{closest(key, valid_keys)}")
        try:
            out[key] = cast(value.strip())
        except ValueError:
            raise PeftbenchError(f"{flag} {part!r}: {value.strip()!r} is not a valid number") from None
    return out


def parse_int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise PeftbenchError(f"{flag} {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not values:
        raise PeftbenchError(f"{flag} is empty")
    return values


# -- planning ----------------------------------------------------------------------------
@dataclass
class SweepSettings:
    methods: str
    tasks: str = "sst2"
    seeds: str = "0"
    model: str = "minilm"
    data_dir: str | None = None
    knob: str | None = None
    budget: str | None = None
    lr: str | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    train_samples: int | None = 4000
    data_seed: int = 0
    train_subset: str = "random"  # how train_samples are picked: "random" (by data_seed) or "first" (file order)
    batch_size: int = 32
    max_seq_len: int | None = None
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    device: str = "auto"
    precision: str = "auto"
    latency: dict | None = field(default_factory=lambda: {"batch": 32, "seq_len": None, "min_reps": 20, "min_time_s": 2.0, "warmup": 3})
    keep_checkpoint: bool = True
    plugins: tuple = ()


@dataclass
class Plan:
    specs: list
    solutions: list  # budget solutions, for display
    warnings: list = field(default_factory=list)


@dataclass
class Sizing:
    """One method configuration's size in the plan (and why its runs cannot start, if so)."""

    choice: MethodChoice
    knob_value: int | None
    budget: str | None = None
    budget_params: int | None = None
    deviation: float | None = None
    error: Exception | None = None


def plan(s: SweepSettings) -> Plan:
    """Validate everything and expand into run specs, before any training starts."""
    from .models import counter, load_config, load_tokenizer, model_revision
    from .plugins import code_hash, get_methods, get_task, load_plugins
    from .precision import resolve as resolve_precision
    from .runner import resolve_device
    from .tasks import load_task_data

    load_plugins(s.plugins)
    methods = get_methods()
    choices = parse_methods(s.methods, methods)
    names = {c.method.name for c in choices}
    tasks = [get_task(t.strip()) for t in s.tasks.split(",") if t.strip()]
    if not tasks:
        raise PeftbenchError("--tasks is empty; e.g. --tasks sst2")
    seeds = parse_int_list(s.seeds, "--seeds")
    for flag, value in [*(("--seeds", v) for v in seeds), ("--data-seed", s.data_seed)]:
        if value < 0 or value >= 2**32:
            raise PeftbenchError(f"{flag} {value}: a seed must be an integer in [0, 2**32)")
    knobs = parse_assignments(s.knob, "--knob", int, names)
    lrs = parse_assignments(s.lr, "--lr", float, names)
    for name, value in lrs.items():
        if not value > 0:
            raise PeftbenchError(f"--lr {name}={value}: a learning rate must be positive")
    for c in choices:  # a knob the method cannot take (or a method without a knob) fails here
        if c.method.name in knobs:
            c.method.check_knob(knobs[c.method.name])
        elif "*" in knobs and c.method.knob:
            c.method.check_knob(knobs["*"])
    for flag, value in (("--weight-decay", s.weight_decay), ("--max-grad-norm", s.max_grad_norm)):
        if not (value >= 0 and math.isfinite(value)):
            raise PeftbenchError(f"{flag} must be a finite number >= 0, got {value}")
    if s.train_subset not in ("random", "first"):
        raise PeftbenchError(f"--train-subset {s.train_subset!r}: use random or first")
    if not 0 <= s.warmup_ratio < 1:
        raise PeftbenchError(f"--warmup-ratio must be in [0, 1), got {s.warmup_ratio}")
    for flag, value in (("--epochs", s.epochs), ("--batch-size", s.batch_size)):
        if value is not None and value <= 0:
            raise PeftbenchError(f"{flag} must be positive, got {value}")
    for flag, value in (("--max-steps", s.max_steps), ("--train-samples", s.train_samples), ("--max-seq-len", s.max_seq_len)):
        if value is not None and value < 1:
            raise PeftbenchError(f"{flag} must be a positive integer, got {value}")
    device = resolve_device(s.device)
    precision, precision_why = resolve_precision(s.precision, device)

    # data (read fully: malformed files are reported with file and line now) and model
    task_data = []
    for task in tasks:
        try:
            task_data.append(load_task_data(task, s.data_dir))
        except PluginFailure as e:  # the task's reader crashed: its runs are recorded failed
            task_data.append(e)
    config = load_config(s.model)
    load_tokenizer(s.model)
    revision = model_revision(s.model)
    max_pos = getattr(config, "max_position_embeddings", None)
    lat_len = (s.latency or {}).get("seq_len")
    for flag, value in (("--max-seq-len", s.max_seq_len), ("--latency-seq-len", lat_len),
                        *(("the default max length of task " + t.name, t.max_seq_len) for t in tasks
                          if not s.max_seq_len)):
        if value and max_pos and value > max_pos:
            raise PeftbenchError(f"{flag} = {value} exceeds the model's {max_pos} positions; give --max-seq-len <= {max_pos}")

    # knobs: explicit --knob, else the budget(s), else each method's default
    budget_text = s.budget if s.budget is not None else (None if knobs.get("*") else DEFAULT_BUDGET)
    budgets: list[Budget] = [] if budget_text in (None, "none") else parse_budgets(budget_text)
    count = counter(config)
    resolve_ref = reference_resolver(methods)
    sizings: list[Sizing] = []
    solutions = []
    for c in choices:
        m = c.method
        explicit = knobs.get(m.name, knobs.get("*") if m.knob else None)
        if m.knob is None or explicit is not None or not budgets:
            value = explicit if m.knob else None
            sizings.append(Sizing(c, value if value is not None else m.default_knob))
            continue
        for b in budgets:
            target = budget_params(b, count, resolve_ref)
            try:
                sol = solve(m, c.options, target, count, c.label)
            except PluginFailure as e:  # the method's own code failed: its runs are recorded failed
                sizings.append(Sizing(c, None, b.text, target, error=e))
                continue
            solutions.append((b.text, sol))
            sizings.append(Sizing(c, sol.knob_value, b.text, target, sol.deviation_pct))
    # apply every configuration once: an option or architecture the method cannot handle is an
    # error now (exit 2), not one failed run per seed; a method whose code crashes fails its runs
    for z in sizings:
        if z.error is None:
            try:
                count.count(z.choice.method, z.choice.options, z.knob_value)
            except PluginFailure as e:
                z.error = e
    if budgets:  # show what the fixed methods cost next to the budget
        for z in sizings:
            if z.choice.method.knob is None and z.error is None:
                for b in budgets:
                    target = budget_params(b, count, resolve_ref)
                    solutions.append((b.text, solve(z.choice.method, z.choice.options, target, count, z.choice.label)))
    warnings = [f"method {name} cannot be applied on the meta device ({why}); its parameters were counted on a "
                "CPU copy of the model built from its config" for name, why in count.fallbacks.items()]

    specs, seen = [], set()
    for task, data in zip(tasks, task_data):
        for z in sizings:
            c = z.choice
            error = z.error or (data if isinstance(data, PluginFailure) else None)
            for seed in seeds:
                spec = {
                    "method": c.method.name, "label": c.label, "options": c.options,
                    "method_version": c.method.version, "method_code": code_hash(c.method.plugin),
                    "knob": c.method.knob, "knob_value": z.knob_value, "budget": z.budget,
                    "budget_params": z.budget_params, "budget_deviation_pct": z.deviation,
                    "task": task.name, "task_version": task.version, "task_code": code_hash(task.plugin),
                    "data_dir": s.data_dir, "data_sha": None if error else data.fingerprint,
                    "model": s.model, "model_revision": revision, "seed": seed,
                    # unused when the first N rows are taken: fixed at its default, not splitting run ids
                    "data_seed": 0 if (s.train_samples and s.train_subset == "first") else s.data_seed,
                    "train_samples": s.train_samples,
                    # settings that pick nothing are normalised, so they do not split run ids
                    "train_subset": s.train_subset if s.train_samples else "random",
                    "lr": lrs.get(c.method.name, lrs.get("*", c.method.default_lr)),
                    "lr_source": "flag" if (c.method.name in lrs or "*" in lrs) else "method default",
                    "epochs": s.epochs, "max_steps": s.max_steps, "batch_size": s.batch_size,
                    "max_seq_len": s.max_seq_len or task.max_seq_len, "warmup_ratio": s.warmup_ratio,
                    "weight_decay": s.weight_decay, "max_grad_norm": s.max_grad_norm, "device": device,
                    "precision": precision, "precision_requested": s.precision, "precision_why": precision_why,
                    "latency": s.latency, "keep_checkpoint": s.keep_checkpoint,
                    "plugins": [str(Path(p).resolve()) for p in s.plugins], "peftbench_version": __version__,
                }
                if error is not None:  # recorded as a failed run without starting it
                    spec["plan_error"] = str(error)
                    spec["plan_error_type"] = error.error_type
                spec["run_id"] = run_id(spec)
                if spec["run_id"] not in seen:
                    seen.add(spec["run_id"])
                    specs.append(spec)
    return Plan(specs, solutions, warnings)


def plan_all(settings: list) -> Plan:
    """Several sweeps (e.g. the entries of a sweep file) as one plan; a run planned twice runs once."""
    plans = [plan(s) for s in settings]
    specs, seen = [], set()
    for p in plans:
        for spec in p.specs:
            if spec["run_id"] not in seen:
                seen.add(spec["run_id"])
                specs.append(spec)
    return Plan(specs, [sol for p in plans for sol in p.solutions],
                list(dict.fromkeys(w for p in plans for w in p.warnings)))


# -- execution ---------------------------------------------------------------------------
def check_output_dir(out: Path) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PeftbenchError(f"--out {out} is a file; give a folder")
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


def _failure_record(spec, status, error, started, attempt):
    return {
        "schema": 1, "run_id": spec["run_id"], "attempt": attempt, "status": status,
        "spec": spec, "error_type": status, "error": error,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": time.time() - started,
    }


def _own_record(out, spec, attempt) -> dict | None:
    """The run's record if this attempt wrote it (not an older one, not a corrupt file)."""
    try:
        rec = read_record(record_path(out, spec["run_id"]))
    except ValueError:
        return None
    return rec if rec is not None and rec.get("attempt") == attempt else None


def execute_one(spec: dict, out: Path, timeout: float | None, progress: bool) -> dict:
    """Run one spec in its own process and return its record (written by the child, or
    here when the child died, hung or was interrupted)."""
    attempt = uuid.uuid4().hex[:12]
    started = time.time()
    if spec.get("plan_error"):  # a plugin crashed while the sweep was planned: nothing to start
        rec = _failure_record(spec, "failed", spec["plan_error"], started, attempt)
        rec["error_type"] = spec.get("plan_error_type")
        write_atomic(record_path(out, spec["run_id"]), rec)
        return rec
    spec_file = records_dir(out) / f".{spec['run_id']}.spec"
    oom_kills_before = oom_kill_count()
    proc = None
    timed_out = False
    try:  # from the moment the spec exists, a Ctrl-C leaves a cancelled record and no spec file
        write_atomic(spec_file, {**spec, "attempt": attempt})
        proc = worker.start(spec_file, out, progress)
        proc.join(timeout)
        if proc.exitcode is None:  # still running: hung
            proc.kill()
            proc.join()
            timed_out = True
    except KeyboardInterrupt:
        if proc is not None and proc.is_alive():
            proc.join(10)  # the run got the same SIGINT from the terminal
        if _own_record(out, spec, attempt) is None:  # keep a record the run finished itself
            rec = _failure_record(spec, "cancelled", "interrupted (Ctrl-C)", started, attempt)
            write_atomic(record_path(out, spec["run_id"]), rec)
        raise
    finally:
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join()
        spec_file.unlink(missing_ok=True)
    rec = _own_record(out, spec, attempt)
    if rec is None and proc.exitcode == worker.EXIT_INTERRUPTED:
        # the run was interrupted by a SIGINT this process did not get (e.g. `kill -INT <run pid>`):
        # the interrupt still ends the sweep
        write_atomic(record_path(out, spec["run_id"]),
                     _failure_record(spec, "cancelled", "interrupted (Ctrl-C)", started, attempt))
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
        rec = _failure_record(spec, status, error, started, attempt)
        write_atomic(record_path(out, spec["run_id"]), rec)
    return rec


@dataclass
class SweepResult:
    records: list
    skipped_ok: int = 0
    skipped_failed: int = 0
    replaced: int = 0  # ok records rerun (--force, --rerun-stale); the old ones are in records/superseded/
    ran: int = 0


def run_sweep(specs, out: Path, *, rerun_failed=False, force=False, rerun_stale=False, timeout=None, progress=True,
              on_record=None, on_start=None, warn=None) -> SweepResult:
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
    for i, spec in enumerate(todo, 1):
        rec = execute_one(spec, out, timeout, progress)
        result.ran += 1
        result.records.append(rec)
        if on_record:
            on_record(rec, i, len(todo))
    return result
