"""`peftbench study targets / rank`: the LoRA paper's Tables 5 and 6 as sweeps on a tiny model."""

import json

from conftest import cli_in_process

TINY = ["--tasks", "sst2", "--seeds", "0", "--max-steps", "2", "--batch-size", "8", "--no-lr-search", "--no-progress"]


def study(*args, env):
    return cli_in_process("study", *args, env=env)  # in this process: no imports anew


def test_targets_solves_the_rank_per_set_and_resumes(tiny_model_dirs, cli_env, tmp_path):
    out = tmp_path / "targets"
    args = ["targets", "--model", tiny_model_dirs["bert"], "--sets", "q;q,v;q,k,v,o",
            "--budget", "lora[target_modules=q]:r=4", "--out", out, *TINY]
    res = study(*args, env=cli_env)
    assert res.returncode == 0, res.stderr
    assert 'budget = "lora[target_modules=q]:r=4"' in (out / "sweep.toml").read_text()
    table = res.stdout.split("The paper's shape (targets):", 1)[1]
    assert "| task | q | q,v | q,k,v,o |" in table
    row = next(ln for ln in table.splitlines() if ln.startswith("| sst2 |"))
    # the tiny BERT: 2 layers, hidden 32 -> one matrix type at r=4 is 2 x (4 x 32 + 32 x 4) = 512 parameters
    assert "(r=4, 512)" in row and "(r=2, 512)" in row and "(r=1, 512)" in row
    again = study(*args, "--plot", tmp_path / "targets.png", env=cli_env)  # a sweep: the same command resumes
    assert again.returncode == 0 and "skipping 3 run(s) with an ok record; 0 to run" in again.stderr
    assert (tmp_path / "targets.png").stat().st_size > 10_000  # the figure, from the records
    # `study show`: the same table from the folder alone (a study run from an edited sweep file has no command)
    shown = study("show", out, "--plot", tmp_path / "shown.png", env=cli_env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split("The paper's shape (targets):", 1)[1] == table
    assert (tmp_path / "shown.png").stat().st_size > 10_000
    assert "keep_checkpoints = false" in (out / "sweep.toml").read_text()  # a targets study keeps none unless asked
    kept = study("targets", "--model", tiny_model_dirs["bert"], "--sets", "q", "--budget", "lora[target_modules=q]:r=4",
                 "--keep-checkpoints", "--out", tmp_path / "kept", *TINY, env=cli_env)
    assert kept.returncode == 0 and "keep_checkpoints = true" in (tmp_path / "kept" / "sweep.toml").read_text()
    assert all(json.loads(p.read_text())["checkpoint"]["path"] for p in (tmp_path / "kept" / "records").glob("*.json"))


def test_rank_keeps_checkpoints_for_the_subspace_analysis(tiny_model_dirs, cli_env, tmp_path):
    out = tmp_path / "rank"
    res = study("rank", "--model", tiny_model_dirs["bert"], "--sets", "q;q,v", "--ranks", "1,2", "--out", out, *TINY,
                env=cli_env)
    assert res.returncode == 0, res.stderr
    table = res.stdout.split("The paper's shape (rank):", 1)[1]
    assert "| task | r | q | q,v |" in table and "| sst2 | 1 |" in table and "| sst2 | 2 |" in table
    recs = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert len(recs) == 4 and all(r["checkpoint"]["path"] for r in recs)
    # the figure: two panels (accuracy vs r, vs trainable parameters), one line per set, from the records
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from peftbench.report import records_frame, summarize
    from peftbench.studies import lora_paper

    calls = []
    real = plt.Axes.errorbar
    plt.Axes.errorbar = lambda ax, x, y, *a, **k: calls.append((list(x), list(y), k.get("label"))) or real(
        ax, x, y, *a, **k)
    try:
        lora_paper.plot(summarize(records_frame(recs)), "rank", tmp_path / "rank.png")
    finally:
        plt.Axes.errorbar = real
    assert sorted(c[2] for c in calls) == ["q", "q", "q,v", "q,v"] and all(len(c[0]) == 2 for c in calls)
    q_by_r = next(c for c in calls if c[2] == "q")
    assert q_by_r[0] == [1, 2] and (tmp_path / "rank.png").stat().st_size > 10_000
    # with the runs, each seed's value at its own rank (hollow points; one seed here: one point per rank and set)
    frame = records_frame(recs)
    dots = []
    real_scatter = plt.Axes.scatter
    plt.Axes.scatter = lambda ax, x, y, *a, **k: dots.append((list(x), list(y))) or real_scatter(ax, x, y, *a, **k)
    try:
        lora_paper.plot(summarize(frame), "rank", tmp_path / "rank-seeds.png", frame)
    finally:
        plt.Axes.scatter = real_scatter
    values = {(r["spec"]["label"], r["spec"]["knob_value"]): r["metrics"]["accuracy"] for r in recs}
    drawn = [d for d in dots if d[0]]  # (the legend's empty marker aside)
    assert len(drawn) == 2 * 4 and all(len(x) == 1 and len(y) == 1 for x, y in drawn)  # 2 panels x 4 runs
    assert sorted(y[0] for x, y in drawn) == sorted(list(values.values()) * 2)
    bad = study("rank", "--model", tiny_model_dirs["bert"], "--ranks", "0", "--out", out, *TINY, env=cli_env)
    assert bad.returncode == 2 and "ranks must be positive integers" in bad.stderr
    shown = study("show", out, env=cli_env)  # a rank study: its runs have ranks, not one budget
    assert shown.returncode == 0 and shown.stdout.split("The paper's shape (rank):", 1)[1] == table, shown.stderr


def test_study_show_bad_input(tmp_path, cli_env):
    (tmp_path / "empty").mkdir()
    for folder, extra in ((tmp_path / "empty", ()), (tmp_path / "missing", ()),
                          (tmp_path / "empty", ("--plot", tmp_path / "no" / "such" / "f.png"))):
        res = study("show", folder, *extra, env=cli_env)
        assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.count("\n") <= 2, res.stderr
    assert "has no records of lora runs" in study("show", tmp_path / "empty", env=cli_env).stderr


def test_targets_with_a_budget_no_set_reaches(tiny_model_dirs, cli_env, tmp_path):
    res = cli_in_process("study", "targets", "--model", tiny_model_dirs["bert"], "--sets", "q;q,v", "--budget", "5",
                         "--out", tmp_path / "t", *TINY, env=cli_env)
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.count("\n") <= 2, res.stderr
    assert "no target set reaches it" in res.stderr
    # a set that cannot meet the budget is left out, said in a line; the others run
    out = tmp_path / "some"
    res = cli_in_process("study", "targets", "--model", tiny_model_dirs["bert"], "--sets", "q;q,v",
                         "--budget", "lora[target_modules=q]:r=1", "--out", out, *TINY, env=cli_env)
    assert res.returncode == 0, res.stderr
    assert "warning: target set left out, q,v: budget 128 is out of reach" in res.stderr
    assert "target_modules=q,v" not in (out / "sweep.toml").read_text()
    # the folder's sweep file is another study's now: not overwritten
    res = cli_in_process("study", "targets", "--model", tiny_model_dirs["bert"], "--sets", "q",
                         "--budget", "lora[target_modules=q]:r=2", "--out", out, *TINY, env=cli_env)
    assert res.returncode == 2 and "plans another study than these options write" in res.stderr


def test_a_study_refused_leaves_no_sweep_file_and_a_set_naming_no_layers_is_refused(tiny_model_dirs, cli_env, tmp_path):
    out = tmp_path / "new" / "study"
    for bad, message in ((["--sets", "q", "--batch-size", "0"], "--batch-size must be positive"),
                         (["--sets", "q;zz"], "--sets: target set zz: lora: found no linear layers for target 'zz'")):
        res = cli_in_process("study", "targets", "--model", tiny_model_dirs["bert"], "--out", out, *TINY, *bad,
                             env=cli_env)
        assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
        assert res.stderr.startswith(f"Error: {message}"), res.stderr  # not naming the file it did not keep
        assert not (tmp_path / "new").exists()  # nothing written: the corrected command can use the folder
    used = tmp_path / "used"  # a folder with other files: they stay, the refused study's file does not
    used.mkdir()
    (used / "notes.md").write_text("mine")
    res = cli_in_process("study", "targets", "--model", tiny_model_dirs["bert"], "--out", used, *TINY,
                         "--batch-size", "0", env=cli_env)
    assert res.returncode == 2 and sorted(p.name for p in used.iterdir()) == ["notes.md"], res.stderr
    res = cli_in_process("study", "targets", "--model", tiny_model_dirs["bert"], "--sets", "q", "--out", out, *TINY,
                         env=cli_env)
    assert res.returncode == 0 and (out / "sweep.toml").is_file(), res.stderr


def test_lr_extend_enters_the_study_sweep_file(tiny_model_dirs, cli_env, tmp_path):
    out = tmp_path / "r"
    res = cli_in_process("study", "rank", "--model", tiny_model_dirs["bert"], "--sets", "q", "--ranks", "1",
                         "--lr-extend", "2", "--out", out, *TINY, env=cli_env)
    # TINY has --no-lr-search: a grid to grow is missing, which the sweep says in one line (and writes no file)
    assert res.returncode == 2 and "--lr-extend 2 grows a learning-rate search's grid" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not out.exists()
    from peftbench.cli.studies import _study_settings
    from peftbench.studies.lora_paper import sweep_file

    settings = _study_settings("trec", "0", "minilm", "2000", 2.0, None, 32, "fp32", False, True, 2)
    assert "lr_extend = 2" in sweep_file("rank", settings, ["q"], ranks=[1]).splitlines()


def test_the_study_file_pins_what_auto_precision_resolved_to(tiny_model_dirs, cli_env, tmp_path, monkeypatch):
    """--precision auto differs between machines (AMX or not); the study's sweep file names the
    precision it resolved to, so that the file plans the same runs (ids) on any machine."""
    from peftbench import precision

    monkeypatch.setattr(precision, "cpu_matmul_rates", lambda: {"fp32": 138.4, "bf16": 74.4})  # bf16 slower
    for flags, expected in (({"amx_bf16"}, "bf16"), ({"avx512_bf16"}, "fp32")):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: flags)
        out = tmp_path / expected
        res = cli_in_process("study", "rank", "--model", tiny_model_dirs["bert"], "--sets", "q", "--ranks", "1",
                             "--out", out, *TINY, env=cli_env)
        assert res.returncode == 0, res.stderr
        text = (out / "sweep.toml").read_text()
        assert f'precision = "{expected}"' in text and '"auto"' not in text
        assert {json.loads(p.read_text())["spec"]["precision"] for p in (out / "records").glob("*.json")} == {expected}


def test_a_set_run_at_several_rates_gets_a_column_per_rate():
    """A folder with one set at several rates given by flag (a search folder): each rate its own column,
    never one of them shown as the set's (it was the first row found)."""
    import pandas as pd

    from peftbench.studies import lora_paper

    rows = [("lora[target_modules=q] (lr 0.005)", 0.914), ("lora[target_modules=q] (lr 0.0005)", 0.790),
            ("lora[target_modules=q,v]", 0.930)]
    summary = pd.DataFrame([{"method": "lora", "config": c, "task": "trec", "metric": "accuracy", "metric_mean": m,
                             "metric_std": None, "knob_value": 8, "trainable_params": 100} for c, m in rows])
    head, _, body = lora_paper.table(summary, "targets").splitlines()[:3]
    assert head == "| task | q (lr 0.0005) | q (lr 0.005) | q,v |"
    assert "0.7900 (r=8, 100) | 0.9140 (r=8, 100) | 0.9300 (r=8, 100)" in body


def test_each_seed_is_read_under_its_own_tasks_metric():
    """A study over two tasks of different metrics (accuracy, mcc): a row's seeds are its task's metric for
    its configuration and rank, finished runs only (a first version read the first run's metric); runs of
    the same configuration under other settings (more epochs) are another row's."""
    from test_report import fake_record

    from peftbench.report import records_frame, summarize
    from peftbench.studies import lora_paper

    recs = [fake_record("trec", "lora", 0, 0.9)]
    recs += [fake_record("cola", "lora", seed, v, metric="mcc") for seed, v in ((1, 0.1), (0, 0.2))]
    recs += [{**fake_record("cola", "lora", 2, 0.0, metric="mcc"), "status": "failed", "metrics": {}}]
    longer = fake_record("cola", "lora", 0, 0.5, metric="mcc")
    longer["spec"]["epochs"], longer["run_id"] = 3, "longer"
    summary = summarize(records_frame(recs + [longer]))
    cola = [r for _, r in summary[(summary.method == "lora") & (summary.task == "cola")].iterrows()]
    assert sorted(tuple(lora_paper._seed_values(r).items()) for r in cola) == [((0, 0.2), (1, 0.1)), ((0, 0.5),)]
    trec = summary[(summary.method == "lora") & (summary.task == "trec")].iloc[0]
    assert lora_paper._seed_values(trec) == {0: 0.9}


def test_the_table_marks_the_best_and_what_is_within_noise_and_shows_each_seed():
    import numpy as np
    import pandas as pd

    from peftbench.studies import lora_paper

    rows = [("lora[target_modules=q]", 0.95, np.True_, None), ("lora[target_modules=v]", 0.61, np.False_, np.True_),
            ("lora[target_modules=q,v]", 0.90, np.False_, np.False_)]
    summary = pd.DataFrame([{"method": "lora", "config": c, "task": "trec", "metric": "accuracy", "metric_mean": m,
                             "metric_std": 0.01, "knob_value": 8, "trainable_params": 100, "best": b,
                             "within_noise": n} for c, m, b, n in rows])
    summary["_seeds"] = [{0: 0.95, 2: 0.96}, {2: 0.964, 0: 0.646, 1: 0.21}, {}]
    lines = lora_paper.table(summary, "targets", seeds=True).splitlines()
    assert lines[2] == ("| trec | **0.9500 ± 0.0100** (r=8, 100) | 0.6100 ± 0.0100 (r=8, 100) ≈ | "
                        "0.9000 ± 0.0100 (r=8, 100) |")
    assert lines[3] == "| each seed (0, 1, 2) | 0.950, –, 0.960 | 0.646, 0.210, 0.964 | –, –, – |"
    assert "bold: the best of the task; ≈: within noise of it" in lora_paper.table(summary, "targets")
    assert "each seed" not in lora_paper.table(summary, "targets") + lora_paper.table(summary, "rank", seeds=True)
    assert [lora_paper._flag(v) for v in (np.float32("nan"), pd.NA, None, np.True_, 0.0, 1.0)] == [
        False, False, False, True, False, True]
