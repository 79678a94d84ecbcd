"""Learning rates chosen on held-out training data: the reported split is never read while
choosing, the final records name the search, a rerun reruns nothing."""

import json
import shutil

import pytest

from conftest import cli_in_process, write_plugin

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


peftbench = cli_in_process  # in this process: no imports anew


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
    report = peftbench("report", out / "search", env=env)  # the candidates themselves: one rate a row
    assert "Learning rates: each row one candidate rate of a learning-rate search" in report.stdout, report.stdout

    # a search run checks the data it was planned on, the reported split included (hashed, never parsed)
    changed = tmp_path / "changed"
    shutil.copytree(cli_env["PEFTBENCH_DATA"], changed)
    with open(changed / "SST-2" / "dev.tsv", "a") as f:
        f.write("an added line\t1\n")
    (tmp_path / "search.json").write_text(json.dumps(search[0]))
    res = peftbench("run-spec", tmp_path / "search.json", "--out", tmp_path / "rerun", "--no-progress",
                    env=dict(env, PEFTBENCH_DATA=str(changed)))
    rec = records(tmp_path / "rerun")[0]
    assert res.returncode == 1
    assert rec["status"] == "failed" and "its data files changed since the sweep was planned" in rec["error"], rec


def test_lr_and_search_for_the_same_method_is_bad_input(tiny_model_dirs, cli_env, tmp_path):
    res = cli_in_process("run", "--model", tiny_model_dirs["bert"], "--methods", "lora", "--lr", "lora=1e-3",
                         "--lr-grid", "lora=1e-4,1e-3", "--out", tmp_path / "o", env=cli_env)
    assert res.returncode == 2 and "--lr and a learning-rate search both set the rate of lora" in res.stderr
    res = cli_in_process("run", "--model", tiny_model_dirs["bert"], "--methods", "lora", "--lr-grid", "lora=1e-4",
                         "--out", tmp_path / "o", env=cli_env)
    assert res.returncode == 2 and "give at least two positive rates" in res.stderr
    res = cli_in_process("run", "--model", tiny_model_dirs["bert"], "--methods", "lora", "--lr-extend", "2",
                         "--out", tmp_path / "o", env=cli_env)
    assert res.returncode == 2 and "--lr-extend 2 grows a learning-rate search's grid; add --lr-search" in res.stderr


def _fake_records(specs, score):
    return {s["run_id"]: {"status": "ok", "spec": s, "metrics": {"accuracy": score(s["lr"])}, "duration_s": 1.0,
                          "train": {"steps": 4}, "selection_metric": {"name": "accuracy", "direction": "higher"}}
            for s in specs}


def test_a_grid_grows_at_the_edge_its_best_rate_is_at():
    """--lr-extend: best at the top edge -> one more rate above (the grid's own step), until the
    best is inside or the extension is spent; a best inside the grid keeps the unextended run id."""
    from peftbench.lrsearch import expand, extend, finals
    from peftbench.records import run_id

    base = {"method": "lora", "label": "lora", "task": "sst2", "seed": 0, "data_seed": 0, "lr": None,
            "lr_source": "default"}
    base["run_id"] = run_id(base)
    rising = lambda lr: min(lr, 4e-3)  # noqa: E731  best at 4e-3 (ties go to the smaller rate)
    searches_specs, searches = expand([base], {"lora": [1e-4, 1e-3]}, 100, [0, 1], extend=3)
    records = _fake_records(searches_specs, rising)
    grown = []
    while more := extend(searches, records)[0]:
        grown.append(sorted({s["lr"] for s in more}))
        assert len(more) == 2  # one run per search seed
        records.update(_fake_records(more, rising))
    # 1e-3 at the top -> 1e-2 (x10, the grid's step), best again -> 1e-1, which only ties it: 1e-2 inside
    assert grown == [[1e-2], [1e-1]]
    spec = finals(searches, records)[0][0]
    assert spec["lr"] == 1e-2 and spec["lr_search"]["extended_by"] == [1e-2, 1e-1]
    assert spec["lr_selection"] == "search 0.0001,0.001,0.01,0.1 on 100 held-out (grown at its edge by 0.01,0.1)"

    # the best at the bottom edge grows the grid downwards; a spent extension stops there
    falling = lambda lr: -lr  # noqa: E731
    specs2, searches2 = expand([base], {"lora": [1e-4, 1e-3]}, 100, [0], extend=1)
    records2 = _fake_records(specs2, falling)
    more, lines = extend(searches2, records2)
    assert [s["lr"] for s in more] == [1e-5] and "best rate 0.0001 at the edge of 0.0001,0.001" in lines[0]
    records2.update(_fake_records(more, falling))
    assert extend(searches2, records2)[0] == []  # spent, though 1e-5 is at the edge again

    # inside the grid: nothing grows, and the final run's id is the one without --lr-extend
    peak = lambda lr: -abs(lr - 1e-3)  # noqa: E731
    ids = []
    for ext in (0, 2):
        specs3, searches3 = expand([base], {"lora": [1e-4, 1e-3, 1e-2]}, 100, [0], extend=ext)
        records3 = _fake_records(specs3, peak)
        assert extend(searches3, records3)[0] == []
        final = finals(searches3, records3)[0][0]
        assert final["lr"] == 1e-3 and final["lr_selection"] == "search 0.0001,0.001,0.01 on 100 held-out"
        ids.append(final["run_id"])
    assert ids[0] == ids[1]


def test_a_best_score_shared_with_another_rate_does_not_grow_the_grid():
    """CoLA: most methods scored MCC 0 at every rate; the tie rule took the smallest, and lr_extend
    grew those flat grids downward twice (18 runs at rates that could not be told apart either).
    A best score another rate matches (flat, or an edge tied with a rate inside) shows no trend
    toward the edge: the grid keeps its rates and the final run keeps its unextended id."""
    from peftbench.lrsearch import expand, extend, finals

    base = {"method": "lora", "label": "lora", "task": "cola", "seed": 0, "data_seed": 0, "lr": None,
            "lr_source": "default"}
    for score in (lambda lr: 0.0,  # flat: the majority class at every rate
                  lambda lr: {1e-3: 0.0, 3e-3: -0.04, 1e-2: 0.0}[lr],  # bottom edge tied with the top
                  lambda lr: {1e-3: 0.7, 3e-3: 0.7, 1e-2: 0.5}[lr]):  # bottom edge tied with a rate inside
        specs, searches = expand([base], {"lora": [1e-3, 3e-3, 1e-2]}, 500, [0], extend=2)
        records = _fake_records(specs, score)
        assert extend(searches, records) == ([], [])
        (final,), (line,) = finals(searches, records)
        assert ("a flat grid: every rate scored the same" in line) == (score(1e-3) == score(3e-3) == score(1e-2))
        assert final["lr_selection"] == "search 0.001,0.003,0.01 on 500 held-out"
        assert final["lr"] == min(lr for lr in (1e-3, 3e-3, 1e-2) if score(lr) == max(map(score, (1e-3, 3e-3, 1e-2))))
    # a unique best at the edge still grows it
    specs, searches = expand([base], {"lora": [1e-3, 3e-3, 1e-2]}, 500, [0], extend=2)
    assert [s["lr"] for s in extend(searches, _fake_records(specs, lambda lr: lr))[0]] == [0.0333]


def test_lr_extend_runs_the_grown_grid_and_resumes(tiny_model_dirs, cli_env, tmp_path):
    """A two-rate grid has its best at an edge: --lr-extend 1 searches one rate beyond it (once for
    both seeds, which share the search), the final runs name the grown grid, and running the
    command again runs nothing. STS-B: a tiny model's Pearson tells rates apart (its SST-2 accuracy
    is the majority class at every rate, a flat grid, which does not grow)."""
    out = tmp_path / "out"
    args = ["run", "--model", tiny_model_dirs["bert"], "--methods", "lora", "--tasks", "stsb", "--knob", "lora=2", "--lr-grid",
            "lora=1e-4,1e-3", "--lr-extend", "1", "--seeds", "0,1", "--val-samples", "40", "--train-samples", "64", "--max-steps", "3",
            "--batch-size", "8", "--no-latency", "--no-progress", "--out", out]
    res = peftbench(*args, env=cli_env)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("learning-rate grid grown: lora on stsb: best rate") == 1, res.stderr
    search = records(out / "search")
    assert sorted(r["spec"]["lr"] for r in search) in ([1e-5, 1e-4, 1e-3], [1e-4, 1e-3, 1e-2])
    final, other = records(out)
    assert {final["spec"]["seed"], other["spec"]["seed"]} == {0, 1} and final["spec"]["lr"] == other["spec"]["lr"]
    outcome = final["spec"]["lr_search"]
    assert outcome["grid"] == sorted(r["spec"]["lr"] for r in search) and len(outcome["extended_by"]) == 1
    assert "(grown at its edge by" in final["spec"]["lr_selection"] and final["spec"]["lr"] in outcome["grid"]
    again = peftbench(*args, env=cli_env)
    assert again.returncode == 0 and again.stderr.count("with an ok record; 0 to run") == 3, again.stderr


def test_the_best_mean_over_search_seeds_wins():
    """--search-seeds 0,1: a rate that is best on one seed but worse on average loses."""
    from peftbench.lrsearch import expand, finals

    base = {"method": "lora", "label": "lora", "task": "sst2", "seed": 0, "data_seed": 0, "lr": None,
            "lr_source": "default", "run_id": "x"}
    specs, searches = expand([base], {"lora": [1e-4, 1e-3]}, 100, [0, 1])
    assert sorted((s["lr"], s["seed"]) for s in specs) == [(1e-4, 0), (1e-4, 1), (1e-3, 0), (1e-3, 1)]
    scores = {(1e-4, 0): 0.75, (1e-4, 1): 0.75, (1e-3, 0): 0.9, (1e-3, 1): 0.5}
    records = _fake_records(specs, lambda lr: None)
    for r in records.values():
        r["metrics"]["accuracy"] = scores[r["spec"]["lr"], r["spec"]["seed"]]
    (spec,), _ = finals(searches, records)
    assert spec["lr"] == 1e-4 and spec["lr_search"]["scores"] == {"0.0001": 0.75, "0.001": pytest.approx(0.7)}


def test_a_rate_that_failed_on_any_search_seed_is_not_chosen():
    """A diverged seed or a NaN score rules its rate out (no crash, no rescue by the other seeds);
    when no rate is left, the final run is a named failure."""
    from peftbench.lrsearch import expand, finals

    base = {"method": "lora", "label": "lora", "task": "stsb", "seed": 0, "data_seed": 0, "lr": None,
            "lr_source": "default", "run_id": "x"}
    specs, searches = expand([base], {"lora": [1e-4, 1e-3, 1e-2]}, 100, [0, 1, 2])
    scores = {1e-4: 0.80, 1e-3: 0.85, 1e-2: 0.90}
    records = _fake_records(specs, scores.get)
    for r in records.values():
        lr, seed = r["spec"]["lr"], r["spec"]["seed"]
        if lr == 1e-3 and seed > 0:
            r["status"] = "diverged"  # best on seed 0, diverged on seeds 1 and 2
        if lr == 1e-2 and seed == 0:
            r["metrics"]["accuracy"] = float("nan")  # ended "ok" but scored NaN
    (spec,), _ = finals(searches, records)
    assert spec["lr"] == 1e-4 and spec["lr_search"]["scores"] == {"0.0001": pytest.approx(0.8)}
    assert spec["lr_search"]["failed_runs"] == 3
    for r in records.values():
        r["metrics"]["accuracy"] = float("nan")
    (spec,), (line,) = finals(searches, records)
    assert spec["lr"] is None and "no rate ran ok to a finite score on every search seed" in spec["plan_error"]
    assert line.endswith(": none, no rate ran ok to a finite score on every search seed (9 of 9 search runs did "
                         "not); its final runs are recorded failed"), line  # not "lr None (None ...: None)"


def test_a_final_planned_by_two_sweep_entries_runs_once(tiny_model_dirs, small_data):
    from peftbench.lrsearch import finals
    from peftbench.plan import SweepSettings, plan_all

    s = SweepSettings(methods="lora", tasks="sst2", seeds="0", model=str(tiny_model_dirs["bert"]), data_dir=str(small_data),
                      knob="lora=2", lr_grid=("lora=1e-4,1e-3",), val_samples=4, max_steps=1, train_samples=None)
    p = plan_all([s, s])
    records = _fake_records(p.searches, lambda lr: lr)
    assert len(finals(p.waiting, records)[0]) == 1
