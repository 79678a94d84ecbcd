"""`--nproc 2`: one run over two processes (torchrun, DDP with gloo on the CPU)."""

import json
import os

import pytest

from conftest import cli_in_process

ARGS = ["--methods", "lora", "--knob", "lora=2", "--train-samples", "64", "--max-steps", "6", "--batch-size", "8",
        "--no-latency", "--no-progress"]


# two processes need two CPUs (CI's machine has two; a session pinned to one core skips these)
two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs for --nproc 2")


def run(*args, env):
    return cli_in_process("run", *args, env=env)


def record(out):
    return json.loads(next((out / "records").glob("*.json")).read_text())


@two_cpus
def test_two_processes_train_one_model(tiny_model_dirs, cli_env, tmp_path, capfd):
    one, two = tmp_path / "one", tmp_path / "two"
    for out, n in ((one, 1), (two, 2)):
        res = run("--model", tiny_model_dirs["bert"], *ARGS, "--out", out, "--nproc", n, env=cli_env)
        assert res.returncode == 0, res.stderr
        # the ranks' own stderr (fd 2): no warning that DDP searches the graph for unused parameters every step
        assert "find_unused_parameters" not in capfd.readouterr().err
    a, b = record(one), record(two)
    assert b["status"] == "ok" and a["run_id"] != b["run_id"] and b["spec"]["nproc"] == 2
    ddp = b["ddp"]
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo" and ddp["per_rank_batch"] == 4
    checks = ddp["trainable_checksum_per_rank"]
    assert len(checks) == 2 and checks[0] == checks[1]  # DDP kept both copies identical
    # memory: the rank with the largest peak, its peak and its own growth over its start of training
    peaks, deltas = ddp["peak_mem_bytes_per_rank"], ddp["peak_mem_delta_bytes_per_rank"]
    top = peaks.index(max(peaks))
    assert len(peaks) == len(deltas) == 2 and min(peaks) > 0
    assert (b["memory"]["peak_mem_bytes"], b["memory"]["peak_mem_delta_bytes"]) == (peaks[top], deltas[top])
    # activations: what one rank's step keeps, on its own batch (the global one overstated them 2x)
    assert b["memory"]["saved_activation_batch"][0] == 4 and a["memory"]["saved_activation_batch"][0] == 8
    # the same global batch and data order: the same losses up to the ranks' own dropout masks
    assert b["train"]["loss_first"] == pytest.approx(a["train"]["loss_first"], abs=0.02)
    assert b["train"]["loss_last10"] == pytest.approx(a["train"]["loss_last10"], abs=0.03)
    assert abs(b["metrics"]["accuracy"] - a["metrics"]["accuracy"]) <= 0.1
    assert b["train"]["steps"] == a["train"]["steps"] == 6
    # throughput counts both ranks' examples: the global batch of every timed step
    assert b["train"]["timed_samples"] == a["train"]["timed_samples"] == 8 * a["train"]["timed_steps"]


@two_cpus
def test_nproc_must_divide_the_batch(cli_env, tmp_path):
    res = run(*ARGS, "--batch-size", "7", "--nproc", "1", "--out", tmp_path, "--dry-run", env=cli_env)
    assert res.returncode == 0, res.stderr
    res = run(*ARGS, "--batch-size", "7", "--nproc", "2", "--out", tmp_path, "--dry-run", env=cli_env)
    assert res.returncode == 2 and "--nproc 2: give a positive number of processes that divides --batch-size 7" in res.stderr


def test_nproc_beyond_the_cores(cli_env, tmp_path):
    n = len(os.sched_getaffinity(0)) * 2
    res = run(*ARGS[:-4], "--batch-size", n * 4, "--nproc", n, "--out", tmp_path, "--dry-run", env=cli_env)
    assert res.returncode == 2 and f"--nproc {n}: this machine gives this process" in res.stderr


ALTERNATING = '''
import torch
import peftbench
from peftbench.method import freeze


class Alternating(peftbench.Method):
    """Biases, plus a layer on the classifier's output used on every other training step only."""
    name = "alternating"
    static_graph = True

    def apply(self, model, knob_value=None, **options):
        freeze(model)
        for n, p in model.named_parameters():
            p.requires_grad_(n.endswith(".bias"))
        model.extra = torch.nn.Linear(model.config.num_labels, model.config.num_labels)
        calls = [0]

        def hook(module, args, out):
            calls[0] += model.training
            return out + model.extra(out) if model.training and calls[0] % 2 else out

        model.classifier.register_forward_hook(hook)
        return model


class Dynamic(Alternating):
    name = "alternating-dynamic"
    static_graph = False


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(Alternating())
    register(Dynamic())
'''


@two_cpus
def test_a_method_whose_used_parameters_change_between_steps_says_so(tiny_model_dirs, cli_env, tmp_path):
    """DDP with a static graph needs the same parameters in every step; a method that uses some on every
    other step sets static_graph = False and trains (DDP then searches each step for unused ones)."""
    plugin = tmp_path / "alternating.py"
    plugin.write_text(ALTERNATING)
    out = tmp_path / "o"
    res = run("--plugins", plugin, "--model", tiny_model_dirs["bert"], *ARGS[4:], "--methods",
              "alternating,alternating-dynamic", "--out", out, "--nproc", 2, env=cli_env)
    assert res.returncode == 1, res.stderr
    recs = {r["spec"]["method"]: r for r in map(json.loads, (p.read_text() for p in (out / "records").glob("*.json")))}
    assert recs["alternating-dynamic"]["status"] == "ok", recs["alternating-dynamic"].get("error")
    checks = recs["alternating-dynamic"]["ddp"]["trainable_checksum_per_rank"]
    assert checks[0] == checks[1]
    assert recs["alternating"]["status"] == "failed"  # DDP's static graph refuses it, and the error says the fix
    assert recs["alternating"]["error"].startswith(f"method alternating (plugin {plugin}): training under --nproc"), \
        recs["alternating"]["error"]
    assert "sets static_graph = False" in recs["alternating"]["error"]
