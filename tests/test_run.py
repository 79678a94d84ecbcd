"""End to end: `peftbench run` on tiny models and slices of the real data, then `report`."""

import json

import pandas as pd
import pytest

from peftbench.report import CSV_COLUMNS
from peftbench.runner import PHASES

from conftest import cli_in_process


peftbench = cli_in_process  # in this process: no imports anew


def records(out):
    return [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]


FAST = ["--max-steps", "3", "--batch-size", "8", "--latency-min-time", "0", "--latency-batch", "4", "--no-progress"]


@pytest.fixture(scope="module")
def sweep(tiny_model_dirs, small_data, tmp_path_factory):
    """Every built-in method on the tiny BERT, two variants of adapter, two seeds."""
    import os

    env = dict(os.environ, PEFTBENCH_DATA=str(small_data))
    out = tmp_path_factory.mktemp("run")
    res = peftbench("run", "--model", tiny_model_dirs["bert"], "--methods",
                    "full,bitfit,lora,adapter,adapter[placement=pfeiffer],prefix", "--budget", "1000",
                    "--seeds", "0,1", "--out", out, *FAST, env=env)
    return res, out, env


def test_run_records_everything(sweep):
    res, out, _ = sweep
    assert res.returncode == 0, res.stderr
    recs = records(out)
    assert len(recs) == 12 and all(r["status"] == "ok" for r in recs)
    lora = next(r for r in recs if r["spec"]["method"] == "lora")
    spec = lora["spec"]
    assert spec["knob"] == "r" and spec["budget"] == "1000" and spec["budget_params"] == 1000
    assert spec["budget_deviation_pct"] == pytest.approx(100 * (lora["params"]["method"] - 1000) / 1000)
    assert spec["task"] == "sst2" and spec["task_version"] == 1 and spec["lr"] == 5e-4
    assert lora["params"]["method"] == 2 * 2 * spec["knob_value"] * 64 and lora["params"]["head"] == 66
    assert lora["params"]["where"] == [f"bert.encoder.layer.*.attention.self.{m}.lora_{ab}" for m in ("query", "value")
                                       for ab in "AB"], lora["params"]["where"]  # what "lora" adapted here
    assert set(lora["metrics"]) == {"accuracy"}
    for key in ("steps", "samples_per_s", "tokens_per_s", "train_time_s", "loss_curve"):
        assert lora["train"][key] is not None
    assert lora["train"]["steps"] == 3
    # MFU's FLOPs counted on a training step as autograd runs it: a Pfeiffer adapter (after layer 0's feed-forward
    # block) needs no backward through layer 0's attention, which the analytic count charges
    flops = {r["spec"]["label"]: r["train"] for r in recs if r["spec"]["seed"] == 0}
    assert all(t["flops_count"].startswith("counted") for t in flops.values()), flops
    overcharge = {k: t["flops_per_token_analytic"] / t["flops_per_token"] for k, t in flops.items()}
    assert overcharge["adapter[placement=pfeiffer]"] > overcharge["lora"] > overcharge["full"], overcharge
    # AdamW: two fp32 moments per trainable parameter, plus a scalar step per tensor
    assert lora["memory"]["peak_mem_bytes"] > 0
    full = next(r for r in recs if r["spec"]["method"] == "full" and r["spec"]["seed"] == lora["spec"]["seed"])
    # full fine-tuning keeps every linear layer's input for its weight gradient; frozen layers do not
    assert full["memory"]["saved_activation_bytes"] > lora["memory"]["saved_activation_bytes"] > 0
    assert lora["memory"]["saved_activation_batch"][0] == 8
    assert 8 * lora["params"]["total"] <= lora["memory"]["optimizer_bytes"] < 8 * lora["params"]["total"] + 1024
    lat = lora["latency"]
    assert {"base_b1", "unmerged_b1", "merged_b1", "base_bN", "unmerged_bN", "merged_bN"} == set(lat["timings"])
    assert lat["merged_is_plain"] and lora["merge"]["max_abs_diff"] < 1e-4 <= lora["merge"]["tolerance"]
    assert lora["checkpoint"]["bytes"] > 0
    assert list(lora["phases_s"]) == list(PHASES) and "failed_in" not in lora  # every phase timed, in order
    assert PHASES[0] == "setup" and lora["phases_s"]["setup"] > 0
    # what determined the training besides the spec: optimizer, schedule, data order, clipping, the machine's load
    train = lora["train"]
    assert train["optimizer"] == {"name": "AdamW", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
                                  "decayed": "every trainable parameter (biases, norms and the head too)"}
    assert train["schedule"] == "linear warmup over 1 step(s) from lr/1, then linear decay to 0 at step 3"
    assert train["data_order_seed"] == spec["seed"] and train["clipping"].endswith("at 1")
    assert train["grad_norm_max"] >= train["grad_norm_median"] > 0 and 0 <= train["clipped_steps"] <= 3
    assert len(lora["env"]["loadavg"]) == 3 and len(train["loadavg_after"]) == 3
    assert lora["model"]["attn_implementation"] in ("sdpa", "eager") and lora["model"]["pad_is_eos"] is False
    assert lora["eval_batch_size"] == 128  # padded batches: the batch size can move the last digits
    env = lora["env"]
    assert {"peftbench", "torch", "transformers", "device", "torch_threads"} <= set(env)
    adapter = next(r for r in recs if r["spec"]["label"] == "adapter")
    assert "merged_b1" not in adapter["latency"]["timings"]
    prefix = next(r for r in recs if r["spec"]["method"] == "prefix")
    assert prefix["latency"]["effective_seq_len"] == prefix["latency"]["seq_len"] + prefix["spec"]["knob_value"]
    full = next(r for r in recs if r["spec"]["method"] == "full")
    assert full["spec"]["knob"] is None and full["spec"]["budget"] is None
    assert "| sst2 | lora |" in res.stdout and "±" in res.stdout and "activations MB" in res.stdout


def test_report_formats(sweep, tmp_path):
    _, out, env = sweep
    csv = peftbench("report", out, "--format", "csv", env=env)
    assert csv.returncode == 0, csv.stderr
    df = pd.read_csv(pd.io.common.StringIO(csv.stdout))
    assert list(df.columns[: len(CSV_COLUMNS)]) == CSV_COLUMNS
    # the runs' records say what the majority class of their training examples scores: one baseline row
    base = df[df.role == "baseline"]
    assert list(base.config) == ["trivial baseline (majority class)"] and base.index[0] == 0
    trivial = records(out)[0]["trivial"]
    assert base.metric_mean.iloc[0] == trivial["metrics"]["accuracy"] and trivial["predicts"] in (0, 1)
    df = df[df.role == "method"]
    assert len(df) == 6 and set(df.n_seeds) == {2} and df.best.sum() == 1
    assert set(df.config) == {"full", "bitfit", "lora", "adapter", "adapter[placement=pfeiffer]", "prefix"}
    lora = df[df.method == "lora"].iloc[0]
    assert lora.metric == "accuracy" and lora.status == "ok" and lora.budget_params == 1000
    assert pd.isna(df[df.method == "adapter"].latency_b1_merged_ms).all()
    assert df[df.method == "lora"].latency_b1_merged_ms.notna().all()
    assert (df[df.method == "full"].throughput_vs_full == 1.0).all()
    assert df[df.method == "bitfit"].fixed.all()
    for fmt, marker in (("md", "| task |"), ("latex", "\\begin{tabular}"), ("html", "<table"), ("json", '"metric_mean"')):
        res = peftbench("report", out, "--format", fmt, env=env)
        assert res.returncode == 0 and marker in res.stdout, (fmt, res.stderr)
    plot = tmp_path / "plot.png"
    res = peftbench("report", out, "--plot", plot, "-o", tmp_path / "table.md", env=env)
    assert res.returncode == 0 and plot.stat().st_size > 10_000
    assert (tmp_path / "table.md").read_text().startswith("| task |")


def test_latency_ratios_are_same_session_medians():
    """Each run's ratio to the base timed in its own process, median over seeds: never the ratio of
    medians taken from different processes (machine speed drifts between runs)."""
    from peftbench.report import display_frame, records_frame, summarize

    def rec(seed, base, unmerged):
        t = {"base_b1": {"median_ms": base}, "unmerged_b1": {"median_ms": unmerged}}
        return {"run_id": f"r{seed}", "status": "ok", "metrics": {"accuracy": 0.5},
                "spec": {"task": "sst2", "method": "adapter", "label": "adapter", "knob": "bottleneck",
                         "knob_value": 4, "seed": seed},
                "latency": {"timings": t, "ratio_unmerged_b1": unmerged / base}}

    # the machine's speed differs between the three runs; their own overheads are +10%, +10%, +20%
    summary = summarize(records_frame([rec(0, 12.0, 13.2), rec(1, 10.0, 11.0), rec(2, 11.5, 13.8)]))
    assert summary.latency_b1_ratio.iloc[0] == pytest.approx(1.10)
    assert summary.latency_b1_ms.iloc[0] / summary.latency_base_b1_ms.iloc[0] == pytest.approx(13.2 / 11.5)
    assert display_frame(summary)["b1 ms ↓ (vs base)"].iloc[0] == "13.2 (1.10x)"


def test_rows_run_under_different_settings_are_told_apart():
    from peftbench.report import records_frame, summarize

    def rec(seed, **setup):
        spec = {"task": "sst2", "method": "lora", "label": "lora", "knob": "r", "knob_value": 8, "seed": seed,
                "weight_decay": 0.0, "max_grad_norm": 1.0, "train_samples": 4000, **setup}
        return {"run_id": f"r{seed}{sorted(setup.items())}", "status": "ok", "metrics": {"accuracy": 0.5}, "spec": spec}

    summary = summarize(records_frame([rec(0), rec(1), rec(0, weight_decay=0.01), rec(0, train_subset="first")]))
    assert sorted(zip(summary.config, summary.n_seeds)) == [
        ("lora (train subset first, weight decay 0.0)", 1),
        ("lora (train subset random, weight decay 0.0)", 2),
        ("lora (train subset random, weight decay 0.01)", 1),
    ]
    # a record written before train_subset existed reads as the default (random): one row, not two
    assert len(summarize(records_frame([rec(0), rec(1, train_subset="random")]))) == 1


def test_rerun_skips_finished_runs(sweep):
    _, out, env = sweep
    res = peftbench("run", "--model", sweep[1].parent, "--methods", "lora", "--out", out, *FAST, env=env)
    assert res.returncode == 2  # the parent of the run folder is not a model
    before = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    model = json.loads(next((out / "records").glob("*.json")).read_text())["spec"]["model"]
    res = peftbench("run", "--model", model, "--methods", "full,bitfit,lora,adapter,adapter[placement=pfeiffer],prefix",
                    "--budget", "1000", "--seeds", "0,1", "--out", out, *FAST, env=env)
    assert res.returncode == 0, res.stderr
    assert "skipping 12 run(s) with an ok record; 0 to run" in res.stderr
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}


def test_every_task_runs_end_to_end_on_gpt2(tiny_model_dirs, cli_env, tmp_path):
    res = peftbench("run", "--model", tiny_model_dirs["gpt2"], "--methods", "lora", "--knob", "lora=2",
                    "--tasks", "sst2,cola,rte,mrpc,stsb,trec", "--out", tmp_path, "--no-latency", *FAST, env=cli_env)
    assert res.returncode == 0, res.stderr
    recs = {r["spec"]["task"]: r for r in records(tmp_path)}
    assert set(recs) == {"sst2", "cola", "rte", "mrpc", "stsb", "trec"}
    assert set(recs["mrpc"]["metrics"]) == {"accuracy", "f1"}
    assert set(recs["stsb"]["metrics"]) == {"pearson", "spearman"}
    assert set(recs["cola"]["metrics"]) == {"mcc", "accuracy"}
    assert recs["rte"]["data"]["eval_examples"] == 40 and recs["trec"]["params"]["head"] == 32 * 6
    assert all(r["status"] == "ok" for r in recs.values())


def test_max_steps_beyond_the_epochs_is_said_when_planned(tiny_model_dirs, cli_env, tmp_path):
    """--max-steps past what --epochs gives: the runs stop at the epochs' end, and the plan says so."""
    args = ["run", "--model", tiny_model_dirs["bert"], "--methods", "bitfit", "--train-samples", "64",
            "--batch-size", "32", "--out", tmp_path, "--dry-run"]
    res = cli_in_process(*args, "--max-steps", "4", env=cli_env)
    assert res.returncode == 0, res.stderr
    assert ("warning: --max-steps 4: --epochs 1 of task sst2's 64 training examples at batch 32 end after 2 step(s)"
            in res.stderr)
    res = cli_in_process(*args, "--max-steps", "4", "--epochs", "2", env=cli_env)
    assert res.returncode == 0 and "--max-steps" not in res.stderr, res.stderr


def test_a_run_failing_before_its_phases_says_it_failed_in_setup(tmp_path):
    """A failed record says how far the run got: a failure while loading its method (before the data
    phase's clock starts) is "setup", with no phase finished; the record is written atomically."""
    from peftbench import runner

    spec = {"run_id": "x1", "seed": 0, "data_seed": 0, "method": "nosuchmethod", "task": "sst2", "device": "cpu",
            "plugins": []}
    rec = runner.execute(spec, tmp_path, progress=False)
    assert rec["status"] == "failed" and rec["failed_in"] == "setup" and rec["phases_s"] == {}, rec
    assert json.loads((tmp_path / "records" / "x1.json").read_text())["failed_in"] == "setup"


def test_a_hub_model_loads_at_the_commit_its_plan_recorded(monkeypatch, tiny_model_dirs):
    """A sweep can run for days: weights pushed to the hub meanwhile must not enter it. Each run (and
    ``analyze``) loads config, tokenizer and weights at the hub commit its spec names."""
    import transformers

    from peftbench import models
    from peftbench.plugins import get_task

    sha = "0123456789abcdef0123456789abcdef01234567"
    assert models.planned_revision({"model_revision": sha}) == sha
    assert models.planned_revision({"model_revision": "local:0123456789abcdef"}) is None  # a folder: its hash
    assert models.planned_revision({"model_revision": "unknown"}) is None and models.planned_revision({}) is None
    seen = []
    for auto in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        def spy(*args, _real=auto.from_pretrained, **kwargs):
            seen.append(kwargs.get("revision"))
            return _real(*args, **kwargs)  # a local folder: transformers reads it whatever the revision
        monkeypatch.setattr(auto, "from_pretrained", spy)
    folder = str(tiny_model_dirs["llama-lm"])
    tokenizer = models.load_tokenizer(folder, sha)
    models.load_model(folder, get_task("e2e"), tokenizer, revision=sha)
    assert len(seen) >= 3 and set(seen) == {sha}, seen  # tokenizer, config (is it causal?), weights (and theirs)
    seen.clear()
    models.load_model(folder, get_task("e2e"), tokenizer)
    assert set(seen) == {None}  # nothing pinned: transformers' default


HALF_MERGED = '''
import torch
from torch import nn
import peftbench
from peftbench.arch import find_role, linear_features, replace_module
from peftbench.method import freeze


class Scaled(nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base = base
        self.scale = nn.Parameter(torch.ones(linear_features(base)[1]))

    def forward(self, x):
        return self.base(x) * self.scale


class KeepsItsModules(peftbench.Method):
    name = "keeps"
    mergeable = True

    def apply(self, model, knob_value=None, **options):
        freeze(model)
        for name, module in find_role(model, "v"):
            replace_module(model, name, Scaled(module))
        return model

    def merge(self, model):  # the same outputs, but the method's modules stay: not a merged model
        return model


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(KeepsItsModules())
'''


def test_a_merge_that_keeps_the_methods_modules_is_not_timed_as_merged(tiny_model_dirs, small_data, tmp_path):
    """Its outputs pass the merge check, but timing it as "merged" would publish the unmerged
    model's latency under the merged column: the record says why there is no merged timing."""
    import os

    from conftest import write_plugin

    plugin = write_plugin(tmp_path, "keeps", HALF_MERGED)
    res = peftbench("run", "--model", tiny_model_dirs["bert"], "--methods", "keeps", "--plugins", plugin, "--seeds", "0",
                    "--out", tmp_path / "out", *FAST, env=dict(os.environ, PEFTBENCH_DATA=str(small_data)))
    assert res.returncode == 0, res.stderr
    (rec,) = records(tmp_path / "out")
    lat = rec["latency"]
    assert rec["status"] == "ok" and lat["merged_is_plain"] is False and "Scaled" in lat["merged_not_timed"]
    assert not any(k.startswith("merged_") for k in lat["timings"]) and "ratio_unmerged_b1" in lat
