"""Learning rates chosen on held-out training data: the reported split is never read while
choosing, the final records name the search, a rerun reruns nothing."""

import json
import subprocess
import sys

from conftest import write_plugin

LOGGED_TASK = '''
import os
import peftbench
from peftbench.tasks import read_tsv
import pandas as pd


def reader(path, task):
    with open(os.environ["PEFTBENCH_TEST_READS"], "a") as f:
        f.write(f"{os.getpid()} {path.name}\\n")
    return pd.DataFrame(read_tsv(path, task), columns=["text_a", "label"])


@peftbench.hookimpl
def peftbench_register_tasks(register):
    register(peftbench.Task(name="sst2-logged", version=1, folder="SST-2", train_file="train.tsv", eval_file="dev.tsv",
                            text_columns=("sentence",), label_column="label", max_seq_len=64, format="custom",
                            reader=reader))
'''


def peftbench(*args, env):
    return subprocess.run([sys.executable, "-m", "peftbench.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def records(folder):
    return [json.loads(p.read_text()) for p in sorted((folder / "records").glob("*.json"))]


def test_search_never_reads_the_reported_split_and_resumes(tiny_model_dirs, cli_env, tmp_path):
    plugin = write_plugin(tmp_path, "logged", LOGGED_TASK)
    reads = tmp_path / "reads.log"
    env = dict(cli_env, PEFTBENCH_TEST_READS=str(reads))
    out = tmp_path / "out"
    args = ["run", "--plugins", plugin, "--model", tiny_model_dirs["bert"], "--tasks", "sst2-logged",
            "--methods", "full,lora", "--knob", "lora=2", "--lr-grid", "full=1e-5,3e-5", "--lr-grid", "lora=3e-4,1e-2",
            "--val-samples", "40", "--train-samples", "64", "--max-steps", "4", "--batch-size", "8",
            "--no-latency", "--no-progress", "--out", out]
    res = peftbench(*args, env=env)
    assert res.returncode == 0, res.stderr
    assert "after 4 learning-rate search run(s)" in res.stderr and res.stderr.count("learning rate chosen:") == 2
    search = records(out / "search")
    assert len(search) == 4 and all(r["spec"]["role"] == "search" for r in search)
    by_pid = {}
    for line in reads.read_text().splitlines():
        pid, name = line.split()
        by_pid.setdefault(int(pid), set()).add(name)
    for rec in search:  # each search run read the training file only, and scored held-out training rows
        assert by_pid[rec["env"]["pid"]] == {"train.tsv"}, by_pid
        assert rec["selection_metric"]["name"] == "accuracy" and rec["validation"]["samples"] == 40
        assert rec["data"]["eval_examples"] == 40 and rec["validation"]["stratified"]
    final = {r["spec"]["method"]: r for r in records(out)}
    assert set(final) == {"full", "lora"}
    for name, grid in (("full", [1e-5, 3e-5]), ("lora", [3e-4, 1e-2])):
        spec = final[name]["spec"]
        outcome = spec["lr_search"]
        assert outcome["grid"] == grid and spec["lr"] == outcome["chosen"] in grid and spec["lr_source"] == "searched"
        assert set(outcome["scores"]) == {f"{g:g}" for g in grid} and outcome["search_runs"] == 2
        assert outcome["seconds"] > 0 and outcome["steps"] == 8
        best = max(outcome["scores"].values())
        assert outcome["scores"][f"{outcome['chosen']:g}"] == best
        assert min(g for g in grid if outcome["scores"][f"{g:g}"] == best) == outcome["chosen"]  # ties: smaller
        assert by_pid[final[name]["env"]["pid"]] == {"train.tsv", "dev.tsv"}  # the final runs report on dev
    assert final["full"]["spec"]["lr"] != final["lora"]["spec"]["lr"]
    again = peftbench(*args, env=env)
    assert again.returncode == 0
    assert again.stderr.count("with an ok record; 0 to run") == 2  # neither the search nor the finals reran
    report = peftbench("report", out, env=env)
    assert "(searched" in report.stdout and "Learning rates: full: search 1e-05,3e-05 on 40 held-out" in report.stdout


def test_lr_and_search_for_the_same_method_is_bad_input(tiny_model_dirs, cli_env, tmp_path):
    res = peftbench("run", "--model", tiny_model_dirs["bert"], "--methods", "lora", "--lr", "lora=1e-3",
                    "--lr-grid", "lora=1e-4,1e-3", "--out", tmp_path / "o", env=cli_env)
    assert res.returncode == 2 and "--lr and a learning-rate search both set the rate of lora" in res.stderr
    res = peftbench("run", "--model", tiny_model_dirs["bert"], "--methods", "lora", "--lr-grid", "lora=1e-4",
                    "--out", tmp_path / "o", env=cli_env)
    assert res.returncode == 2 and "give at least two positive rates" in res.stderr
