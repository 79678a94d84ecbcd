"""What training and a checkpoint cost for any model config, without weights: the model is built
on the meta device, each method applied at its knob, its parameters counted exactly; memory is
bytes per parameter under a stated precision regime. Activations depend on batch, sequence length
and recomputation: ``activation_rows`` counts them for a given batch x sequence length on the meta
device (the same count every run measures on real tensors, in its record's ``memory``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Regime:
    name: str
    frozen: int  # bytes per frozen weight
    weight: int  # bytes per trainable weight (incl. an fp32 master copy where there is one)
    grad: int  # bytes per gradient (trainable parameters only)
    optim: int  # AdamW state bytes per trainable parameter (two moments)
    ckpt: int  # bytes per saved parameter
    what: str


REGIMES = {
    "fp32": Regime("fp32", 4, 4, 4, 8, 4, "fp32 weights, gradients and AdamW moments; fp32 checkpoint"),
    "bf16-autocast": Regime("bf16-autocast", 4, 4, 4, 8, 4,
                            "what --precision bf16 runs: fp32 weights, gradients and moments, bf16 matmuls "
                            "(parameter memory as fp32; activations 0.77x fp32's on MiniLM, full fine-tuning at 32 x 64)"),
    "fp16-mixed": Regime("fp16-mixed", 2, 2 + 4, 2, 8, 2,
                         "classic mixed precision (Megatron / ZeRO accounting): fp16 weights, fp16 gradients, "
                         "an fp32 master copy and fp32 moments of what trains (16 B per trainable parameter); "
                         "frozen weights fp16; fp16 checkpoint"),
    "pure-16bit": Regime("pure-16bit", 2, 2, 2, 4, 2,
                         "everything 16-bit: weights, gradients and both AdamW moments (8 B per trainable "
                         "parameter), no master copy; 16-bit checkpoint"),
}


def project(base: int, trainable: int, full: bool, regime: Regime) -> dict:
    """Bytes of weights, gradients, optimizer state, their sum, and the checkpoint, for a model of
    ``base`` parameters of which ``trainable`` train (added by the method, or all of them when ``full``)."""
    total = base if full else base + trainable
    frozen = total - trainable
    out = {"weights": frozen * regime.frozen + trainable * regime.weight, "gradients": trainable * regime.grad,
           "optimizer": trainable * regime.optim, "checkpoint": trainable * regime.ckpt}
    out["training"] = out["weights"] + out["gradients"] + out["optimizer"]
    return out


def method_knobs(choices, knobs: dict):
    """(choice, knob value, knob text) for each method x its knob values (``knobs``: a method name's
    values; default its default knob; None and "fixed" for a method without a knob)."""
    for c in choices:
        for knob in knobs.get(c.method.name, [c.method.default_knob]) if c.method.knob else [None]:
            yield c, knob, f"{c.method.knob}={knob}" if c.method.knob else "fixed"


def rows(model: str, choices, knobs: dict, regimes) -> tuple[int, list[dict]]:
    """(base parameters, one row per method x knob x regime) for a model config; ``knobs`` maps a
    method name to its knob values (default: the method's default knob)."""
    from ..models import counter as make_counter
    from ..models import load_config

    from ..errors import PeftbenchError, first_line

    config = load_config(model)
    try:
        counter = make_counter(config)
    except Exception as e:
        raise PeftbenchError(f"--model {model}: transformers cannot build this config ({first_line(e)}); give a config "
                             "of a model transformers knows") from None
    out = []
    for c, knob, text in method_knobs(choices, knobs):
        trainable = counter.count(c.method, c.options, knob)
        full = trainable >= counter.base
        for name in regimes:
            proj = project(counter.base, trainable, full, REGIMES[name])
            out.append({"method": c.label, "knob": text,
                        "trainable": trainable, "pct": 100.0 * trainable / counter.base, "regime": name, **proj})
    return counter.base, out


def activation_bytes(model, batch: int, seq_len: int, causal: bool) -> int:
    """Bytes autograd keeps for the backward pass of one training-mode forward of ``batch``
    sequences of ``seq_len`` tokens (a language-modelling loss for a causal LM, a classification
    loss otherwise), counted on the meta device: the distinct storages of the saved tensors,
    parameters excluded, nothing allocated. It is transformers' own forward of this config, so it
    counts what that code keeps (dropout masks, every intermediate of its activation function, the
    attention probabilities of the math attention path: a fused flash kernel keeps no seq x seq
    tensor), with no recomputation, at the model's dtype."""
    import torch

    from ..measure import saved_activation_bytes

    ids = torch.zeros((batch, seq_len), dtype=torch.long, device="meta")
    labels = ids if causal else torch.zeros((batch,), dtype=torch.long, device="meta")
    return saved_activation_bytes(model, {"input_ids": ids, "labels": labels})  # no attention mask: no padding


def activation_rows(model: str, choices, knobs: dict, batch: int, seq_len: int) -> dict:
    """(method label, knob text) -> saved-activation bytes at ``batch`` x ``seq_len`` (None where the
    method cannot be applied on the meta device)."""
    import copy

    from ..errors import PeftbenchError, PluginFailure, first_line
    from ..method import apply_method
    from ..models import is_causal_config, load_config, meta_model

    config = copy.deepcopy(load_config(model))
    config.pad_token_id = None  # else transformers looks for padding in the (meta) input ids
    positions = next((getattr(config, k) for k in ("max_position_embeddings", "n_positions") if getattr(config, k, None)),
                     None)
    if positions is not None and seq_len > positions:
        raise PeftbenchError(f"--activations {batch}x{seq_len}: {model} has {positions} positions; give a sequence "
                             f"length of at most {positions}")
    causal = is_causal_config(config)
    base = meta_model(config, kind="generation" if causal else "classification")
    out = {}
    for c, knob, text in method_knobs(choices, knobs):
        key = (c.label, text)
        try:
            applied = apply_method(c.method, copy.deepcopy(base), knob, c.options)[0]
        except PluginFailure:
            out[key] = None
            continue
        try:
            out[key] = activation_bytes(applied, batch, seq_len, causal)
        except Exception as e:  # a forward that reads values cannot run without them
            raise PeftbenchError(f"--activations: {c.label} on {model} cannot run on the meta device "
                                 f"({first_line(e)}); drop --activations") from None
    return out


def human(n: float) -> str:
    for div, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n:.0f} B"


# The paper's GPT-3 claims (Hu et al. 2021, Section 4.2, Table 4 and Section 7.1), to print beside the projection.
PAPER_GPT3 = (
    "The LoRA paper on GPT-3 175B: training memory (VRAM) 1.2 TB -> 350 GB with r=4 on q,v; checkpoint "
    "350 GB -> 35 MB; 10,000x fewer trainable parameters; Table 4 counts 175,255.8M for full fine-tuning and "
    "4.7M (r=1) and 37.7M (r=8) for LoRA on q,v; Section 7.1 and Table 5 hold 18M fixed ('roughly 35MB if "
    "stored in FP16'): r=8 on one matrix type = r=4 on q,v (18.9M) = r=2 on q,k,v,o."
)


def paper_notes(base: int, table: list[dict]) -> list[str]:
    """What of the paper's GPT-3 claims the projection reproduces, and under which assumptions."""
    def find(method_prefix, regime):  # LoRA at the paper's r=4 where the table has it
        hits = [r for r in table if r["method"].startswith(method_prefix) and r["regime"] == regime]
        return next((r for r in hits if r["knob"] == "r=4"), hits[0] if hits else None)

    lines = [PAPER_GPT3]
    full16, lora16 = find("full", "pure-16bit"), find("lora", "pure-16bit")
    fullmix, loramix = find("full", "fp16-mixed"), find("lora", "fp16-mixed")
    if full16 and lora16:
        lines.append(
            f"Reproduced: {lora16['trainable']:,} trainable for LoRA ({base / lora16['trainable']:,.0f}x fewer than "
            f"this config's {base:,}; the paper's '10,000x' rounds this, and its own full count, 175,255.8M, gives "
            f"{175_255.8e6 / lora16['trainable']:,.0f}x); LoRA's training memory is the frozen 16-bit weights, "
            f"{human(lora16['training'])} (the paper's 350 GB: 2 B per parameter); its 16-bit checkpoint "
            f"{human(lora16['checkpoint'])} (the paper's 'roughly 35 MB', from its rounded 18M x 2 B = 36 MB); full "
            f"fine-tuning's 16-bit checkpoint {human(full16['checkpoint'])} (the paper's 350 GB).")
        lines.append(
            f"Full fine-tuning's training memory depends on the regime: {human(full16['training'])} with every "
            f"state 16-bit (8 B per parameter; {full16['training'] / 2**40:.2f} TiB in binary units)"
            + (f", {human(fullmix['training'])} in classic fp16 mixed precision (16 B per parameter)"
               if fullmix else "") + "; no per-parameter accounting gives 1.2 TB in the decimal units of the "
            "paper's 350 GB, so its 1.2 TB is not reproduced (activations excluded on both sides).")
    if loramix:
        lines.append(f"LoRA in classic fp16 mixed precision: {human(loramix['training'])} (frozen fp16 weights "
                     "plus 16 B per trainable parameter).")
    return lines
