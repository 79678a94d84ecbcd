"""Report features on hand-made records: the gap to the best row with its interval, the trivial
baseline row, bold best values, the summary across tasks, plots, record-folder discovery and the
HTML page (in a real headless browser)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from peftbench.report import overview, record_folders, records_frame, render, summarize
from peftbench.report.plots import _baselines, pareto_front
from peftbench.report.stats import gap_interval


def fake_record(task, method, seed, value, *, params=1000, knob="r", knob_value=8, metric="accuracy",
                trivial=0.5, direction="higher", budget="lora:r=8", sps=100.0, lat=1.05):
    spec = {"task": task, "method": method, "label": method, "seed": seed, "knob": knob, "knob_value": knob_value,
            "budget": budget, "budget_params": 1000 if budget else None, "lr": 1e-3, "model": "tiny", "epochs": 1,
            "batch_size": 8, "max_seq_len": 64, "device": "cpu", "precision": "fp32", "task_version": 1}
    rid = f"{task}-{method}-{knob_value}-{seed}"
    return {"run_id": rid, "status": "ok", "spec": spec, "metrics": {metric: value},
            "metric_directions": {metric: direction},
            "params": {"method": params, "head": 10, "method_pct": params / 1e5},
            "train": {"samples_per_s": sps, "steps": 10}, "memory": {"peak_mem_bytes": 2**30},
            "latency": {"timings": {"unmerged_b1": {"median_ms": 10.0 * lat}, "base_b1": {"median_ms": 10.0}},
                        "ratio_unmerged_b1": lat},
            "checkpoint": {"bytes": 4 * params}, "env": {"git_commit": "abc1234", "device": "cpu"},
            "trivial": {"predicts": 0, "kind": "the majority class of the training examples for every example",
                        "metrics": {metric: trivial}}}


def bench_records():
    """Two tasks: on sst2 lora is clearly best and adapter within noise of it; prefix clearly worse."""
    recs = []
    for seed, (lo, ad, pr) in enumerate([(0.80, 0.79, 0.70), (0.82, 0.83, 0.71), (0.81, 0.80, 0.72)]):
        recs += [fake_record("sst2", "lora", seed, lo), fake_record("sst2", "adapter", seed, ad, knob="bottleneck"),
                 fake_record("sst2", "prefix", seed, pr, knob="prefix_len")]
        recs += [fake_record("trec", "lora", seed, 0.90 + 0.01 * seed, trivial=0.2),
                 fake_record("trec", "prefix", seed, 0.93 + 0.01 * seed, knob="prefix_len", trivial=0.2)]
    recs.append(fake_record("sst2", "lora", 0, 0.75, params=300, knob_value=2, budget="0.1%"))
    return recs


@pytest.fixture
def summary():
    return summarize(records_frame(bench_records()))


def test_gap_interval_paired_and_bootstrap():
    row, best = {0: 0.80, 1: 0.82, 2: 0.81}, {0: 0.81, 1: 0.84, 2: 0.82}
    g = gap_interval(row, best)
    d = np.array([-0.01, -0.02, -0.01])
    half = 4.302653 * d.std(ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert g["test"] == "paired t, 3 seeds"
    assert g["gap"] == pytest.approx(d.mean()) and g["high"] == pytest.approx(d.mean() + half, rel=1e-5)
    b = gap_interval({5: 0.7, 6: 0.72}, {0: 0.9, 1: 0.91, 2: 0.89})  # no shared seeds
    assert b["test"].startswith("bootstrap") and b["low"] <= b["gap"] <= b["high"] < 0
    assert gap_interval({0: 0.7}, {1: 0.9})["test"] == "too few seeds for an interval"


def test_significance_best_and_noise(summary):
    s = summary.set_index(["task", "config", "budget"])
    assert bool(s.loc[("sst2", "lora", "lora:r=8"), "best"]) and bool(s.loc[("trec", "prefix", "lora:r=8"), "best"])
    adapter = s.loc[("sst2", "adapter", "lora:r=8")]
    assert adapter.gap_to_best == pytest.approx(-0.0033333, abs=1e-6) and adapter.within_noise is True
    prefix = s.loc[("sst2", "prefix", "lora:r=8")]
    assert prefix.within_noise is False and prefix.gap_ci_high < 0 and prefix.gap_test == "paired t, 3 seeds"
    # one seed against three (the 0.1% row): too few values for an interval on its side
    assert s.loc[("sst2", "lora", "0.1%"), "gap_test"] == "too few seeds for an interval"


def test_baseline_rows_bold_and_caption(summary):
    base = summary[summary.role == "baseline"]
    assert list(base.task) == ["sst2", "trec"] and list(base.metric_mean) == [0.5, 0.2]
    assert not base.best.any() and base.gap_to_best.isna().all()
    md = render(summary, "md")
    lines = md.splitlines()
    assert "vs best (95% CI)" in lines[0]
    assert any("| trivial baseline (majority class) |" in ln and "accuracy ↑ 0.5000" in ln for ln in lines)
    lora = next(ln for ln in lines if ln.startswith("| sst2 | lora | r=8"))
    assert "**accuracy ↑ 0.8100**" in lora and "| best |" in lora
    adapter = next(ln for ln in lines if ln.startswith("| sst2 | adapter |"))
    assert "≈" in adapter and "**" not in adapter.split("|")[6]
    assert "≈ = the interval contains 0" in md and "Trivial baseline:" in md
    assert "\\textbf{accuracy $\\uparrow$ 0.8100}" in render(summary, "latex")
    assert "<b>accuracy ↑ 0.8100</b>" in render(summary, "html")
    csv = pd.read_csv(pd.io.common.StringIO(render(summary, "csv")))
    assert {"best", "gap_to_best", "gap_ci_low", "within_noise", "role"} <= set(csv.columns)
    assert not any(c.startswith("_") for c in csv.columns)


def test_latency_is_bold_by_its_ratio_to_the_base_model():
    """Latency in ms comes from separate runs on a machine whose speed moves: the best latency is
    the lowest ratio to the base model timed in the same process, not the fewest ms."""
    fast_machine = fake_record("sst2", "lora", 0, 0.8, lat=1.10)  # 11 ms, 1.10x the base
    slow_machine = fake_record("sst2", "adapter", 0, 0.8, knob="bottleneck", lat=1.02)
    slow_machine["latency"]["timings"] = {"unmerged_b1": {"median_ms": 15.3}, "base_b1": {"median_ms": 15.0}}
    slow_machine["memory"]["peak_mem_bytes"] = 2**29  # CPU RSS: not marked best (the allocator keeps freed memory)
    md = render(summarize(records_frame([fast_machine, slow_machine])), "md")
    col = md.splitlines()[0].split("|").index(" b1 ms ↓ (vs base) ")
    cells = {ln.split("|")[2].strip(): ln.split("|")[col] for ln in md.splitlines() if ln.startswith("| sst2 |")}
    assert "**" in cells["adapter"] and "**" not in cells["lora"], cells
    assert "latency: the lowest ratio to the base model" in md
    peak = md.splitlines()[0].split("|").index(" peak MB ↓ (Δ train) ")
    assert not any("**" in ln.split("|")[peak] for ln in md.splitlines() if ln.startswith("| sst2 |"))  # CPU RSS


def test_overview_across_tasks(summary):
    ov = overview.overview(summary)
    rows = ov.set_index("config")
    assert list(ov.config)[0] == overview.BASELINE
    assert rows.loc[overview.BASELINE, "sst2"] == 0.5 and rows.loc[overview.BASELINE, "trec"] == 0.2
    # lora: rank 1 on sst2, 2 on trec; prefix: 4 (behind lora at 0.1%) and 1; adapter only on sst2 (rank 2)
    assert rows.loc["lora", "mean_rank"] == 1.5 and rows.loc["prefix", "mean_rank"] == 2.5
    assert rows.loc["adapter", "n_tasks"] == 1 and pd.isna(rows.loc["adapter", "trec"])
    assert "lora @ 0.1%" in rows.index  # another budget than the task's main one: its own row
    md = overview.to_markdown(ov)
    assert md.splitlines()[0].startswith("| method | sst2 (accuracy) | trec (accuracy) | mean rank ↓")
    assert "| lora | **0.8100 ± 0.0100** | 0.9100 ± 0.0100 | 1.5 (2) |" in md


def test_pareto_front():
    params, values = [10, 100, 1000, 50, 5000], [0.5, 0.7, 0.9, 0.4, 0.85]
    assert pareto_front(params, values) == [0, 1, 2]
    assert pareto_front(params, [1.0, 0.5, 0.2, 2.0, 0.1], higher=False) == [0, 1, 2, 4]


def test_a_far_baseline_is_written_at_the_edge_not_drawn():
    """TREC: methods at 0.94-0.97, the majority class at 0.19; drawing it would squeeze the methods
    into a sliver. A baseline within the methods' band height is drawn as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = pd.DataFrame({"metric_mean": [0.94, 0.97], "metric_std": [0.01, 0.005]})
    for value, drawn in ((0.19, False), (0.92, True)):
        fig, ax = plt.subplots()
        ax.plot([1, 2], [0.94, 0.97])
        _baselines(ax, methods, pd.DataFrame({"metric_mean": [value], "config": ["trivial baseline"]}))
        notes = [t.get_text() for t in ax.texts]
        lo, hi = ax.get_ylim()
        plt.close(fig)
        if drawn:
            assert not notes and lo <= value
        else:
            assert lo > 0.9 and hi < 1.0 and notes == ["↓ trivial baseline: 0.19 (off the axis)"]


def test_record_folders_recurse(tmp_path):
    for folder in ("a/records", "b/deep/records", "b/deep/search/records", "a/records/superseded"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "stray.json").write_text("{}")
    assert record_folders(tmp_path) == [tmp_path / "a", tmp_path / "b" / "deep"]
    assert record_folders(tmp_path / "a") == [tmp_path / "a"]
    assert record_folders(tmp_path / "a" / "records") == []  # no JSON in it yet


def test_report_command_recurses_and_writes_page(tmp_path):
    for rec in bench_records():
        folder = tmp_path / "results" / rec["spec"]["task"] / "records"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    from conftest import cli_in_process

    run = lambda *a: cli_in_process("report", *a)  # noqa: E731
    res = run(tmp_path / "results", "--summary")
    assert res.returncode == 0, res.stderr
    assert "| lora | **0.8100 ± 0.0100** |" in res.stdout
    page, plot, costs = tmp_path / "page.html", tmp_path / "plot.png", tmp_path / "costs.png"
    res = run(tmp_path / "results", "--format", "html", "--out", page, "--plot", plot, "--cost-plot", costs)
    assert res.returncode == 0, res.stderr
    assert plot.stat().st_size > 10_000 and costs.stat().st_size > 10_000
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 2 and "<script>" in text and "http" not in text.split("<body>")[1]
    assert 'id="summary"' in text and 'id="table-sst2"' in text and 'id="table-trec"' in text
    res = run(tmp_path / "results", "--summary", "--format", "latex")
    assert res.returncode == 2 and "--summary is written as md, csv or html" in res.stderr
    # what cannot be written or shown is said before anything prints
    for args, said in [(("--plot", tmp_path / "nodir" / "p.png"), "--plot"), (("-o", tmp_path), "is a folder"),
                       (("--task", "sst3"), "--task sst3: no records of it"), (("--task", "sst3"), "did you mean sst2")]:
        res = run(tmp_path / "results", *args)
        assert res.returncode == 2 and said in res.stderr and res.stdout == "", (args, res.stderr)
    browser_check(page, tmp_path)


def browser_check(page, tmp_path):
    """Open the page in headless Chromium: no console errors, tables and both plots rendered, a
    header click sorts. Skipped where Chromium is missing unless PEFTBENCH_REQUIRE_BROWSER=1 (CI)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        if os.environ.get("PEFTBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail("PEFTBENCH_REQUIRE_BROWSER=1 but Chromium or playwright is missing (apt-get install chromium)")
        pytest.skip("no Chromium here (apt-get install chromium; CI requires it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 900})
            errors = []
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(page.as_uri())
            tab.wait_for_load_state("load")
            assert errors == []
            for img in ("#plot-metric", "#plot-costs"):  # decoded and laid out
                assert tab.eval_on_selector(img, "i => i.complete && i.naturalWidth > 500 && i.clientWidth > 100")
            assert tab.locator("#summary tbody tr").count() == 5
            # a metric cell sorts by its value (as text, "mcc ↑ -0.25" would sort after "mcc ↑ -0.10")
            value = lambda text: tab.evaluate("t => cellValue({textContent: t})", text)  # noqa: E731
            assert value("mcc ↑ -0.2500") == -0.25 and value("accuracy ↑ 0.8100") == 0.81
            assert value("lora:r=8 (+0.0%)") == "lora:r=8 (+0.0%)" and abs(value("73.7k (0.325%)") - 73_700) < 1e-6
            assert tab.locator("#table-sst2 tbody tr").count() == 5
            first = lambda: tab.locator("#table-sst2 tbody tr").first.locator("td").nth(1).inner_text()  # noqa: E731
            header = tab.locator("#table-sst2 th", has_text="metric")
            header.click()  # ascending by the metric: the trivial baseline (0.5) first
            assert first() == "trivial baseline (majority class)"
            header.click()
            assert first() == "lora"
            shot = tmp_path / "page.png"
            tab.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 50_000
            assert errors == []
        finally:
            browser.close()


def test_trivial_baseline_majority_and_mean():
    from peftbench.plugins import get_task
    from peftbench.runner import trivial_baseline

    sst2, stsb = get_task("sst2"), get_task("stsb")
    out = trivial_baseline(sst2, {"labels": [1, 1, 0, 1]}, np.array([0, 1, 1, 0, 1]))
    assert out["predicts"] == 1 and out["metrics"] == {"accuracy": 0.6}
    out = trivial_baseline(stsb, {"labels": [0.2, 0.4, 0.9]}, np.array([0.1, 0.5, 0.7]))
    assert out["predicts"] == pytest.approx(0.5) and out["metrics"] == {"pearson": 0.0, "spearman": 0.0}
    # STS-B's real case (its 1,500 dev pairs, the mean of its training targets): np.std of that
    # constant prediction is 1.1e-16, not 0, and scipy's correlation of it is NaN
    from peftbench_tasks.metrics import pearson, spearman

    constant, gold = np.full(1500, 0.5401998128753968), np.random.default_rng(1).uniform(0, 1, 1500)
    assert np.std(constant) > 0 and pearson(constant, gold) == 0.0 and spearman(constant, gold) == 0.0


def test_a_table_of_failed_runs_only(tmp_path):
    rec = fake_record("sst2", "lora", 0, 0.5)
    rec.update(status="failed", error="boom", metrics={})
    del rec["trivial"]
    summary = summarize(records_frame([rec]))
    md = render(summary, "md")
    assert "| sst2 | lora |" in md and "1 failed" in md
    assert overview.overview(summary).empty
    assert overview.to_markdown(overview.overview(summary)).startswith("(no run finished with a metric: the table")
    rec["params"] = {}  # a run that failed before counting: its budget without a deviation, not "(%)"
    md = render(summarize(records_frame([rec])), "md")
    assert "| lora:r=8 |" in md and "(%)" not in md
    # nothing to plot: one line, no file (was an IndexError); the HTML page has the table and no plot
    from peftbench.errors import PeftbenchError
    from peftbench.report import page, plots

    unmeasured = summary.assign(train_samples_per_s=np.nan)  # failed before training
    for draw in (plots.plot, plots.plot_costs):
        with pytest.raises(PeftbenchError, match="nothing to plot: no run in these records has"):
            draw(unmeasured, tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()
    with pytest.raises(PeftbenchError, match="has measured costs"):  # both checked before either is drawn
        plots.check_plottable(summary.assign(train_samples_per_s=np.nan), metric=False, costs=True)
    html = page.render_page(unmeasured)
    assert "1 failed" in html and "plot-metric" not in html and "plot-costs" not in html


def test_the_caption_names_the_cpu_and_says_when_rows_differ():
    """Sessions get different machines: a table whose runs ran on two CPUs says so (costs compare
    only within one); records from before the CPU was recorded add nothing."""
    from peftbench.report import to_markdown

    recs = bench_records()
    plain = to_markdown(summarize(records_frame(recs)))  # no record names its CPU
    assert "CPUs differ" not in plain and "; CPU " not in plain
    for i, r in enumerate(recs):
        r["env"] |= {"cpu": "Xeon A", "cpu_bf16": ["amx_bf16", "avx512_bf16"]} if i % 2 else {"cpu": "Xeon B",
                                                                                              "cpu_bf16": []}
    text = to_markdown(summarize(records_frame(recs)))
    assert "CPUs differ between rows (Xeon A (amx_bf16/avx512_bf16), Xeon B)" in text
    for r in recs:
        r["env"] |= {"cpu": "Xeon B", "cpu_bf16": []}
    assert "; CPU Xeon B." in to_markdown(summarize(records_frame(recs)))
    # a run cancelled before it started has no environment: it adds no empty library version
    for r in recs:
        r["env"]["torch"] = "2.13.0"
    cancelled = fake_record("sst2", "bitfit", 0, 0.5)
    recs.append({k: v for k, v in cancelled.items() if k not in ("env", "metrics")} | {"status": "cancelled"})
    text = to_markdown(summarize(records_frame(recs)))
    assert "| sst2 | bitfit |" in text and "libraries torch 2.13.0; CPU Xeon B." in text and "libraries differ" not in text


def test_equal_seed_values_tie_whatever_the_order_records_are_read_in():
    """TREC's BitFit {0.952, 0.922, 0.946} and LoRA at 0.1% {0.934, 0.954, 0.932} both average 0.94,
    but summed in another order one mean is 0.9400000000000001: their ranks must not depend on that."""
    a, b = (0.952, 0.922, 0.946), (0.934, 0.954, 0.932)
    assert sum(a) / 3 != sum(b) / 3  # the trap is real: 0.9400000000000001 vs 0.94
    recs = [fake_record("trec", "bitfit", s, v, knob=None, knob_value=None) for s, v in enumerate(a)]
    recs += [fake_record("trec", "lora", s, v) for s, v in enumerate(b)]
    recs.append(fake_record("trec", "prefix", 0, 0.99, knob="prefix_len"))
    for order in (recs, recs[::-1], recs[3:] + recs[:3]):
        ov = overview.overview(summarize(records_frame(order))).set_index("config")
        assert ov.loc["bitfit", "trec"] == ov.loc["lora", "trec"] == 0.94
        assert ov.loc["bitfit", "trec_rank"] == ov.loc["lora", "trec_rank"] == 2


def test_a_row_with_two_records_of_one_seed_is_warned_about(tmp_path):
    recs = bench_records()
    twin = json.loads(json.dumps(recs[0]))  # sst2 lora seed 0 again, under another run id (e.g. other code)
    twin["run_id"] = "another-run"
    assert summarize(records_frame(recs)).n_seeds.max() == 3
    from peftbench.report import duplicate_seeds

    assert duplicate_seeds(records_frame(recs)) == []
    lines = duplicate_seeds(records_frame([*recs, twin]))
    assert lines == ["sst2 / lora: ok records share a seed (seed 0: another-run, sst2-lora-8-0); the row averages "
                     "them: keep one record per seed (move the others to records/superseded/)"]
    folder = tmp_path / "records"
    folder.mkdir()
    for rec in [*recs, twin]:
        (folder / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    from conftest import cli_in_process

    res = cli_in_process("report", tmp_path)
    assert res.returncode == 0 and f"warning: {lines[0]}" in res.stderr


def test_the_summary_marks_a_gap_without_an_interval_and_puts_partial_rows_last():
    recs = bench_records()
    recs.append(fake_record("trec", "bitfit", 0, 0.5, knob=None, knob_value=None))  # one seed, far behind
    ov = overview.overview(summarize(records_frame(recs)))
    # adapter (sst2 only, rank 2) comes after prefix (mean rank 2.5 over both tasks)
    assert list(ov.n_tasks)[1:] == sorted(ov.n_tasks[1:], reverse=True)
    assert list(ov.config).index("adapter") > list(ov.config).index("prefix")
    rows = ov.set_index("config")
    assert rows.loc["bitfit", "trec_noise"] is None and rows.loc["adapter", "sst2_noise"] is True
    assert rows.loc["prefix", "sst2_noise"] is False
    md = overview.to_markdown(ov)
    bitfit = next(ln for ln in md.splitlines() if ln.startswith("| bitfit |"))
    assert "| 0.5000 ? |" in bitfit and "?: no interval, it or the best has one seed" in md
    assert "| 0.7500 ? |" in md  # lora at 0.1%: one seed
    plain = overview.to_markdown(overview.overview(summarize(records_frame(bench_records()[:-1]))))
    assert " ?" not in plain and "no interval" not in plain  # three seeds a row: every gap has its interval


def test_two_rows_under_one_summary_key_rank_and_cost_as_one():
    """One task with a configuration at two sizes outside any budget (one row each in its table, one
    key in the summary): the summary keeps the better, ranks only it and takes only its costs."""
    recs = bench_records()
    for seed in range(3):
        other = fake_record("trec", "prefix", seed, 0.92, knob="prefix_len", knob_value=16, budget=None,
                            params=99_999)
        other["run_id"] = f"trec-prefix-16-{seed}"
        recs.append(other)
    s = summarize(records_frame(recs))
    assert len(s[(s.task == "trec") & (s.config == "prefix")]) == 2
    ov = overview.overview(s).set_index("config")
    assert ov.loc["prefix", "trec"] == pytest.approx(0.94) and ov.loc["prefix", "trec_rank"] == 1
    assert ov.loc["lora", "trec_rank"] == 2  # not pushed behind the row left out
    assert ov.loc["prefix", "trainable_pct"] == pytest.approx(0.01)  # its costs only, not the other size's


def test_a_search_whose_rates_all_scored_the_same_is_called_flat_not_an_edge():
    """On CoLA most methods scored MCC 0 at every rate: the smallest was taken by the tie rule, which
    is no evidence that a smaller rate might do better ('bottom of grid'); the table says 'flat grid'."""
    from peftbench.report import to_markdown

    def searched(scores, chosen):
        recs = [fake_record("cola", "lora", seed, 0.0, metric="mcc", trivial=0.0) for seed in range(2)]
        for r in recs:
            r["spec"] |= {"lr": chosen, "lr_selection": "search 0.001,0.003,0.01 on 500 held-out",
                          "lr_search": {"chosen": chosen, "grid": [1e-3, 3e-3, 1e-2], "scores": scores}}
        return to_markdown(summarize(records_frame(recs)))

    flat = searched({"0.001": 0.0, "0.003": 0.0, "0.01": 0.0}, 1e-3)
    assert "0.001 (searched, flat grid)" in flat and "'flat grid': every rate scored the same" in flat
    edge = searched({"0.001": 0.1, "0.003": 0.0, "0.01": 0.0}, 1e-3)
    assert "0.001 (searched, bottom of grid)" in edge and "flat grid" not in edge
    tied = searched({"0.001": 0.1, "0.003": 0.0, "0.01": 0.1}, 1e-3)
    assert "0.001 (searched, bottom of grid, tied)" in tied and "'tied': another rate scored as well" in tied
    assert "'tied'" not in edge and "'tied'" not in flat
    inside = searched({"0.001": 0.0, "0.003": 0.2, "0.01": 0.0}, 3e-3)
    assert "0.003 (searched)" in inside and "(searched, " not in inside


def markdown(recs) -> str:
    """The Markdown table of these records, as `peftbench report` writes it."""
    return render(summarize(records_frame(recs)), "md")


def test_the_mfu_caption_says_which_flops_count_and_marks_rows_of_the_other():
    def with_mfu(rec, counted):
        rec["train"].update({"mfu": 0.2, **({"flops_count": "counted: torch FlopCounterMode ..."} if counted else {})})
        return rec

    counted = markdown([with_mfu(fake_record("sst2", "lora", s, 0.8), True) for s in (0, 1)])
    assert "counted by torch's FlopCounterMode" in counted and "analytic" not in counted
    analytic = markdown([with_mfu(fake_record("sst2", "lora", s, 0.8), False) for s in (0, 1)])
    assert "analytic FLOPs per token" in analytic and "FlopCounterMode" not in analytic
    mixed = markdown([with_mfu(fake_record("sst2", "lora", s, 0.8), True) for s in (0, 1)]
               + [with_mfu(fake_record("sst2", "adapter", 0, 0.8, knob="bottleneck"), False)]
               + [with_mfu(fake_record("sst2", "prefix", s, 0.8, knob="prefix_len"), s == 0) for s in (0, 1)])
    col = mixed.splitlines()[0].split("|").index(" MFU ")
    cells = {ln.split("|")[2].strip(): ln.split("|")[col].strip() for ln in mixed.splitlines() if ln.startswith("| sst2 |")}
    assert cells["lora"] == "20.0%" and cells["adapter"] == "20.0% (a)" and cells["prefix"] == "20.0% (m)", cells
    assert "values marked (a): analytic" in mixed


def test_a_tasks_further_metric_columns_carry_their_direction():
    """Generation: NIST, METEOR, ... beside BLEU; each column says which way is better, as the metric's does
    (a metric a plugin declares lower-is-better gets ↓; one no record gives a direction for, none)."""
    recs = []
    for s in (0, 1):
        rec = fake_record("e2e", "lora", s, 0.6, metric="bleu")
        rec["metrics"].update({"nist": 7.0 + s, "ter": 0.5})
        rec["metric_directions"].update({"nist": "higher", "ter": "lower"})
        recs.append(rec)
    header = markdown(recs).splitlines()[0]
    assert "| nist ↑ |" in header and "| ter ↓ |" in header, header
    for rec in recs:
        rec["metric_directions"] = {"bleu": "higher"}
    header = markdown(recs).splitlines()[0]
    assert "| nist |" in header and "| ter |" in header, header


def test_the_mfu_caption_says_which_peak_readings_the_mfu_divides_by():
    def with_peak(rec, two):
        rec["train"].update({"mfu": 0.2, "flops_count": "counted: torch FlopCounterMode ...",
                             **({"mfu_peak_gflops": 90.0} if two else {})})
        return rec

    two = markdown([with_peak(fake_record("sst2", "lora", s, 0.8), True) for s in (0, 1)])
    assert "the higher of two short readings" in two and "the start's alone" not in two
    start = markdown([with_peak(fake_record("sst2", "lora", s, 0.8), False) for s in (0, 1)])
    assert "the peak is one short reading" in start and "higher of" not in start
    mixed = markdown([with_peak(fake_record("sst2", "lora", s, 0.8), s == 0) for s in (0, 1)])
    assert "the start's alone for the others" in mixed


def test_rows_of_a_fixed_size_method_run_under_different_settings_are_told_apart():
    """Two learning rates of full fine-tuning (a search folder's candidates): their labels say which
    is which, as a sized method's do (a fixed-size method's knob is NaN, which never equals itself)."""
    recs = []
    for lr in (1e-4, 1e-3):
        for method, knob, knob_value in (("full", None, None), ("lora", "r", 8)):
            rec = fake_record("sst2", method, 0, 0.8 + lr, knob=knob, knob_value=knob_value)
            rec["spec"]["lr"] = lr
            rec["run_id"] += f"-{lr}"
            recs.append(rec)
    configs = set(summarize(records_frame(recs)).config) - {"trivial baseline (majority class)"}
    assert configs == {"full (lr 0.0001)", "full (lr 0.001)", "lora (lr 0.0001)", "lora (lr 0.001)"}, configs


def test_rows_evaluated_differently_are_not_averaged():
    """Runs that differ only in what was evaluated (split, decoding, metrics, processes) are rows of
    their own, each label saying how it differs."""
    recs = []
    for seed, change in enumerate(({"eval_split": "test"}, {"eval_split": "validation"},
                                   {"eval_split": "test", "generation": {"num_beams": 4}},
                                   {"eval_split": "test", "nproc": 2})):
        rec = fake_record("e2e", "lora", seed, 0.6 + seed / 100, metric="bleu")
        rec["spec"].update({"eval_split": "test", "generation": {"num_beams": 1}, "metrics": ["bleu"], **change})
        recs.append(rec)
    summary = summarize(records_frame(recs))
    rows = summary[summary.role != "baseline"]
    assert len(rows) == 4 and set(rows.n_seeds) == {1}, rows[["config", "n_seeds"]]
    assert any("eval split validation" in c for c in rows.config) and any("num_beams=4" in c for c in rows.config)
    assert any("nproc 2" in c for c in rows.config), list(rows.config)


def test_the_summary_keeps_each_size_of_a_rank_study():
    """Sizes set directly (no budget) are rows of their own: folding them under one label would
    keep whichever size scored best on the reported split."""
    recs = [fake_record("trec", "lora", seed, value, knob_value=r, budget=None, params=100 * r)
            for r, value in ((1, 0.90), (64, 0.95)) for seed in (0, 1)]
    ov = overview.overview(summarize(records_frame(recs))).set_index("config")
    assert {"lora r=1", "lora r=64"} <= set(ov.index), list(ov.index)
    assert ov.loc["lora r=1", "trec"] == pytest.approx(0.90) and ov.loc["lora r=64", "trec"] == pytest.approx(0.95)


def test_the_summary_keeps_each_models_sizes_apart_and_gives_the_baseline_no_costs():
    """Tasks on two models (MiniLM's GLUE, SmolLM2's E2E): a median of peak MB or checkpoint bytes over
    both would rise with how many of a row's tasks ran on the larger model, so those get a column per
    model; ratios (params %, throughput and latency vs full/base) stay one column. The untuned model's
    record (a generation task's baseline) gives the baseline row no costs."""
    recs = bench_records()
    for seed in range(3):
        for method, value in (("lora", 0.60), ("prefix", 0.55)):
            rec = fake_record("e2e", method, seed, value, metric="bleu", params=5000, trivial=0.07)
            rec["spec"]["model"], rec["memory"]["peak_mem_bytes"] = "big", 8 * 2**30
            rec["run_id"] = f"e2e-{method}-{seed}"
            recs.append(rec)
    base = fake_record("e2e", "base", 0, 0.07, metric="bleu", params=0, knob=None, knob_value=None, budget=None)
    base["spec"]["model"], base["params"]["head"], base["run_id"] = "big", 0, "e2e-base"  # nothing trained
    base.pop("trivial")
    recs.append(base)
    s = summarize(records_frame(recs))
    assert s[(s.task == "e2e") & (s.role == "baseline")].method.tolist() == ["base"]
    ov = overview.overview(s)
    rows = ov.set_index("config")
    assert rows.loc[overview.BASELINE, "e2e"] == 0.07
    assert rows.loc["lora", "peak_mem_mb@tiny"] == 1024 and rows.loc["lora", "peak_mem_mb@big"] == 8192
    assert rows.loc["adapter", "peak_mem_mb@tiny"] == 1024 and pd.isna(rows.loc["adapter", "peak_mem_mb@big"])
    assert rows.loc["lora", "checkpoint_bytes@big"] == 20000 and "peak_mem_mb" not in rows
    assert rows.loc[overview.BASELINE, [c for c in rows if c.startswith(("peak", "checkpoint", "trainable"))]].isna().all()
    head = overview.to_markdown(ov).splitlines()[0]
    assert "| peak MB ↓ (big) | peak MB ↓ (tiny) | ckpt ↓ (big) | ckpt ↓ (tiny) |" in head
    one = overview.to_markdown(overview.overview(summarize(records_frame(bench_records())))).splitlines()[0]
    assert "| peak MB ↓ | ckpt ↓ |" in one
    for rec in recs:  # records that do not say their model: their sizes under "?", not dropped
        if rec["spec"]["task"] == "trec":
            del rec["spec"]["model"]
    rows = overview.overview(summarize(records_frame(recs))).set_index("config")
    assert rows.loc["prefix", "peak_mem_mb@?"] == 1024 and rows.loc["prefix", "checkpoint_bytes@?"] == 4000


def test_runs_lists_each_record_with_its_file_options_and_checkpoint(tmp_path, monkeypatch):
    """`report --runs`: one row per record file, sorted by task, final before search runs, configuration,
    options, size and seed, naming the file (what `analyze` takes) and where its checkpoint is found (the
    folder's own copy); a file under another name than its run id, and search-only folders, are listed as they
    are; a record without params keeps the others' counts integers."""
    from conftest import cli_in_process

    folder = tmp_path / "study"
    (folder / "records").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    recs = [fake_record("trec", "lora", seed, 0.9 + seed / 100, knob_value=r) for r in (64, 8) for seed in (1, 0)]
    for rec, targets in zip(recs, (["q", "v"], ["q"], ["q", "v"], ["q"])):
        rec["spec"]["options"] = {"target_modules": targets, "dropout": None}
        (folder / "records" / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    (folder / "checkpoints" / "trec-lora-8-0.safetensors").write_bytes(b"x")
    search = fake_record("trec", "lora", 0, 0.5, knob_value=8)
    search["spec"]["role"] = "search"
    (folder / "search" / "records").mkdir(parents=True)
    (folder / "search" / "records" / "renamed.json").write_text(json.dumps(search))
    failed = {**fake_record("trec", "lora", 2, 0.0, knob_value=2), "status": "failed", "metrics": {}}
    del failed["params"]
    (folder / "records" / "failed-run.json").write_text(json.dumps(failed))
    monkeypatch.chdir(tmp_path)
    res = cli_in_process("report", "study", "--runs")
    assert res.returncode == 0, res.stderr
    head, _, *rows = res.stdout.splitlines()
    assert head == ("| record | role | status | task | config | options | size | seed | lr | metric | value | params | "
                    "checkpoint | commit |")
    cells = [r.split(" | ") for r in rows]
    assert [c[5:8] for c in cells] == [["", "r=2", "2"], ["target_modules=q", "r=8", "0"],
                                       ["target_modules=q", "r=64", "0"], ["target_modules=q,v", "r=8", "1"],
                                       ["target_modules=q,v", "r=64", "1"], ["", "r=8", "0"]]
    assert [c[0] for c in cells[::5]] == ["| study/records/failed-run.json", "| study/search/records/renamed.json"]
    assert [c[1] for c in cells] == ["final"] * 5 + ["search"] and cells[0][2] == "failed" and cells[0][11] == ""
    assert cells[1][0] == "| study/records/trec-lora-8-0.json" and cells[1][11] == "1,000"
    assert cells[1][12] == "study/checkpoints/trec-lora-8-0.safetensors" and cells[1][13] == "abc1234 |"
    assert all(c[12] == "-" for c in cells[2:])
    as_json = json.loads(cli_in_process("report", "study", "--runs", "--format", "json").stdout)
    assert [r["seed"] for r in as_json] == [2, 0, 0, 1, 1, 0] and as_json[3]["value"] == 0.91
    assert [r["params"] for r in as_json] == [None] + [1000] * 5  # integers beside a missing count
    twice = cli_in_process("report", "study", "study/records", "study/search", "--runs").stdout.splitlines()
    assert twice == res.stdout.splitlines()  # each file once, however often a folder names it
    only_search = cli_in_process("report", "study/search", "--runs", "--task", "trec")
    assert only_search.returncode == 0 and only_search.stdout.count("| search |") == 1
    bad = cli_in_process("report", "study", "--runs", "--format", "latex")
    assert bad.returncode == 2 and "--runs lists the records as md, csv or json" in bad.stderr
