"""What LoRA's ΔW learned, from run checkpoints (the LoRA paper's Section 7).

- ``subspace``: the normalised subspace similarity of two runs' A matrices (Section 7.2),
  φ(A₁, A₂, i, j) = ‖V₁ᵢᵀ V₂ⱼ‖²_F / min(i, j), with Vᵢ the top-i right-singular vectors of an A
  (its rows span the input directions the update reads). φ is 1 when one subspace contains the
  other and about max(i, j) / d for random subspaces of R^d.
- ``delta``: how ΔW = (α/r) B A relates to the frozen W (Section 7.3, Table 7): ‖UᵀWV‖_F for U, V
  the top-r left / right singular vectors of ΔW, of W itself and of a random matrix, and the
  amplification factor ‖ΔW‖_F / ‖UᵀWV‖_F.

A run is given by its record file; its checkpoint (``--keep-checkpoints``, the default) restores
the tuned model on the base model the record names. Native ``lora`` runs only.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import torch

from ..errors import PeftbenchError, check_file


def _checkpoint_of(record_path: Path, rec: dict) -> Path:
    from ..records import checkpoint_beside, checkpoint_file

    if found := checkpoint_file(record_path, rec):
        return found
    # an ok record is never rerun on its own, and keeping a checkpoint does not change a run's id: the way to
    # a checkpoint is a new --out, or --force
    rerun = ("run it again with checkpoints kept into another --out (`peftbench run --keep-checkpoints`, "
             "`peftbench study targets --keep-checkpoints`), or set keep_checkpoints = true in its sweep file and "
             "rerun that with --force")
    if rec["spec"].get("keep_checkpoint") is False:
        raise PeftbenchError(f"{record_path}: this run kept no checkpoint (its sweep said keep_checkpoints = false; "
                             f"`study targets` keeps none unless asked); {rerun}")
    raise PeftbenchError(f"{record_path}: its checkpoint is gone (looked for {checkpoint_beside(record_path, rec)}); "
                         f"{rerun}")


def read_record(path) -> dict:
    path = Path(path)
    check_file(path, "a records/<run id>.json file (`peftbench report DIR --runs` lists them)")
    try:
        rec = json.loads(path.read_text())
        rec["spec"]["task"]
    except (OSError, ValueError, KeyError, TypeError):
        raise PeftbenchError(f"{path}: not a run record; give a records/<run id>.json file") from None
    return rec


def _same_weights(path: Path, spec: dict) -> None:
    """ΔW is read against W: the base model must be the one the run trained (where both are known)."""
    from ..models import model_revision

    recorded = spec.get("model_revision")
    if not recorded or recorded == "unknown":
        return
    now = model_revision(spec["model"])
    if now != "unknown" and now != recorded:
        raise PeftbenchError(f"{path}: the run trained on {spec['model']} revision {recorded}, which here is {now}; "
                             "analyse it with the weights it was trained on")


def load_run(path) -> tuple[dict, torch.nn.Module]:
    """The record at ``path`` and its tuned model (base model + the run's LoRA weights), on the CPU."""
    from safetensors.torch import load_file

    from ..method import apply_method
    from ..models import load_model, load_tokenizer, planned_revision
    from ..plugins import get_method, get_task, load_plugins

    path = Path(path)
    rec = read_record(path)
    spec = rec["spec"]
    if rec.get("status") != "ok":
        raise PeftbenchError(f"{path}: the run did not finish ok ({rec.get('status')}); nothing to analyse")
    if spec.get("method") != "lora":
        raise PeftbenchError(f"{path}: a run of {spec.get('method')}; analyze reads native lora runs (--methods lora)")
    load_plugins(spec.get("plugins", ()))
    method, task = get_method("lora"), get_task(spec["task"])
    _same_weights(path, spec)
    try:
        revision = planned_revision(spec)  # the hub commit it trained on
        model = load_model(spec["model"], task, load_tokenizer(spec["model"], revision), "cpu", revision)
    except PeftbenchError as e:  # its message names --model, which analyze has not: say it is the record's
        raise PeftbenchError(f"{path}: its base model cannot be loaded here ({e}); analyze needs the weights "
                             "the run adapted, where the record says they are") from None
    model, _ = apply_method(method, model, spec["knob_value"], spec["options"])
    checkpoint = _checkpoint_of(path, rec)
    try:
        state = load_file(str(checkpoint))
    except Exception as e:  # safetensors' own error type, or OSError: a truncated file, a git-lfs pointer
        raise PeftbenchError(f"{checkpoint}: not a readable safetensors checkpoint ({str(e).splitlines()[0][:120]}); "
                             "if it is a git-lfs pointer, `git lfs pull`; else rerun with --keep-checkpoints") from None
    # loading is not strict (the frozen weights are not in a checkpoint): a factor it lacks would stay at
    # its initialisation (B = 0) and be analysed as if learned
    missing = sorted(n for n, _ in model.named_parameters() if ".lora_" in n and n not in state)
    if missing:
        raise PeftbenchError(f"{checkpoint}: lacks {len(missing)} of the run's LoRA factors ({missing[0]}, ...); "
                             "it is not this run's checkpoint: rerun with --keep-checkpoints")
    try:
        method.load_trainable_state(model, state)
    except RuntimeError as e:  # tensors of other shapes: another run's checkpoint
        raise PeftbenchError(f"{checkpoint}: does not fit the run's model ({str(e).splitlines()[-1].strip()}); "
                             "it is not this run's checkpoint: rerun with --keep-checkpoints") from None
    return rec, model.eval()


def factors(model) -> dict[str, dict]:
    """Every adapted matrix: name -> A (r x d_in), B (d_out x r), scaling and the frozen W (d_out x d_in);
    a fused projection's slices are separate matrices (``...c_attn[q]``)."""
    from peftbench_plugins.lora import LoRALayer, lora_layers

    out = {}
    for name, layer in lora_layers(model):
        w = layer.base.weight.detach().float()
        w = w.T if layer.fan_in_fan_out else w  # d_out x d_in
        if isinstance(layer, LoRALayer):
            out[name] = {"A": layer.lora_A.detach().float(), "B": layer.lora_B.detach().float(),
                         "scaling": layer.scaling, "W": w}
        else:
            for role in layer.roles:
                idx = getattr(layer, f"index_{role}")
                out[f"{name}[{role}]"] = {"A": layer.lora_A[role].detach().float(),
                                          "B": layer.lora_B[role].detach().float(), "scaling": layer.scaling,
                                          "W": w[idx]}
    return out


def right_singular(a: torch.Tensor) -> torch.Tensor:
    """The right-singular vectors of ``a`` as columns (d x rank), by decreasing singular value."""
    _, _, vh = torch.linalg.svd(a.double(), full_matrices=False)
    return vh.T


def similarity(a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """φ(a1, a2, i, j) for i = 1..rank(a1), j = 1..rank(a2), as a matrix (i-1, j-1)."""
    v1, v2 = right_singular(a1), right_singular(a2)
    overlap = (v1.T @ v2) ** 2  # (r1 x r2): squared cosines between singular directions
    cum = overlap.cumsum(0).cumsum(1)  # ‖V1[:, :i]ᵀ V2[:, :j]‖²_F
    i = torch.arange(1, v1.shape[1] + 1, dtype=cum.dtype)[:, None]
    j = torch.arange(1, v2.shape[1] + 1, dtype=cum.dtype)[None, :]
    return cum / torch.minimum(i, j)


def delta_stats(a, b, scaling, w, r: int | None = None, seed: int = 0) -> dict:
    """Table 7 of the paper for one matrix: ‖ΔW‖_F, ‖W‖_F, ‖UᵀWV‖_F for U, V from ΔW / W / one seeded
    random draw (and its expectation over all draws: for independent uniformly random r-frames,
    E‖UᵀWV‖²_F = r²‖W‖²_F / (d_out·d_in), a single draw scatters around it), and the amplification
    factor ‖ΔW‖_F / ‖UᵀWV‖_F (ΔW's directions)."""
    dw = (b.double() @ a.double()) * scaling
    w = w.double()
    r = r or a.shape[0]

    def proj(u, v):
        return float(torch.linalg.norm(u.T @ w @ v))

    u, _, vh = torch.linalg.svd(dw, full_matrices=False)
    uw, _, vhw = torch.linalg.svd(w, full_matrices=False)
    g = torch.Generator().manual_seed(seed)
    ur = torch.linalg.qr(torch.randn(w.shape[0], r, generator=g, dtype=torch.float64))[0]
    vr = torch.linalg.qr(torch.randn(w.shape[1], r, generator=g, dtype=torch.float64))[0]
    on_delta = proj(u[:, :r], vh[:r].T)
    norm = float(torch.linalg.norm(dw))
    return {"r": r, "delta_norm": norm, "w_norm": float(torch.linalg.norm(w)), "proj_delta": on_delta,
            "proj_w": proj(uw[:, :r], vhw[:r].T), "proj_random": proj(ur, vr),
            "proj_random_rms": r * float(torch.linalg.norm(w)) / (w.shape[0] * w.shape[1]) ** 0.5,
            "amplification": norm / on_delta if on_delta > 0 else float("inf")}


def short(name: str, full: bool = False) -> str:
    """``bert.encoder.layer.5.attention.self.query`` -> ``layer.5.query`` (``full``: the whole path
    after the layer, ``layer.5.attention.self.query``)."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join([parts[i - 1], p, *(parts[i + 1:] if full else parts[-1:])]) if i else name
    return name


def short_names(names) -> dict[str, str]:
    """``short`` of each name, the whole path after the layer where two would read alike (BERT's
    ``attention.output.dense`` and ``output.dense``)."""
    shorts = {n: short(n) for n in names}
    counts = collections.Counter(shorts.values())
    return {n: short(n, full=True) if counts[s] > 1 else s for n, s in shorts.items()}


def subspace_table(fa: dict, fb: dict) -> list[dict]:
    rows = []
    names = short_names(fa)
    for name in fa:
        if name not in fb:
            continue
        phi = similarity(fa[name]["A"], fb[name]["A"])
        k = min(phi.shape)
        rows.append({"matrix": names[name], "r_a": fa[name]["A"].shape[0], "r_b": fb[name]["A"].shape[0],
                     "phi_1_1": float(phi[0, 0]), "phi_diag_mean": float(torch.diagonal(phi[:k, :k]).mean()),
                     "random_1_1": 1.0 / fa[name]["A"].shape[1],  # E φ(i, j) = max(i, j) / d for random subspaces
                     "random_diag_mean": (k + 1) / (2 * fa[name]["A"].shape[1]), "_phi": phi})
    if not rows:
        raise PeftbenchError("the two runs adapt no matrix in common; give two lora runs of the same model and targets")
    return rows


def last_layer(rows: list[dict]) -> list[dict]:
    """The rows of the last row's layer (``layer.5.query``, ``layer.5.attention.output.dense``: ``layer.5``)."""
    def layer(row):
        m = re.match(r"(.*?\.\d+)(\.|$)", row["matrix"])
        return m.group(1) if m else row["matrix"]

    return [r for r in rows if layer(r) == layer(rows[-1])]


def plot_subspace(rows: list[dict], path, title: str) -> None:
    """Heatmaps of φ(i, j) like the paper's Figure 3, for the matrices of the last adapted layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = last_layer(rows)
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.2), squeeze=False)
    for ax, r in zip(axes[0], shown):
        im = ax.imshow(r["_phi"].numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="upper",
                       extent=(0.5, r["r_b"] + 0.5, r["r_a"] + 0.5, 0.5))
        ax.set_xlabel(f"j (top-j right-singular directions of A, r={r['r_b']})")
        ax.set_ylabel(f"i (top-i directions of A, r={r['r_a']})")
        ax.set_title(f"{r['matrix']}: φ(i, j)", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
