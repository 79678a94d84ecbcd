"""Published results cannot drift from their records: every committed table regenerates from
its committed records, every folder's sweep file plans exactly the runs its records hold, and
no published record comes from an uncommitted tree."""

import json
import re
import sys

import pytest

from conftest import ROOT, shared_datasets
from peftbench import report
from peftbench.records import load_records

RESULTS = ROOT / "results"
FOLDERS = report.record_folders(RESULTS)  # results/<name>/ and deeper (results/benchmark-v1/<task>/)
FORMATS = {"table.md": "md", "table.csv": "csv", "table.tex": "latex", "table.html": "html"}


def test_there_are_published_folders():
    assert {f.name for f in FOLDERS} >= {"sst2-minilm", "trec-minilm", "sst2-anchor-check"}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_tables_regenerate_from_records(folder):
    records = load_records(folder)
    summary = report.summarize(report.records_frame(records.values()))
    tables = [name for name in FORMATS if (folder / name).exists()]
    assert "table.md" in tables
    for name in tables:
        if name == "table.html":  # the page; its plots are checked by tests/test_report.py, not byte for byte here
            expected, actual = (re.sub(r"data:image/png;base64,[^\"]+", "PNG", text) for text in (
                report.page.render_page(summary), (folder / name).read_text()))
        else:
            expected, actual = report.render(summary, FORMATS[name]), (folder / name).read_text()
        assert actual == expected, (
            f"{folder.name}/{name} differs from `peftbench report {folder.relative_to(ROOT)} --format "
            f"{FORMATS[name]}`; regenerate it (see results/README.md)")


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_no_published_record_comes_from_an_uncommitted_tree(folder):
    dirty = [p.name for p in [*(folder / "records").glob("*.json"), *(folder / "search" / "records").glob("*.json")]
             if str(json.loads(p.read_text()).get("env", {}).get("git_commit")).endswith("-dirty")]
    assert not dirty, f"{folder.name}: records made from a dirty tree: {dirty[:3]}"


def _missing_predictions(folder) -> list[str]:
    """Generation records in ``folder`` without their predictions beside them (``predictions/<run id>.txt``,
    one line per input): what `peftbench score` rescores and the tables' metrics come from."""
    missing = []
    for path in (folder / "records").glob("*.json"):
        rec = json.loads(path.read_text())
        gen = rec.get("generation") or {}
        if rec.get("status") != "ok" or "inputs" not in gen:
            continue
        kept = folder / "predictions" / f"{rec['run_id']}.txt"
        if not kept.exists() or len(kept.read_text(encoding="utf-8").splitlines()) != gen["inputs"]:
            missing.append(kept.name)
    return missing


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_generation_records_keep_their_predictions(folder):
    missing = _missing_predictions(folder)
    assert not missing, f"{folder.name}: predictions missing or short: {missing[:3]}"


def _plan(path, monkeypatch):
    """The sweep file at ``path`` planned now on the shared data (nothing runs); its ``out`` is its folder."""
    from peftbench import sweepfile
    from peftbench.plan import plan_all

    data = shared_datasets()
    if data is None:
        pytest.skip("the shared datasets are not available")
    monkeypatch.setenv("PEFTBENCH_DATA", str(data))
    settings, out = sweepfile.load(path)
    assert out == path.parent.resolve()
    return plan_all(settings)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_sweep_file_plans_exactly_the_published_runs(folder, monkeypatch):
    """The folder's sweep.toml, planned now (nothing runs), asks for the same runs, with the same
    settings and data, as the ok records hold: the published command is the one that made them.
    The search as the sweep runs it (lr_extend: the grids that grew), each run answered by the
    record of its settings (not by run id: that hashes the code too, which moves on)."""
    from peftbench.published import audit

    data = shared_datasets()
    if data is None:
        pytest.skip("the shared datasets are not available")
    monkeypatch.setenv("PEFTBENCH_DATA", str(data))
    found = audit(folder)
    assert not any(found.values()), {k: [len(v), *(x.rsplit("/", 1)[-1][:200] for x in v[:2])]
                                     for k, v in found.items() if v}


@pytest.mark.parametrize("summary", sorted(RESULTS.rglob("summary.md")), ids=lambda p: str(p.relative_to(RESULTS)))
def test_summaries_regenerate_from_records(summary):
    """A folder's summary across tasks is `peftbench report FOLDER --summary` over every record below it."""
    from peftbench.report import overview

    records = {}
    for folder in report.record_folders(summary.parent):
        records.update(load_records(folder))
    expected = overview.to_markdown(overview.overview(report.summarize(report.records_frame(records.values()))))
    assert summary.read_text() == expected, f"{summary} differs from `peftbench report {summary.parent} --summary`"


def test_readme_leads_with_the_benchmark_summary():
    """The top-level README shows results/benchmark-v1/summary.md verbatim (make tables copies it)."""
    sys.path.insert(0, str(RESULTS.parent / "benchmarks"))
    import readme_summary

    readme = (RESULTS.parent / "README.md").read_text()
    summary = (RESULTS / "benchmark-v1" / "summary.md").read_text().strip("\n")
    assert readme_summary.block(readme) == summary, "README's summary is stale: run `make tables`"
    head = readme[: readme.index(readme_summary.BEGIN)]
    assert head.count("## ") == 1 and "](results/benchmark-v1/plot.png)" in readme  # the first section after the commands


UNRUN = sorted(p for p in RESULTS.rglob("sweep.toml") if not (p.parent / "records").is_dir())


@pytest.mark.parametrize("path", UNRUN, ids=lambda p: str(p.parent.relative_to(RESULTS)))
def test_sweep_files_not_yet_run_plan(path, monkeypatch):
    """A published sweep file whose runs have not been made yet (the benchmark's next tasks) plans
    without error, so that starting it is all that is left."""
    plan = _plan(path, monkeypatch)
    assert plan.searches and plan.waiting


def _in_progress_jobs():
    """The jobs in-progress/resume.sh runs (in-progress/jobs): (name, commit, folder kept in in-progress/)."""
    lines = (ROOT / "in-progress" / "jobs").read_text().splitlines()
    return [tuple(line.split("|")[:3]) for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("job", _in_progress_jobs(), ids=lambda j: j[0])
def test_in_progress_records_come_from_their_jobs_one_clean_commit(job):
    """A long sweep kept in in-progress/ resumes at one commit: every record it holds was made by
    that commit's code, from a clean tree, and is a record (not a spec or temporary file)."""
    name, commit, kept = job
    folder = ROOT / "in-progress" / kept
    records = sorted(folder.rglob("*.json"))
    # (a record the sweep wrote for a run that died before starting has no env)
    commits = {json.loads(p.read_text()).get("env", {}).get("git_commit") for p in records} - {None}
    assert commits <= {commit}, f"{name}: records of other commits {sorted(commits - {commit})[:2]}"
    assert not [p for p in folder.rglob("*") if p.is_file() and p.name.startswith(".")], "temporary files kept"
    missing = _missing_predictions(folder)  # `resume.sh save` keeps them (the checkout does not last)
    assert not missing, f"{name}: predictions not kept: {missing[:3]}"
