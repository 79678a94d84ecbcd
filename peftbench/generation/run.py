"""The generation-task steps of a run (runner.py calls them): data, evaluation by generation,
generation latency."""

from __future__ import annotations

from pathlib import Path

from .data import Collator, tokenize_pairs
from .generate import Decoding, generate_all, generation_latency


def prepare(task, taskdata, tokenizer, spec, key) -> tuple:
    """(train dataset, eval frame (first ``eval_samples`` inputs), collator)."""
    train_ds = tokenize_pairs(task, taskdata.train, tokenizer, spec["max_seq_len"], {**key, "split": "train"})
    evaluation = taskdata.eval
    if spec.get("eval_samples") and evaluation is not None:  # a search run reads no evaluation split
        evaluation = evaluation.iloc[: spec["eval_samples"]]
    return train_ds, evaluation, Collator(tokenizer.pad_token_id)


def decoding(spec, task) -> Decoding:
    g = dict(spec.get("generation") or {})
    g.setdefault("max_new_tokens", task.max_new_tokens)
    return Decoding(**g)


def evaluate(task, model, tokenizer, evaluation, spec, out: Path, device, precision, guard=None) -> dict:
    """Generate one output per eval input, score it against its references, keep the outputs
    (``<out>/predictions/<run_id>.txt``, one line per input, in the split's order). ``guard``: see
    ``generate_all``."""
    from ..records import write_atomic

    prompts = [task.prompt.format(source=s) for s in evaluation["source"]]
    gen = generate_all(model, tokenizer, prompts, decoding(spec, task), device, precision, guard=guard)
    outputs = [task.postprocess(t) if task.postprocess else t for t in gen["texts"]]
    metrics = task.score(outputs, list(evaluation["references"]), spec.get("metrics") or task.metrics)
    path = Path(out) / "predictions" / f"{spec['run_id']}.txt"
    # one line per output: any line break inside one (the ones str.splitlines, which readers use, splits at) a space
    write_atomic(path, "".join(" ".join(o.splitlines()) + "\n" for o in outputs), text=True)
    return {"metrics": metrics, "generation": {
        "inputs": len(prompts), "new_tokens": gen["new_tokens"], "seconds": gen["seconds"],
        "cut_at_max_new_tokens": gen["unstopped"],  # outputs that ended without an EOS
        "waited_for_latency_s": gen["waited_s"],
        "tokens_per_s": gen["new_tokens"] / gen["seconds"] if gen["seconds"] else None,
        "decoding": decoding(spec, task).as_dict(), "predictions": path.relative_to(out).as_posix(),  # beside records/: moves with the folder
        "examples": [{"source": s, "output": o} for s, o in list(zip(evaluation["source"], outputs))[:3]],
    }}


def latency(models: dict, tokenizer, task, evaluation, spec, device, precision) -> dict:
    prompts = [task.prompt.format(source=s) for s in evaluation["source"]]
    return generation_latency(models, tokenizer, prompts, device, precision, spec["latency"])


VAL_LOSS_BATCH = 32  # a search run's validation-loss batches (records say it)


def validation_loss(model, dataset, collate, device, precision, batch_size=VAL_LOSS_BATCH, guard=None) -> float:
    """Mean cross-entropy per target token over ``dataset`` (the held-out training pairs), computed
    here from the logits, the same for every method: a model's own ``.loss`` need not be the
    cross-entropy (peft's AdaLoRA adds its orthogonality penalty whenever labels are passed, in
    eval mode too, which rewarded the rates that shrink the penalty fastest). ``guard()`` wraps each
    batch's forward (parallel jobs: wait while another job times latency)."""
    import contextlib

    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from ..precision import autocast
    from ..train import to_device

    model.eval()
    total = tokens = 0.0
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
            batch = to_device(batch, device)
            labels = batch.pop("labels")
            with (guard or contextlib.nullcontext)(), autocast(device, precision):
                logits = model(**batch).logits
            logits = logits[:, -labels.shape[1]:]  # peft's prompt methods put virtual tokens in front
            targets = labels[:, 1:]  # token t predicts token t+1
            total += float(F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                           targets.reshape(-1), ignore_index=-100, reduction="sum"))
            tokens += int((targets != -100).sum())
    return total / tokens
