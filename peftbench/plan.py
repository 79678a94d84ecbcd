"""Planning a sweep: methods x tasks x budgets x seeds expanded into run specs, everything
validated up front (bad input: one line, exit 2, before anything trains)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .budget import Budget, budget_params, parse_budgets, solve, split_top
from .errors import PeftbenchError, PluginFailure, closest
from .method import non_default_options, options_dict
from .records import run_id

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


def parse_train_samples(text: str) -> int | None:
    if str(text).lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise PeftbenchError(f"--train-samples {text!r}: give a positive integer or 'all'") from None


def latency_settings(measure: bool, batch, seq_len, min_time) -> dict | None:
    """The latency measurement a run makes (None: none), validated."""
    if not measure:
        return None
    ok = isinstance(batch, int) and batch >= 1 and (seq_len is None or (isinstance(seq_len, int) and seq_len >= 1))
    if not ok or not isinstance(min_time, (int, float)) or min_time < 0:
        raise PeftbenchError("--latency-batch/--latency-seq-len must be positive integers and --latency-min-time >= 0")
    return {"batch": batch, "seq_len": seq_len, "min_reps": 20, "min_time_s": float(min_time), "warmup": 3}


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
    batch_size: int = 32  # the global batch (split over --nproc processes)
    nproc: int = 1
    max_seq_len: int | None = None
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    device: str = "auto"
    precision: str = "auto"
    latency: dict | None = field(default_factory=lambda: {"batch": 32, "seq_len": None, "min_reps": 20, "min_time_s": 2.0, "warmup": 3})
    keep_checkpoint: bool = True
    plugins: tuple = ()
    # generation tasks only
    eval_split: str | None = None  # the task's default (E2E: test)
    eval_samples: int | None = None  # score only the first N inputs of the split
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    max_new_tokens: int | None = None  # the task's default
    meteor: bool = True  # False: leave METEOR (Java) out
    # learning rates searched on held-out training data (lrsearch.py)
    lr_search: bool = False  # every method, on its default grid
    lr_grid: tuple = ()  # "lora=1e-4,3e-4,1e-3" entries: these methods on these rates
    val_samples: int = 500
    search_seeds: str = "0"
    lr_extend: int = 0  # grow a grid by up to this many rates where its best rate is at an edge
    # not a setting of the runs: the executor's workers are other machines (remote slurm, a ray cluster)
    runs_elsewhere: bool = False


GENERATION_FLAGS = {"eval_split": None, "eval_samples": None, "num_beams": 1, "length_penalty": 1.0,
                    "no_repeat_ngram_size": 0, "max_new_tokens": None}


@dataclass
class Plan:
    specs: list  # runs to run now
    solutions: list  # budget solutions, for display
    warnings: list = field(default_factory=list)
    searches: list = field(default_factory=list)  # learning-rate search runs, to run first
    waiting: list = field(default_factory=list)  # lrsearch.Search: final runs waiting for their searched rate


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
    from .models import counter, is_causal_config, load_config, load_tokenizer, model_revision
    from .plugins import code_hash, get_methods, get_task, load_plugins
    from .precision import cpu_warning, resolve as resolve_precision
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
    if s.nproc < 1 or s.batch_size % s.nproc:
        raise PeftbenchError(f"--nproc {s.nproc}: give a positive number of processes that divides --batch-size "
                             f"{s.batch_size} (the global batch is split evenly over them)")
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
    if s.runs_elsewhere:  # auto would be resolved here, on the machine that plans, not on the workers
        for flag, value, given in (("--device", s.device, "cuda or cpu"),
                                   ("--precision", s.precision, "bf16, fp16 or fp32")):
            if value == "auto":
                raise PeftbenchError(f"{flag} auto is resolved on the machine that plans the sweep (this one), not on "
                                     f"the executor's workers; give {flag} {given} for the machines the runs run on")
        device = s.device  # checked where each run runs (no CUDA there: the run fails, saying so)
    else:
        device = resolve_device(s.device)
    precision, precision_why = resolve_precision(s.precision, device)

    kinds = {t.kind for t in tasks}
    generation = _generation_settings(s, kinds)

    # data (read fully: malformed files are reported with file and line now) and model
    task_data = []
    for task in tasks:
        try:
            task_data.append(load_task_data(task, s.data_dir, s.eval_split if task.kind == "generation" else None))
        except PluginFailure as e:  # the task's reader crashed: its runs are recorded failed
            task_data.append(e)
    config = load_config(s.model)
    load_tokenizer(s.model)
    revision = model_revision(s.model)
    if "generation" in kinds and not is_causal_config(config):
        gen_tasks = ", ".join(t.name for t in tasks if t.kind == "generation")
        raise PeftbenchError(f"--model {s.model} is an encoder ({config.model_type}); task {gen_tasks} generates text: "
                             "use a decoder, e.g. --model smollm2 (or gpt2, a LLaMA/Qwen/BLOOM checkpoint)")
    max_pos = getattr(config, "max_position_embeddings", None)
    lat_len = (s.latency or {}).get("seq_len")
    for flag, value in (("--max-seq-len", s.max_seq_len), ("--latency-seq-len", lat_len),
                        *(("the default max length of task " + t.name, t.max_seq_len) for t in tasks
                          if not s.max_seq_len)):
        if value and max_pos and value > max_pos:
            fix = "--latency-seq-len" if flag == "--latency-seq-len" else "--max-seq-len"
            raise PeftbenchError(f"{flag} = {value} exceeds the model's {max_pos} positions; give {fix} <= {max_pos}")

    # knobs: explicit --knob, else the budget(s), else each method's default; counted on the model
    # the task kind loads (a causal LM for generation, a classifier otherwise)
    budget_text = s.budget if s.budget is not None else (None if knobs.get("*") else DEFAULT_BUDGET)
    budgets: list[Budget] = [] if budget_text in (None, "none") else parse_budgets(budget_text)
    sized = {kind: _size(choices, knobs, budgets, counter(config, kind), reference_resolver(methods))
             for kind in sorted(kinds)}
    solutions = [sol for kind in sorted(kinds) for sol in sized[kind][1]]
    warnings = list(dict.fromkeys([*filter(None, [cpu_warning(precision, device)]),
                                   *(w for kind in sorted(kinds) for w in sized[kind][2]),
                                   *_epoch_caps(s, tasks, task_data)]))

    specs, seen = [], set()
    for task, data in zip(tasks, task_data):
        for z in sized[task.kind][0]:
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
                    "epochs": s.epochs, "max_steps": s.max_steps, "batch_size": s.batch_size, "nproc": s.nproc,
                    "max_seq_len": s.max_seq_len or task.max_seq_len, "warmup_ratio": s.warmup_ratio,
                    "weight_decay": s.weight_decay, "max_grad_norm": s.max_grad_norm, "device": device,
                    "precision": precision, "precision_requested": s.precision, "precision_why": precision_why,
                    "latency": s.latency, "keep_checkpoint": s.keep_checkpoint,
                    "plugins": [str(Path(p).resolve()) for p in s.plugins], "peftbench_version": __version__,
                }
                if task.kind == "generation":
                    spec.update(_generation_spec(task, generation, s.latency))
                if error is not None:  # recorded as a failed run without starting it
                    spec["plan_error"] = str(error)
                    spec["plan_error_type"] = error.error_type
                    if getattr(error, "traceback", None):  # written beside the record, as a failed run's is
                        spec["plan_error_traceback"] = error.traceback
                spec["run_id"] = run_id(spec)
                if spec["run_id"] not in seen:
                    seen.add(spec["run_id"])
                    specs.append(spec)
    searches, waiting = _lr_search(s, specs, {c.method.name: c.method for c in choices}, lrs)
    for task, data in zip(tasks, task_data):  # a split every search run would refuse: said once, now
        searched = next((x for x in searches if x["task"] == task.name), None)
        if searched and hasattr(data, "train"):
            from .data import validation_split

            generation = task.kind == "generation"  # as the runner splits: stratified, or by input
            labels = None if generation or task.is_regression else data.train["label"].to_numpy()
            try:
                validation_split(len(data.train), s.val_samples, searched["validation"]["seed"], labels,
                                 data.train["source"].to_numpy() if generation else None)
            except PeftbenchError as e:
                raise PeftbenchError(f"task {task.name}: {e}") from None
    searched = {w.template["run_id"] for w in waiting}  # a waiting final still has its default-rate spec's id
    return Plan([x for x in specs if x["run_id"] not in searched], solutions, warnings, searches, waiting)


def _lr_search(s: SweepSettings, specs, methods: dict, lrs: dict):
    from . import lrsearch

    if not (s.lr_search or s.lr_grid):
        if s.lr_extend:
            raise PeftbenchError(f"--lr-extend {s.lr_extend} grows a learning-rate search's grid; add --lr-search "
                                 "or --lr-grid, or drop --lr-extend")
        return [], []
    grids = lrsearch.parse_grid(s.lr_grid, methods)
    both = sorted(set(grids) & set(lrs)) or (sorted(grids) if "*" in lrs else [])
    if both or (s.lr_search and lrs):
        raise PeftbenchError(f"--lr and a learning-rate search both set the rate of {', '.join(both or sorted(lrs))}; "
                             "give one of them")
    seeds = parse_int_list(s.search_seeds, "--search-seeds")
    if not isinstance(s.val_samples, int) or s.val_samples < 1:
        raise PeftbenchError(f"--val-samples must be a positive integer, got {s.val_samples}")
    if isinstance(s.lr_extend, bool) or not isinstance(s.lr_extend, int) or s.lr_extend < 0:
        raise PeftbenchError(f"--lr-extend must be a non-negative integer, got {s.lr_extend}")
    grids = {n: g for n, m in methods.items() if (g := lrsearch.grid_for(m, grids, s.lr_search))}
    return lrsearch.expand([x for x in specs if not x.get("plan_error")], grids, s.val_samples, seeds, s.lr_extend)


def _epoch_caps(s: SweepSettings, tasks, task_data) -> list[str]:
    """--max-steps beyond what --epochs gives a task's training set: the runs stop at the epochs' end (say so
    now, not only in each record's step count)."""
    out = []
    for task, data in zip(tasks, task_data):
        if not s.max_steps or not hasattr(data, "train"):
            continue
        from .train import TrainConfig, total_steps

        n = min(len(data.train), s.train_samples) if s.train_samples else len(data.train)
        # as the trainer counts them (a DDP run drops the last partial batch)
        steps = total_steps(n, TrainConfig(lr=0.0, epochs=s.epochs, batch_size=s.batch_size),
                            drop_last=s.nproc > 1 and n >= s.batch_size)
        if s.max_steps > steps:
            out.append(f"--max-steps {s.max_steps}: --epochs {s.epochs:g} of task {task.name}'s {n:,} training "
                       f"examples at batch {s.batch_size} end after {steps} step(s), where its runs stop; raise "
                       "--epochs to train that many steps")
    return out


def _size(choices, knobs, budgets, count, resolve_ref):
    """(sizings, budget solutions to show, warnings) of the method choices on one model."""
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
    return sizings, solutions, warnings


def _generation_settings(s: SweepSettings, kinds) -> dict:
    """The decoding and scoring settings of generation tasks, validated."""
    given = {k: getattr(s, k) for k, default in GENERATION_FLAGS.items() if getattr(s, k) != default}
    if "generation" not in kinds:
        if given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise PeftbenchError(f"{flag} applies to generation tasks (e.g. e2e) only; --tasks has none")
        return {}
    for flag, value, low in (("--num-beams", s.num_beams, 1), ("--eval-samples", s.eval_samples, 1),
                             ("--max-new-tokens", s.max_new_tokens, 1), ("--no-repeat-ngram-size", s.no_repeat_ngram_size, 0)):
        if value is not None and (not isinstance(value, int) or value < low):
            raise PeftbenchError(f"{flag} must be an integer >= {low}, got {value}")
    if not (s.length_penalty == s.length_penalty and math.isfinite(s.length_penalty)):
        raise PeftbenchError(f"--length-penalty must be a finite number, got {s.length_penalty}")
    if s.meteor:
        from .generation.metrics import meteor_available

        why = meteor_available()
        if why:
            raise PeftbenchError(why)
    return {"num_beams": s.num_beams, "length_penalty": s.length_penalty,
            "no_repeat_ngram_size": s.no_repeat_ngram_size, "max_new_tokens": s.max_new_tokens,
            "eval_split": s.eval_split, "eval_samples": s.eval_samples, "meteor": s.meteor}


def _generation_spec(task, g: dict, latency) -> dict:
    decoding = {"num_beams": g["num_beams"], "length_penalty": g["length_penalty"],
                "no_repeat_ngram_size": g["no_repeat_ngram_size"],
                "max_new_tokens": g["max_new_tokens"] or task.max_new_tokens}
    return {
        "eval_split": task.split(g["eval_split"]), "eval_samples": g["eval_samples"], "generation": decoding,
        "metrics": [m for m in task.metrics if g["meteor"] or m != "meteor"],
        # generating is slow: fewer timed repetitions, 8 new tokens per timed call
        "latency": {**latency, "new_tokens": 8, "gen_min_reps": 5} if latency else None,
    }


def plan_all(settings: list) -> Plan:
    """Several sweeps (e.g. the entries of a sweep file) as one plan; a run planned twice runs once."""
    plans = [plan(s) for s in settings]
    specs, seen = [], set()
    for p in plans:
        for spec in p.specs:
            if spec["run_id"] not in seen:
                seen.add(spec["run_id"])
                specs.append(spec)
    searches = list({s["run_id"]: s for p in plans for s in p.searches}.values())
    solutions = {}  # the same solution from several entries (e.g. one per task of a sweep file) is shown once
    for text, sol in (x for p in plans for x in p.solutions):
        solutions.setdefault((text, sol.method, sol.knob, sol.knob_value, sol.params, sol.budget, sol.fixed), (text, sol))
    return Plan(specs, list(solutions.values()),
                list(dict.fromkeys(w for p in plans for w in p.warnings)), searches,
                list({(w.template["run_id"], *map(tuple, (w.grid, w.seeds)), w.val_samples, w.extend): w
                      for p in plans for w in p.waiting}.values()))


