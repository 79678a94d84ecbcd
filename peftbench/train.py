"""The training loop and evaluation: plain torch, readable in one sitting.

AdamW over the trainable parameters only, linear warmup then linear decay, gradient
clipping, autocast at the run's precision (see precision.py; fp16 with a gradient scaler).
Throughput is timed over the training steps after a few warm-up steps; evaluation is timed
separately.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from .measure import PeakMemory, sync


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    lr: float
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    precision: str = "fp32"
    timing_warmup_steps: int = 3


@dataclass
class TrainStats:
    steps: int = 0
    epochs_done: float = 0.0
    losses: list = field(default_factory=list)
    train_time_s: float = 0.0  # all steps
    timed_steps: int = 0
    timed_time_s: float = 0.0  # steps after the timing warm-up
    timed_samples: int = 0
    timed_tokens: int = 0  # non-padding tokens
    timed_padded_tokens: int = 0  # what the model computed on, padding included
    timed_target_tokens: int = 0  # tokens with a loss (a causal LM's targets; 0 for classification)
    step_times: list = field(default_factory=list)
    memory: dict = field(default_factory=dict)
    optimization: dict = field(default_factory=dict)  # what the record says of the optimizer and schedule

    @property
    def samples_per_s(self):
        return self.timed_samples / self.timed_time_s if self.timed_time_s else None

    @property
    def tokens_per_s(self):
        return self.timed_tokens / self.timed_time_s if self.timed_time_s else None


def autocast(device, precision: str = "fp32"):
    from .precision import autocast as _autocast

    return _autocast(device, precision)


def total_steps(n_examples: int, cfg: TrainConfig, drop_last: bool = False) -> int:
    per_epoch = max(1, n_examples // cfg.batch_size) if drop_last else math.ceil(n_examples / cfg.batch_size)
    steps = max(1, math.ceil(per_epoch * cfg.epochs))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def linear_schedule(optimizer, warmup: int, total: int):
    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train(model, dataset, collate, cfg: TrainConfig, device, progress=None, on_start=None, guard=None,
          distributed=False, static_graph=True) -> TrainStats:
    """Train in place. ``progress(step, total, loss, samples_per_s)`` is called after each step;
    ``on_start(total_steps)`` once before training, and may return ``after_step(step)``, called
    after each optimizer step, before the gradients are cleared. ``guard()`` (a context manager)
    wraps each step, outside its timing (parallel jobs: wait while another job times latency).
    ``distributed``: this process is one rank of a DDP run: it trains a DistributedDataParallel
    wrapper on its share of every global batch (the same data order on every rank); ``static_graph``:
    the same parameters take part in every step (``Method.static_graph``)."""
    import contextlib

    guard = guard or contextlib.nullcontext
    device = torch.device(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # nothing to train (the untuned base model of a generation task)
        return TrainStats(memory=static_memory(model, None))
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # DDP: whole global batches only, so that every rank gets an equal, non-empty share (a last partial
    # batch of fewer rows than ranks left one rank nothing; unequal shares weighted examples unequally)
    drop_last = distributed and len(dataset) >= cfg.batch_size
    steps = total_steps(len(dataset), cfg, drop_last)
    warmup = math.ceil(cfg.warmup_ratio * steps)
    scheduler = linear_schedule(optimizer, warmup, steps)
    generator = torch.Generator().manual_seed(cfg.seed)  # the data order
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=generator, collate_fn=collate,
                        drop_last=drop_last)
    warm = min(cfg.timing_warmup_steps, steps - 1)
    stats = TrainStats()
    stats.optimization = {
        "optimizer": {"name": "AdamW", **{k: optimizer.defaults[k] for k in ("betas", "eps", "weight_decay")},
                      "decayed": "every trainable parameter (biases, norms and the head too)"},
        "schedule": (f"linear warmup over {warmup} step(s) from lr/{warmup}, " if warmup else "")
        + f"then linear decay to 0 at step {steps}",
        "data_order_seed": cfg.seed,  # the shuffling of batches: the run's seed
        "clipping": f"global L2 norm of the trainable parameters' gradients at {cfg.max_grad_norm:g}"
        if cfg.max_grad_norm else None}
    norms = []  # each step's gradient norm before clipping, read after training (no sync inside a step)
    after_step = on_start(steps) if on_start else None
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None

    forward = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        from .ddp import shard

        # static graph: DDP finds any unused parameters on the first step and skips the per-step graph
        # traversal find_unused_parameters=True costs (torch warned of it); a method whose used parameters
        # change between steps says so (Method.static_graph = False) and gets that search every step
        forward = (DistributedDataParallel(model, static_graph=True) if static_graph
                   else DistributedDataParallel(model, find_unused_parameters=True))
    model.train()  # from_pretrained returns eval mode; dropout is part of training cost
    batches = iter(loader)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        for step in range(steps):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            if distributed:
                batch = shard(batch)
            step_guard = guard()
            step_guard.__enter__()
            sync(device)
            t0 = time.perf_counter()
            batch = to_device(batch, device)
            with autocast(device, cfg.precision):
                loss = forward(**batch).loss
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if cfg.max_grad_norm:  # 0: no clipping
                norms.append(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm).detach())
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if after_step:
                after_step(step + 1)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if not distributed:
                value = loss.item()  # synchronises
            sync(device)
            dt = time.perf_counter() - t0
            if distributed:  # the global batch's mean loss (equal shards): a collective for the log, not timed
                import torch.distributed as dist

                mean = loss.detach().float().clone()
                dist.all_reduce(mean)
                value = mean.item() / dist.get_world_size()
            step_guard.__exit__(None, None, None)
            if not math.isfinite(value):
                raise Diverged(f"loss became {value} at step {step + 1} of {steps}")
            stats.losses.append(value)
            stats.step_times.append(dt)
            if step >= warm:
                stats.timed_steps += 1
                stats.timed_time_s += dt
                stats.timed_samples += batch["input_ids"].shape[0]
                stats.timed_tokens += int(batch["attention_mask"].sum())
                stats.timed_padded_tokens += batch["input_ids"].numel()
                if batch["labels"].dim() == 2:
                    stats.timed_target_tokens += int((batch["labels"] != -100).sum())
            if progress:
                progress(step + 1, steps, value, stats.samples_per_s)
        stats.train_time_s = time.perf_counter() - start
    # a loss is read before its step's update: the last update is checked here (an infinite gradient
    # norm turns clipped gradients, and so the weights, into NaN while every loss read was finite)
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise Diverged(f"weights became non-finite in the last of {steps} steps")
    stats.steps = steps
    stats.epochs_done = steps * cfg.batch_size / max(1, len(dataset))
    if norms:
        values = torch.stack(norms).float().cpu()
        finite = values[torch.isfinite(values)]  # fp16: a step the gradient scaler skipped has an infinite norm
        stats.optimization.update(
            grad_norm_median=float(finite.median()) if len(finite) else None,
            grad_norm_max=float(finite.max()) if len(finite) else None,
            clipped_steps=int((finite > cfg.max_grad_norm).sum()), nonfinite_grad_steps=len(values) - len(finite))
    stats.memory = memory.result()
    stats.memory.update(static_memory(model, optimizer))
    return stats


def static_memory(model, optimizer) -> dict:
    """Bytes of parameters, gradients (trainable only) and optimizer state, from the tensors."""
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    optim_bytes = sum(
        t.numel() * t.element_size()
        for state in (optimizer.state.values() if optimizer is not None else ())
        for t in state.values()
        if torch.is_tensor(t)
    )
    return {"param_bytes": param_bytes, "grad_bytes": grad_bytes, "optimizer_bytes": optim_bytes}


EVAL_BATCH = 128  # prediction batches (padded: a batch size can move the last digits; records say it)


@torch.no_grad()
def predict(model, dataset, collate, device, batch_size=EVAL_BATCH, precision="fp32", guard=None):
    """Predictions (class ids, or floats for regression) and gold labels. ``guard()`` wraps each
    batch's forward (parallel jobs: wait while another job times latency)."""
    import contextlib

    guard = guard or contextlib.nullcontext
    device = torch.device(device)
    model.eval()
    preds, golds = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in loader:
        labels = batch.pop("labels")
        with guard(), autocast(device, precision):
            logits = model(**to_device(batch, device)).logits.float().cpu()
        preds.append(logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1))
        golds.append(labels)
    return torch.cat(preds).numpy(), torch.cat(golds).numpy()
