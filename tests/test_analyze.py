"""`peftbench analyze`: the subspace similarity and ΔW analysis of the LoRA paper's Section 7, on
hand-built matrices of known answer and on real (tiny) runs' checkpoints."""

import json

import pytest
import torch

from conftest import cli_in_process
from peftbench.studies.analyze import delta_stats, similarity


def test_similarity_with_itself_is_one_on_the_diagonal():
    a = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    phi = similarity(a, a)
    assert torch.allclose(torch.diagonal(phi), torch.ones(8, dtype=phi.dtype), atol=1e-10)
    # the rank-4 truncation of A: its top-i directions lie in A's top-j ones for j >= i
    _, s, vh = torch.linalg.svd(a.double(), full_matrices=False)
    phi = similarity(torch.diag(s[:4]) @ vh[:4], a)
    assert torch.allclose(phi[:, 3:], torch.ones(4, 5, dtype=phi.dtype), atol=1e-8)


def test_similarity_of_random_subspaces_matches_the_expectation():
    """E‖V₁ᵢᵀV₂ⱼ‖² = i·j/d for independent random subspaces, so φ ≈ max(i, j)/d."""
    d, g = 256, torch.Generator().manual_seed(1)
    phis = torch.stack([similarity(torch.randn(8, d, generator=g), torch.randn(32, d, generator=g))
                        for _ in range(40)]).mean(0)
    i = torch.arange(1, 9)[:, None].double()
    j = torch.arange(1, 33)[None, :].double()
    expected = torch.maximum(i, j) / d
    assert torch.allclose(phis, expected, rtol=0.25, atol=0.004)
    # the random baseline `analyze subspace` prints beside the mean φ(i, i), i <= 8: (8 + 1) / (2d)
    assert float(torch.diagonal(phis).mean()) == pytest.approx(9 / (2 * d), rel=0.15)


def test_delta_on_a_known_update():
    """ΔW = c · u₁v₁ᵀ along W's own top singular direction: ‖UᵀWV‖ = σ₁(W), amplification c / σ₁;
    along W's smallest direction the amplification is c / σ_min."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(32, 48, generator=g, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    c = 5.0
    top = delta_stats(a=vh[:1], b=c * u[:, :1], scaling=1.0, w=w)
    assert top["r"] == 1 and top["delta_norm"] == pytest.approx(c)
    assert top["proj_delta"] == pytest.approx(float(s[0])) and top["proj_w"] == pytest.approx(float(s[0]))
    assert top["amplification"] == pytest.approx(c / float(s[0]))
    low = delta_stats(a=vh[-1:], b=c * u[:, -1:], scaling=2.0, w=w)
    assert low["proj_delta"] == pytest.approx(float(s[-1])) and low["amplification"] == pytest.approx(2 * c / float(s[-1]))
    assert low["proj_random"] < top["proj_w"]


def test_delta_random_baseline_is_the_expectation_of_its_draws():
    """One seeded random draw scatters; the rms over draws is r‖W‖_F / √(d_out·d_in), printed beside it."""
    g = torch.Generator().manual_seed(3)
    w, a, b = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((24, 40), (2, 40), (24, 2)))
    draws = torch.tensor([delta_stats(a, b, 1.0, w, seed=s)["proj_random"] for s in range(400)])
    rms = delta_stats(a, b, 1.0, w)["proj_random_rms"]
    assert rms == pytest.approx(2 * float(torch.linalg.norm(w)) / (24 * 40) ** 0.5)
    assert float(draws.pow(2).mean().sqrt()) == pytest.approx(rms, rel=0.05)
    assert float(draws.std()) > 0.1 * rms  # why one draw is not the baseline


def test_the_heatmap_shows_every_matrix_of_the_last_layer():
    """Names that keep their whole path (BERT's attention.output.dense and output.dense) are in their layer."""
    from peftbench.studies.analyze import last_layer

    rows = [{"matrix": m} for m in ("layer.4.query", "layer.5.query", "layer.5.attention.output.dense",
                                    "layer.5.intermediate.dense", "layer.5.output.dense")]
    assert [r["matrix"] for r in last_layer(rows)] == [r["matrix"] for r in rows[1:]]
    assert last_layer([{"matrix": "layers.29.q_proj"}, {"matrix": "layers.3.q_proj"}]) == [{"matrix": "layers.3.q_proj"}]


@pytest.fixture(scope="module")
def lora_runs(tiny_model_dirs, small_data, tmp_path_factory):
    import os

    out = tmp_path_factory.mktemp("lora-runs")
    env = dict(os.environ, PEFTBENCH_DATA=str(small_data))
    res = cli_in_process("run", "--model", tiny_model_dirs["bert"], "--methods", "lora,adapter", "--knob",
                         "lora=2,adapter=2", "--seeds", "0", "--out", out, "--max-steps", "4", "--batch-size", "8",
                         "--no-latency", "--no-progress", env=env)
    assert res.returncode == 0, res.stderr
    res = cli_in_process("run", "--model", tiny_model_dirs["bert"], "--methods", "lora", "--knob", "lora=8",
                         "--seeds", "0", "--out", out, "--max-steps", "4", "--batch-size", "8", "--no-latency",
                         "--no-progress", env=env)
    assert res.returncode == 0, res.stderr
    recs = {(r["spec"]["method"], r["spec"]["knob_value"]): p
            for p in (out / "records").glob("*.json") for r in [json.loads(p.read_text())]}
    return recs, env


def analyze(*args, env):
    return cli_in_process("analyze", *args, env=env)


def test_analyze_commands_on_real_checkpoints(lora_runs, tmp_path):
    recs, env = lora_runs
    r2, r8 = recs[("lora", 2)], recs[("lora", 8)]
    res = analyze("subspace", r2, r8, "--plot", tmp_path / "phi.png", "--format", "csv", env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("matrix,r_a,r_b,phi_1_1") and len(lines) == 1 + 2 * 2  # 2 layers x (query, value)
    assert all(0.0 <= float(ln.split(",")[3]) <= 1.0 for ln in lines[1:])
    assert (tmp_path / "phi.png").stat().st_size > 5_000
    same = analyze("subspace", r8, r8, "--format", "csv", env=env)  # a run with itself: every direction shared
    assert all(abs(float(ln.split(",")[4]) - 1.0) < 1e-6 for ln in same.stdout.strip().splitlines()[1:])
    res = analyze("delta", r8, env=env)
    assert res.returncode == 0, res.stderr
    assert "amplification" in res.stdout and "layer.1.value" in res.stdout
    bad = analyze("delta", recs[("adapter", 2)], env=env)
    assert bad.returncode == 2 and "analyze reads native lora runs" in bad.stderr
    bad = analyze("delta", tmp_path / "nope.json", env=env)
    assert bad.returncode == 2 and "nope.json: no such file" in bad.stderr
    bad = analyze("delta", tmp_path, env=env)
    assert bad.returncode == 2 and f"{tmp_path} is a folder; give a records/<run id>.json file" in bad.stderr
    (tmp_path / "nope.json").write_text("{}")
    bad = analyze("delta", tmp_path / "nope.json", env=env)
    assert bad.returncode == 2 and "not a run record" in bad.stderr
    gone = json.loads(r8.read_text())
    gone["spec"]["model"] = str(tmp_path / "moved-model")  # the base model's folder is not here any more
    (tmp_path / "gone.json").write_text(json.dumps(gone))
    bad = analyze("delta", tmp_path / "gone.json", env=env)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "gone.json: its base model cannot be loaded here (--model" in bad.stderr and "moved-model" in bad.stderr
    other = json.loads(r2.read_text())
    other["spec"]["task"] = "trec"
    (tmp_path / "other.json").write_text(json.dumps(other))
    bad = analyze("subspace", r8, tmp_path / "other.json", env=env)
    assert bad.returncode == 2 and "are runs of different tasks (sst2 vs trec)" in bad.stderr
    gone = json.loads(r8.read_text())
    gone["checkpoint"]["path"], gone["run_id"] = None, "0" * 16
    (tmp_path / "gone.json").write_text(json.dumps(gone))
    bad = analyze("delta", tmp_path / "gone.json", env=env)
    assert bad.returncode == 2 and "its checkpoint is gone" in bad.stderr and "--keep-checkpoints" in bad.stderr
    gone["spec"]["keep_checkpoint"] = False  # a run that never kept one (`study targets` by default)
    (tmp_path / "gone.json").write_text(json.dumps(gone))
    bad = analyze("delta", tmp_path / "gone.json", env=env)
    assert bad.returncode == 2 and "this run kept no checkpoint" in bad.stderr
    # a checkpoint that lacks a factor (loading is not strict: B would stay 0) or is another run's
    from safetensors.torch import load_file, save_file

    state = load_file(json.loads(r8.read_text())["checkpoint"]["path"])
    dropped = next(k for k in state if ".lora_B" in k)
    save_file({k: v for k, v in state.items() if k != dropped}, tmp_path / "short.safetensors")
    (tmp_path / "pointer.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    for name, ckpt, says in (("short", tmp_path / "short.safetensors", "lacks 1 of the run's LoRA factors"),
                             ("r2", json.loads(r2.read_text())["checkpoint"]["path"], "does not fit the run's model"),
                             ("pointer", tmp_path / "pointer.safetensors", "not a readable safetensors checkpoint"),
                             ("revision", None, "analyse it with the weights it was trained on")):
        wrong = json.loads(r8.read_text())
        wrong["run_id"] = "1" * 16
        if ckpt is None:
            wrong["spec"]["model_revision"] = "local:0123456789abcdef"  # other weights than these
        else:
            wrong["checkpoint"]["path"] = str(ckpt)
        (tmp_path / f"{name}.json").write_text(json.dumps(wrong))
        bad = analyze("delta", tmp_path / f"{name}.json", env=env)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    bad = analyze("subspace", r2, r8, "--plot", tmp_path / "no" / "phi.png", env=env)
    assert bad.returncode == 2 and "its folder does not exist" in bad.stderr


def test_analyze_a_llama_with_grouped_query_attention(tiny_model_dirs, small_data, tmp_path):
    """SmolLM2's shape: W_k and W_v map to fewer heads than W_q (the tiny LLaMA: 32 -> 16 against 32 -> 32), so
    their ΔW is not square; each matrix is analysed at its own shape."""
    import os

    env = dict(os.environ, PEFTBENCH_DATA=str(small_data))
    out = tmp_path / "runs"
    for r in (2, 4):
        res = cli_in_process("run", "--model", tiny_model_dirs["llama-lm"], "--methods", "lora[target_modules=q,k,v,o]",
                             "--knob", f"lora={r}", "--seeds", "0", "--out", out, "--max-steps", "4", "--batch-size",
                             "8", "--no-latency", "--no-progress", "--keep-checkpoints", env=env)
        assert res.returncode == 0, res.stderr
    recs = {json.loads(p.read_text())["spec"]["knob_value"]: p for p in (out / "records").glob("*.json")}
    res = analyze("subspace", recs[2], recs[4], "--format", "csv", env=env)
    assert res.returncode == 0, res.stderr
    rows = [ln.split(",") for ln in res.stdout.strip().splitlines()[1:]]
    assert sorted(r[0] for r in rows) == sorted(f"layers.{i}.{m}_proj" for i in (0, 1) for m in "qkvo")
    assert all(r[1:3] == ["2", "4"] and 0.0 <= float(r[3]) <= 1.0 and float(r[5]) == 1 / 32 for r in rows)
    res = analyze("delta", recs[4], "--format", "csv", env=env)
    assert res.returncode == 0, res.stderr
    delta = {ln.split(",")[0]: [float(x) for x in ln.split(",")[1:]] for ln in res.stdout.strip().splitlines()[1:]}
    assert set(delta) == {f"layers.{i}.{m}_proj" for i in (0, 1) for m in "qkvo"}
    import math

    import torch
    from safetensors.torch import load_file

    model_dir = tiny_model_dirs["llama-lm"]
    w_k = next(v for k, v in load_file(model_dir / "model.safetensors").items() if "layers.0.self_attn.k_proj" in k)
    assert tuple(w_k.shape) == (16, 32)  # grouped: 2 key/value heads of 8 against 4 query heads
    assert math.isclose(delta["layers.0.k_proj"][2], torch.linalg.matrix_norm(w_k).item(), rel_tol=1e-4)  # ‖W‖
    assert all(v[0] == 4 and math.isfinite(v[-1]) and v[1] > 0 for v in delta.values())


# The published analyses of the rank studies (results/lora-paper/rank and rank-smollm2, both written by
# results/lora-paper/analyses.sh): file -> (target set, rank, seed) of the runs (a study has several target
# sets at each rank)
PUBLISHED = {
    "subspace-r8-r64-seed0.txt": ("subspace", ("q,v", 8, 0), ("q,v", 64, 0)),
    "subspace-r64-seed0-seed1.txt": ("subspace", ("q,v", 64, 0), ("q,v", 64, 1)),
    "subspace-r8-seed0-seed1.txt": ("subspace", ("q,v", 8, 0), ("q,v", 8, 1)),
    "subspace-r8-seed0-r64-seed1.txt": ("subspace", ("q,v", 8, 0), ("q,v", 64, 1)),
    "delta-r4-seed0.txt": ("delta", ("q,v", 4, 0)),
    "delta-r8-seed0.txt": ("delta", ("q,v", 8, 0)),
    "delta-r64-seed0.txt": ("delta", ("q,v", 64, 0)),
}


@pytest.mark.slow
@pytest.mark.parametrize("study", ["rank", "rank-smollm2"])
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_rank_analyses_are_the_commands_output(study, name, monkeypatch):
    """results/lora-paper/rank (MiniLM) and rank-smollm2 (SmolLM2-135M), TREC-6: each analysis file is
    what `peftbench analyze` prints for those runs' kept checkpoints today, run from the repository's root."""
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    folder = ROOT / "results" / "lora-paper" / study
    assert (folder / name).is_file(), f"{study}: {name} is not published (bash results/lora-paper/analyses.sh {folder})"
    recs = {}
    for p in sorted((folder / "records").glob("*.json")):
        r = json.loads(p.read_text())
        if r["status"] == "ok":
            key = (",".join(r["spec"]["options"]["target_modules"]), r["spec"]["knob_value"], r["spec"]["seed"])
            assert key not in recs, f"two ok records for {key}"
            recs[key] = p.relative_to(ROOT)
    command, *runs = PUBLISHED[name]
    for run in runs:  # committed beside the records (not only at a record's absolute path, gone with its machine)
        assert (folder / "checkpoints" / f"{recs[run].stem}.safetensors").is_file(), f"{run}: checkpoint not committed"
    res = cli_in_process("analyze", command, *(recs[run] for run in runs))
    assert res.returncode == 0, res.stderr
    assert res.stdout == (folder / name).read_text()


def test_matrix_names_that_would_read_alike_keep_their_path():
    from peftbench.studies.analyze import short_names

    names = ["bert.encoder.layer.5.attention.self.query", "bert.encoder.layer.5.attention.output.dense",
             "bert.encoder.layer.5.intermediate.dense", "bert.encoder.layer.5.output.dense"]
    short = short_names(names)
    assert short[names[0]] == "layer.5.query" and short[names[1]] == "layer.5.attention.output.dense"
    assert len(set(short.values())) == 4
