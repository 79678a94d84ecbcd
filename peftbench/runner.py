"""One run: load data and model, apply the method, train, evaluate, measure, record.

This executes inside the run's own child process (see sweep.py); it writes the run's
record itself, atomically, with status ok / failed / oom / diverged.
"""

from __future__ import annotations

import copy
import contextlib
import datetime as dt
import os
import platform
import random
import subprocess
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .errors import PeftbenchError, PluginFailure, first_line
from .records import record_path, write_atomic
from .train import Diverged

DETERMINISM = {"torch_deterministic_algorithms": "warn_only", "cudnn_benchmark": False}


CUBLAS_WORKSPACE = ":4096:8"  # what deterministic cuBLAS needs (set before CUDA starts)


def seed_everything(seed: int) -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PeftbenchError("--device cuda but torch sees no CUDA device; use --device auto or cpu")
    return device


def git_commit() -> str | None:
    """The checkout's commit, with -dirty where tracked files are modified (None outside git).
    ``--no-optional-locks``: ``git status`` would otherwise take the index lock to refresh the index,
    and one killed at its timeout (a loaded machine, several runs at once) left the lock behind."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=30,
        ).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str, precision: str = "fp32", guard=contextlib.nullcontext) -> dict:
    from .precision import cpu_identity
    from .provenance import host_code_hash, library_versions

    env = {
        "peftbench": __version__,
        "git_commit": git_commit(),
        "host_code": host_code_hash(),
        **library_versions(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        **cpu_identity(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        # the CPUs this process may run on (taskset, cgroups, a scheduler's slot), not the machine's count
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "pid": os.getpid(),
        "loadavg": _loadavg(),  # 1, 5, 15 minutes: what else ran on the machine (a --jobs sweep's other runs too)
    }
    if torch.device(device).type == "cuda":  # "cuda", or one rank's "cuda:N"
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    with guard():  # not while another job times latency (--jobs): the readings would disturb it
        env["matmul_gflops"] = matmul_gflops(device)
        if precision != "fp32":  # the run's precision: the first of the two readings its MFU divides by
            env[f"matmul_gflops_{precision}"] = matmul_gflops(device, precision)
    return env


def _loadavg() -> list | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on this platform
        return None


def matmul_gflops(device: str, precision: str = "fp32", n: int | None = None, seconds: float = 0.1) -> float:
    """Matmul throughput right now (fp32 by default): how fast, and how loaded, this machine was.
    CPU: n = 1024, each product waited for. CUDA: n = 4096 (a 1024 product takes microseconds there,
    less than a synchronisation), 10 products queued between synchronisations."""
    from .precision import DTYPES

    cuda = torch.device(device).type == "cuda"
    n = n or (4096 if cuda else 1024)
    burst = 10 if cuda else 1
    with torch.random.fork_rng(devices=[torch.device(device)] if cuda else []):  # the run's random state untouched
        a = torch.randn(n, n, device=device, dtype=DTYPES[precision])

    def run():
        for _ in range(burst):
            out = a @ a
        if cuda:
            torch.cuda.synchronize(device)
        else:
            out.sum().item()

    run()  # warm-up
    reps, start = 0, time.perf_counter()
    # at least 3 products on a slow or busy machine, unless one takes over a second (bf16 emulated on a CPU)
    while time.perf_counter() - start < seconds or (reps < 3 and time.perf_counter() - start < 1.0):
        run()
        reps += burst
    return round(2 * n**3 * reps / (time.perf_counter() - start) / 1e9, 1)


def _progress_bar(label: str, enabled: bool):
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=None, desc=label, unit="step", leave=False, dynamic_ncols=True)

    def update(step, total, loss, samples_per_s):
        if bar.total != total:
            bar.total = total
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_s:.0f}" if samples_per_s else "-")

    return update, bar.close


# a run's timed phases, in order ("setup": its plugins, the device and the environment's readings)
PHASES = ("setup", "data", "model", "train", "eval", "checkpoint", "merge", "latency")


def _run(spec: dict, out: Path, progress: bool, phases: dict | None = None) -> dict:
    from . import data as datamod
    from .data import fixed_length_batch
    from .measure import checkpoint_bytes
    from .method import apply_method
    from .models import load_model, load_tokenizer, model_revision, model_source, planned_revision
    from .plugins import get_method, get_task, load_plugins, plugin_origin
    from .tasks import load_task_data
    from .train import EVAL_BATCH, TrainConfig, predict, train

    clock = [time.perf_counter()]  # wall time per phase, for the harness-overhead benchmark
    phases = phases if phases is not None else {}  # the caller's: a failed run's too
    load_plugins(spec.get("plugins", ()))
    method = get_method(spec["method"])
    task = get_task(spec["task"])
    device = resolve_device(spec["device"])
    distributed = spec.get("nproc", 1) > 1
    if distributed:  # one rank of a torchrun launch (peftbench/ddp.py)
        from . import ddp

        device = ddp.init(device)
    precision = spec.get("precision", "fp32")
    lock = None
    if (spec.get("placement") or {}).get("lock"):  # other jobs share the machine: latency is timed alone
        from .executors.lock import MachineLock

        lock = MachineLock(spec["placement"]["lock"])
    side = lock.step if lock else contextlib.nullcontext  # around side measurements: not during others' latency
    result: dict = {"env": environment(device, precision, side),
                    "plugins": {"method": plugin_origin(method.plugin), "task": plugin_origin(task.plugin)}}

    result["phases_s"] = phases
    phases["setup"] = _lap(clock)

    # data
    t0 = time.perf_counter()
    search = spec.get("role") == "search"  # a learning-rate search run: scored on held-out training data
    taskdata = load_task_data(task, spec.get("data_dir"), spec.get("eval_split"), train_only=search)
    if spec.get("data_sha") and taskdata.fingerprint != spec["data_sha"]:
        raise PeftbenchError(f"task {task.name}: its data files changed since the sweep was planned "
                             f"({spec['data_sha']} -> {taskdata.fingerprint}); run the command again")
    tokenizer = load_tokenizer(spec["model"], planned_revision(spec))
    key = {
        "task": task.name, "version": task.version, "task_code": spec.get("task_code"), "data": taskdata.fingerprint,
        "tokenizer": datamod.tokenizer_fingerprint(tokenizer), "max_len": spec["max_seq_len"],
    }
    generation = task.kind == "generation"
    if generation:
        from .generation import run as gen

        train_ds, evaluation, collate = gen.prepare(task, taskdata, tokenizer, spec, key)
        eval_ds = train_ds  # tokenised examples for the merge check and activation count
    else:
        train_ds = datamod.tokenize(task, taskdata.train, tokenizer, spec["max_seq_len"], {**key, "split": "train"})
        if not search:
            eval_ds = evaluation = datamod.tokenize(task, taskdata.eval, tokenizer, spec["max_seq_len"],
                                                    {**key, "split": "eval"})
        collate = datamod.Collator(tokenizer.pad_token_id, task.is_regression)
    if search:  # hold out the validation split; the training subset comes from the rest
        labels = None if generation or task.is_regression else taskdata.train["label"].to_numpy()
        groups = taskdata.train["source"].to_numpy() if generation else None
        val_idx, pool, stratified = datamod.validation_split(
            len(train_ds), spec["validation"]["samples"], spec["validation"]["seed"], labels, groups)
        eval_ds = evaluation = train_ds.select(val_idx)
        train_ds = train_ds.select(pool)
        result["validation"] = {**spec["validation"], "stratified": stratified, "examples": len(val_idx),
                                **({"grouped_by": "source"} if generation else {})}
    n_train_total = len(train_ds)
    if spec.get("train_samples") and spec["train_samples"] < len(train_ds):
        train_ds = train_ds.select(datamod.subset_indices(
            len(train_ds), spec["train_samples"], spec.get("train_subset", "random"), spec["data_seed"]))
    result["data"] = {
        "source": taskdata.source, "fingerprint": taskdata.fingerprint, "train_examples": len(train_ds),
        "train_examples_available": n_train_total, "eval_examples": len(evaluation),
        "eval_split": spec.get("eval_split"), "prep_time_s": time.perf_counter() - t0,
    }
    result["model"] = {"name": spec["model"], "revision": spec.get("model_revision"), "source": model_source(spec["model"])}
    planned = spec.get("model_revision") or ""
    if planned.startswith("local:") and (here := model_revision(spec["model"])) != planned:
        # the folder's files here differ from where the run was planned (a record rerun elsewhere: its
        # config.json names the transformers version that wrote it, too): the record says which it trained
        result["model"]["revision_at_run"] = here
    if not generation:  # scored before training: a metric plugin that fails, fails here, not after training
        gold = np.asarray(evaluation["labels"], dtype=np.float32 if task.is_regression else np.int64)
        trivial = trivial_baseline(task, train_ds, gold)
    phases["data"] = _lap(clock)

    # model + method
    seed_everything(spec["seed"])
    model = load_model(spec["model"], task, tokenizer, device, planned_revision(spec))
    result["model"]["attn_implementation"] = getattr(model.config, "_attn_implementation", None)  # sdpa/eager
    result["model"]["pad_is_eos"] = tokenizer.pad_token_id == tokenizer.eos_token_id  # a tokenizer without pad
    model, counts = apply_method(method, model, spec["knob_value"], spec["options"])
    model.to(device)
    result["params"] = {
        "method": counts.method, "head": counts.head, "total": counts.total, "base": counts.base,
        "method_pct": counts.pct, "where": list(counts.where),
    }
    phases["model"] = _lap(clock)

    # train
    cfg = TrainConfig(
        lr=spec["lr"], epochs=spec["epochs"], max_steps=spec["max_steps"], batch_size=spec["batch_size"],
        warmup_ratio=spec["warmup_ratio"], weight_decay=spec["weight_decay"],
        max_grad_norm=spec["max_grad_norm"], seed=spec["seed"], precision=precision,
    )
    update, close = _progress_bar(f"{spec['label']} {task.name} s{spec['seed']}", progress)
    waited_before_training = lock.waited_s if lock else None
    try:
        with lock.training(spec["run_id"]) if lock else contextlib.nullcontext():  # who trained alongside
            stats = train(model, train_ds, collate, cfg, device, progress=update,
                          on_start=lambda total: method.on_train_start(model, total),
                          guard=lock.step if lock else None, distributed=distributed, static_graph=method.static_graph)
    except RuntimeError as e:
        if distributed and method.static_graph and "static_graph" in str(e):  # DDP: the method's graph changed
            raise PluginFailure("method", method.name, method.plugin, "training under --nproc (DDP with a static "
                                "graph; a method whose used parameters change between steps sets static_graph = "
                                "False)", e) from e
        raise
    finally:
        close()
    waited_in_training = lock.waited_s - waited_before_training if lock else None  # not the side measurements' waits
    per_rank = spec["batch_size"] // ddp.world() if distributed else spec["batch_size"]
    if distributed:  # counters summed over ranks, the memory of the rank with the largest peak; every rank's parameters
        result["ddp"] = {"world_size": ddp.world(), "backend": "nccl" if str(device).startswith("cuda") else "gloo",
                         "global_batch": spec["batch_size"], "per_rank_batch": per_rank,
                         **ddp.reduce_stats(stats), "trainable_checksum_per_rank": ddp.checksums(model)}
        if ddp.rank() != 0:
            return result  # rank 0 alone evaluates, checkpoints, times latency and writes the record
    with side():  # on one rank's batch: what its training step keeps
        activations = _activation_memory(model, train_ds, collate, per_rank, device, precision)
    flops = train_flops(model, method, stats, result["env"], precision, train_ds, collate, device,  # as trained
                        ddp.world() if distributed else 1, guard=lock.step if lock else None)
    method.finalize(model)
    step = max(1, len(stats.losses) // 200)
    result["train"] = {
        "steps": stats.steps, "epochs_done": stats.epochs_done, "train_time_s": stats.train_time_s,
        "timed_steps": stats.timed_steps, "timed_samples": stats.timed_samples, "samples_per_s": stats.samples_per_s,
        "tokens_per_s": stats.tokens_per_s,
        # over the timed steps (the last ones: warm-up excluded, as from samples_per_s)
        "median_step_s": float(np.median(stats.step_times[-stats.timed_steps:])) if stats.timed_steps else None,
        "loss_first": stats.losses[0] if stats.losses else None,
        "loss_last10": float(np.mean(stats.losses[-10:])) if stats.losses else None, "loss_curve_every": step,
        "loss_curve": stats.losses[::step],
        "padded_tokens_per_s": stats.timed_padded_tokens / stats.timed_time_s if stats.timed_time_s else None,
        "loadavg_after": _loadavg(),  # beside env.loadavg (its start): the machine's load over training
        **stats.optimization,
    }
    if stats.timed_target_tokens:  # a causal LM: the tokens it learns and the prompt tokens it reads
        result["train"]["target_tokens_per_s"] = stats.timed_target_tokens / stats.timed_time_s
        result["train"]["prompt_tokens_per_s"] = (stats.timed_tokens - stats.timed_target_tokens) / stats.timed_time_s
    result["train"].update(flops)
    result["memory"] = {**stats.memory, **activations}
    result["precision"] = {"train": precision, "eval": precision, "latency": precision,
                           "requested": spec.get("precision_requested", precision),
                           "why": spec.get("precision_why", "asked for"),
                           "note": "mixed precision: fp32 weights and optimizer state, autocast matmuls"
                           if precision != "fp32" else "fp32 throughout"}
    phases["train"] = _lap(clock)

    # evaluate (with other jobs on the machine, batch by batch: none runs while another job times latency)
    t0 = time.perf_counter()
    guard = lock.step if lock else None
    waited_before_eval = lock.waited_s if lock else None
    if search and generation:  # generating for every candidate costs more than training: the loss
        result["eval_batch_size"] = gen.VAL_LOSS_BATCH  # padded batches: a batch size can move the last digits
        result["metrics"] = {"val_loss": gen.validation_loss(model, eval_ds, collate, device, precision, guard=guard)}
        result["metric_directions"] = {"val_loss": "lower"}
    elif generation:
        result.update(gen.evaluate(task, model, tokenizer, evaluation, spec, out, device, precision, guard=guard))
        result["eval_batch_size"] = result["generation"]["decoding"]["batch_size"]
    else:
        result["eval_batch_size"] = EVAL_BATCH
        pred, gold = predict(model, eval_ds, collate, device, precision=precision, guard=guard)
        result["metrics"] = task.score(pred, gold)
        result["trivial"] = trivial
    if "metric_directions" not in result:
        result["metric_directions"] = {m: d for m, d in task.directions().items() if m in result["metrics"]}
    if search:
        name = task.metric if task.metric in result["metrics"] else next(iter(result["metrics"]))
        result["selection_metric"] = {"name": name, "direction": result["metric_directions"][name],
                                      "on": f"{len(eval_ds)} held-out training examples"}
    result["eval_time_s"] = time.perf_counter() - t0
    if lock:
        result["eval_waited_for_latency_s"] = lock.waited_s - waited_before_eval  # part of eval_time_s
    phases["eval"] = _lap(clock)

    # checkpoint: what restores the tuned model (method + head; everything for full)
    ckpt_dir = Path(out) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / f"{spec['run_id']}.safetensors"
    result["checkpoint"] = {"bytes": checkpoint_bytes(method.trainable_state(model), ckpt), "path": str(ckpt)}
    if not spec.get("keep_checkpoint", True):
        ckpt.unlink()
        result["checkpoint"]["path"] = None
    phases["checkpoint"] = _lap(clock)

    # merge: the inference model of a mergeable method must give the tuned model's outputs
    merged = None
    if method.mergeable and not search:
        probe = fixed_length_batch(eval_ds, tokenizer.pad_token_id, min(8, len(eval_ds)), spec["max_seq_len"], device)
        with side():
            merged, result["merge"] = check_merge(method, model, probe, precision)
    phases["merge"] = _lap(clock)

    # latency: base, unmerged, merged, timed interleaved in one session
    lat = spec.get("latency")
    exclusive = lock.exclusive() if lock and lat else contextlib.nullcontext()
    with exclusive:
        _latency(result, method, model, merged, spec, task, tokenizer, eval_ds, evaluation, device, precision, lat,
                 generation)
    if lock:
        result["train"]["waited_for_latency_s"] = waited_in_training
        result["train"]["alongside"] = lock.alongside  # the runs that trained at the same time on this machine
    phases["latency"] = _lap(clock)
    return result


def _latency(result, method, model, merged, spec, task, tokenizer, eval_ds, evaluation, device, precision, lat,
             generation):
    from .models import load_model, planned_revision

    if lat and generation:
        from .generation import run as gen

        base = load_model(spec["model"], task, tokenizer, device, planned_revision(spec))
        models = {"base": base, "unmerged": model}
        if merged is not None:
            models["merged"] = merged
        result["latency"] = gen.latency(models, tokenizer, task, evaluation, spec, device, precision)
    elif lat:
        result["latency"] = measure_latency(method, model, merged, spec, task, tokenizer, eval_ds, device, lat)


def trivial_baseline(task, train_ds, gold) -> dict:
    """What "learned nothing" scores on the same evaluation examples: the majority class of the
    run's training examples (classification) or their mean target (regression), predicted for
    every example. Reports show it as each task's baseline row."""
    labels = np.asarray(train_ds["labels"])
    if task.is_regression:
        value, kind = float(labels.mean()), "the mean training target for every example"
    else:
        classes, counts = np.unique(labels, return_counts=True)
        value, kind = int(classes[np.argmax(counts)]), "the majority class of the training examples for every example"
    return {"predicts": value, "kind": kind, "metrics": task.score(np.full(len(gold), value), gold)}


def _lap(clock: list) -> float:
    """Seconds since the last lap."""
    now = time.perf_counter()
    elapsed, clock[0] = now - clock[0], now
    return elapsed


MERGE_RTOL = {"fp32": 1e-3}  # of the largest logit; correct fp32 merges differ by ~1e-6


class MergeMismatch(RuntimeError):
    """Merging changed the model's outputs beyond tolerance."""


def check_merge(method, model, batch, precision="fp32"):
    """(merged model, {"max_abs_diff", "tolerance", ...}). Enforced in fp32, whatever the run's
    precision (merging is exact math; bf16's rounding of the merged weights would hide a wrong
    merge of a few percent): raises MergeMismatch, failing the run, when the merged outputs differ
    from the unmerged ones by more than the tolerance. Under bf16/fp16 the difference at the run's
    precision is recorded too (what inference at that precision sees)."""
    from .train import autocast

    model.eval()
    merged = method.merge(copy.deepcopy(model)).eval()
    device = next(model.parameters()).device
    diffs = {}
    for prec in dict.fromkeys(("fp32", precision)):
        with torch.inference_mode(), autocast(device, prec):
            before = model(**batch).logits.float()
            after = merged(**batch).logits.float()
        diffs[prec] = (float((after - before).abs().max()), float(before.abs().max()))
    diff, largest = diffs["fp32"]
    tolerance = MERGE_RTOL["fp32"] * max(1.0, largest)
    if not diff <= tolerance:
        raise MergeMismatch(f"merging {method.name} changed the outputs: max |merged - unmerged| logit {diff:.3g} "
                            f"> tolerance {tolerance:.3g} (fp32); the method's merge() is wrong")
    out = {"max_abs_diff": diff, "tolerance": tolerance, "checked_in": "fp32"}
    if precision != "fp32":
        out[f"max_abs_diff_{precision}"] = diffs[precision][0]
    return merged, out


def train_flops(model, method, stats, env, precision, train_ds, collate, device, world: int = 1, guard=None) -> dict:
    """Achieved training FLOP/s and its fraction of the matmul peak at the run's precision, the higher of
    the readings at run start and right after training (MFU; a DDP run's peak is its devices' together).
    FLOPs per processed token: counted on a training step as autograd runs it
    (``measure.counted_train_flops``) on one training example tiled to the mean padded length of the
    timed batches (FLOPs depend on shapes, not on token values; padding costs the same), in batches
    of one and two rows, extrapolated to the mean rows per step of each device (what runs once per
    forward, as a prefix reparametrisation, is charged once per batch, not per example). Attention is
    charged at the mean length: where lengths vary, a little below its mean cost. The analytic count
    is kept beside it, and used, named in the record, if counting fails."""
    from .measure import counted_train_flops, train_flops_per_token
    from .train import autocast, to_device

    if not stats.timed_padded_tokens or not stats.timed_time_s:
        return {}
    seq_len = stats.timed_padded_tokens / stats.timed_samples  # mean padded length of a training example
    analytic = train_flops_per_token(model, seq_len, method.extra_sequence_length(model))
    length = max(1, round(seq_len))
    rows = stats.timed_samples / max(1, stats.timed_steps) / world  # mean examples per step and device
    out = {"flops_per_token_analytic": analytic, "flops_seq_len": length, "flops_rows": round(rows, 2)}
    try:
        one = collate([train_ds[0]])
        n = one["input_ids"].shape[1]
        counts = []
        for k in (1, 2):
            batch = {key: v.repeat(k, -(-length // n))[:, :length] if v.dim() == 2 and v.shape[1] == n
                     else v.repeat(k, *[1] * (v.dim() - 1)) for key, v in one.items()}
            with autocast(device, precision):
                counts.append(counted_train_flops(model, to_device(batch, device)))
        per_row = counts[1] - counts[0]  # what one more example costs; counts[0] - per_row: once per batch
        per_token = (counts[0] + (rows - 1) * per_row) / (rows * length)
        out["flops_count"] = (f"counted: torch FlopCounterMode on training steps (forward and the trainable "
                              f"parameters' gradients) of 1 and 2 x {length} tokens, extrapolated to {rows:.1f} rows")
    except Exception as e:  # a side measurement: the run keeps its results, the record says which count
        per_token = analytic
        out["flops_count"] = f"analytic (counting failed: {type(e).__name__}: {first_line(e)})"
    achieved = per_token * stats.timed_padded_tokens / stats.timed_time_s / 1e9
    # The peak: the higher of two short readings, at the run's start and right after training (one reading
    # taken while something else held the core, as another run starting, read low: MFU above 100%)
    start = env.get(f"matmul_gflops_{precision}", env.get("matmul_gflops"))
    try:  # a side measurement: its failure leaves the start's reading
        with guard() if guard else contextlib.nullcontext():  # not during another run's latency timing
            after = matmul_gflops(device, precision)
    except Exception as e:
        after, out["peak_after_training_error"] = None, f"{type(e).__name__}: {first_line(e)}"
    peak = max(start or 0, after or 0)
    return {"flops_per_token": per_token, **out, "achieved_gflops": achieved, "peak_gflops_start": start,
            "peak_gflops_after_training": after, "mfu_peak_gflops": peak,
            "mfu": achieved / (peak * world) if peak else None}


def _activation_memory(model, train_ds, collate, batch_size, device, precision="fp32") -> dict:
    """What autograd saves for one training step on the first ``batch_size`` training examples
    (file order), under the training autocast, on the model as trained (before finalize). A side
    measurement: if it fails, the run keeps its results and the record says why."""
    from .measure import saved_activation_bytes
    from .train import autocast, to_device

    first = collate([train_ds[i] for i in range(min(batch_size, len(train_ds)))])
    out = {"saved_activation_batch": list(first["input_ids"].shape)}
    try:
        with autocast(device, precision):
            out["saved_activation_bytes"] = saved_activation_bytes(model, to_device(first, device))
    except Exception as e:  # e.g. out of memory on a nearly full GPU
        out["saved_activation_bytes"] = None
        out["saved_activation_error"] = f"{type(e).__name__}: {first_line(e)}"
    return out


def measure_latency(method, model, merged, spec, task, tokenizer, eval_ds, device, lat) -> dict:
    """Base, unmerged and merged timed interleaved, each call under the run's precision."""
    from .data import fixed_length_batch
    from .measure import time_interleaved
    from .models import load_model, planned_revision
    from .train import autocast

    precision = spec.get("precision", "fp32")

    def call(m, batch):
        with autocast(device, precision):
            return m(**batch)

    seq_len = lat["seq_len"] or spec["max_seq_len"]
    sizes = {"b1": 1, "bN": lat["batch"]}
    batches = {k: fixed_length_batch(eval_ds, tokenizer.pad_token_id, n, seq_len, device) for k, n in sizes.items()}
    base = load_model(spec["model"], task, tokenizer, device, planned_revision(spec)).eval()
    model.eval()
    models = {"base": base, "unmerged": model}
    out = {"seq_len": seq_len, "batch_N": lat["batch"], "extra_seq_len": method.extra_sequence_length(model),
           "precision": precision}
    out["effective_seq_len"] = seq_len + out["extra_seq_len"]
    if merged is not None:
        out["merged_is_plain"] = [type(m) for m in merged.modules()] == [type(m) for m in base.modules()]
        if out["merged_is_plain"]:
            models["merged"] = merged
        else:  # a merge() that kept (some of) the method's modules: its latency is not a merged model's
            kinds = {type(m).__name__ for m in base.modules()}
            out["merged_not_timed"] = ("merge() left modules the base model has not: " + ", ".join(
                sorted({type(m).__name__ for m in merged.modules()} - kinds) or ["its module structure differs"]))
    timings = {}
    for size, batch in batches.items():  # one interleaved session per batch size
        candidates = {f"{name}_{size}": (lambda m=m, b=batch: call(m, b)) for name, m in models.items()}
        timings.update(time_interleaved(
            candidates, device, min_reps=lat["min_reps"], min_time_s=lat["min_time_s"], warmup=lat["warmup"]
        ))
    out["timings"] = timings
    for size in sizes:
        base_ms = timings[f"base_{size}"]["median_ms"]
        for name in models:
            if name != "base":
                out[f"ratio_{name}_{size}"] = timings[f"{name}_{size}"]["median_ms"] / base_ms
    return out


OOM_MESSAGES = ("can't allocate memory", "not enough memory", "out of memory")


def is_oom_error(e: BaseException) -> bool:
    """torch's CPU allocator raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate
    memory"), not MemoryError; other backends word it similarly."""
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in OOM_MESSAGES)


def execute(spec: dict, out: Path, progress: bool = True) -> dict:
    """Run one spec and write its record. Never raises for a failed run (except Ctrl-C)."""
    started = time.time()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)  # before anything starts cuBLAS
    record = {
        "schema": 1, "run_id": spec["run_id"], "attempt": spec.get("attempt"), "status": "failed",
        "spec": {k: v for k, v in spec.items() if k not in ("attempt", "placement")},
        "started_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
        "determinism": {**DETERMINISM, "seed": spec["seed"], "data_seed": spec["data_seed"],
                          "train_subset": spec.get("train_subset", "random"),
                          "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")},
    }
    from .plugins import run_plugins

    record["plugins"] = run_plugins(spec)  # named even if the run fails before it loads them itself
    error, phases = None, {}
    if spec.get("placement"):  # a local job's share of the machine (--jobs N): before anything runs
        from .executors.placement import apply

        record["placement"] = apply(spec["placement"])
    try:
        record.update(_run(spec, Path(out), progress, phases))
        record["status"] = "ok"
    except KeyboardInterrupt:
        raise
    except Diverged as e:
        record["status"], error = "diverged", e
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        record["status"], error = "oom", e
    except Exception as e:
        record["status"], error = ("oom" if is_oom_error(e) else "failed"), e
    if error is not None:
        record["error_type"] = getattr(error, "error_type", type(error).__name__)  # a plugin's: its exception
        record["error"] = first_line(error)
        # how far it got: the phases it finished (seconds each) and the one it failed in
        record["phases_s"] = phases
        record["failed_in"] = next((p for p in PHASES if p not in phases), "after latency")
        if not isinstance(error, PeftbenchError):
            tb = record_path(out, spec["run_id"]).with_suffix(".traceback.txt")
            write_atomic(tb, "".join(traceback.format_exception(error)), text=True)
            record["traceback_file"] = tb.name
    record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    record["duration_s"] = time.time() - started
    if spec.get("nproc", 1) > 1:
        from .ddp import rank

        if rank() != 0:  # the other ranks of a DDP run: rank 0 writes the record
            return record
    write_atomic(record_path(out, spec["run_id"]), record)
    return record
