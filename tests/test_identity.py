"""Run identity: what reruns when a plugin file or a data file changes, and what is only stale."""

import json
import shutil

from conftest import cli_in_process, write_plugin

FAST = ["--max-steps", "2", "--batch-size", "8", "--no-latency", "--no-progress", "--train-samples", "32"]

METHOD = '''
import peftbench
from peftbench.method import freeze


class M(peftbench.Method):
    name = "{name}"

    def apply(self, model, knob_value=None, **options):
        freeze(model)
        for n, p in model.named_parameters():
            if n.endswith("LayerNorm.bias"):
                p.requires_grad_(True)
        return model


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(M())
'''


peftbench = cli_in_process  # in this process: no imports anew


def test_editing_a_plugin_file_reruns_that_methods_runs_only(tiny_model_dirs, cli_env, tmp_path):
    a = write_plugin(tmp_path, "plugin_a", METHOD.format(name="meth-a"))
    b = write_plugin(tmp_path, "plugin_b", METHOD.format(name="meth-b"))
    out = tmp_path / "out"
    args = ["run", "--plugins", a, "--plugins", b, "--model", tiny_model_dirs["bert"], "--methods", "meth-a,meth-b",
            "--seeds", "0,1", "--out", out, *FAST]
    assert peftbench(*args, env=cli_env).returncode == 0
    again = peftbench(*args, env=cli_env)
    assert "skipping 4 run(s) with an ok record; 0 to run" in again.stderr
    a.write_text(a.read_text() + "\n# an edit that changes the file's content\n")
    planned = peftbench(*args, "--dry-run", env=cli_env)
    assert "have an ok record of the same settings" in planned.stderr and "dry run: 0 of 0 search" in planned.stderr
    assert "and 2 of 4 run(s) at a fixed rate have an ok record" in planned.stderr
    edited = peftbench(*args, env=cli_env)
    assert edited.returncode == 0, edited.stderr
    assert "skipping 2 run(s) with an ok record; 2 to run" in edited.stderr
    # and says why: records of the same settings are there, made by other code (the edited plugin)
    assert "note: 2 of 4 planned run(s) have an ok record of the same settings in" in edited.stderr
    assert "that other code made (runs per difference: meth-a's code 2; commit " in edited.stderr
    assert edited.stderr.count("meth-a sst2 seed") == 2 and "meth-b sst2 seed" not in edited.stderr


def test_editing_a_data_file_reruns_its_runs(tiny_model_dirs, cli_env, small_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    out = tmp_path / "out"
    args = ["run", "--model", tiny_model_dirs["bert"], "--methods", "bitfit", "--data-dir", data, "--out", out, *FAST]
    first = peftbench(*args, env=cli_env)
    assert first.returncode == 0, first.stderr
    with open(data / "SST-2" / "dev.tsv", "a", encoding="utf-8") as f:
        f.write("one more sentence\t1\n")
    second = peftbench(*args, env=cli_env)
    assert second.returncode == 0 and "skipping" not in second.stderr and "[1/1] bitfit" in second.stderr


def test_records_from_other_code_are_stale_not_rerun_unless_asked(tiny_model_dirs, cli_env, tmp_path):
    out = tmp_path / "out"
    args = ["run", "--model", tiny_model_dirs["bert"], "--methods", "bitfit", "--out", out, *FAST]
    assert peftbench(*args, env=cli_env).returncode == 0
    (path,) = (out / "records").glob("*.json")
    rec = json.loads(path.read_text())
    report = peftbench("report", out, env=cli_env)
    assert report.returncode == 0 and "stale" not in report.stderr
    rec["env"]["host_code"], rec["env"]["git_commit"] = "0123456789abcdef", "f" * 40
    path.write_text(json.dumps(rec))
    report = peftbench("report", out, env=cli_env)
    assert "warning: 1 record(s) are stale" in report.stderr and "host_code 0123456789abcdef ->" in report.stderr
    assert "| ffffff" not in report.stdout and "commit fffffff" in report.stdout  # the caption names it
    resumed = peftbench(*args, env=cli_env)
    assert "skipping 1 run(s) with an ok record; 0 to run" in resumed.stderr  # stale is not a rerun
    refreshed = peftbench(*args, "--rerun-stale", env=cli_env)
    assert "rerunning 1 run(s) with an ok record" in refreshed.stderr and "[1/1] bitfit" in refreshed.stderr
    assert (out / "records" / "superseded").is_dir()
    assert "stale" not in peftbench("report", out, env=cli_env).stderr


def test_the_note_on_records_other_code_made_names_only_real_differences(tmp_path):
    """published.moved_on: a field at its id default (nproc 1, absent from older records) is no difference; an
    ok record it cannot key (hand-made, no data) is passed over; a run whose own id has a failed record does
    not run again without --rerun-failed, so it is not counted then."""
    from peftbench.published import moved_on

    settings = {"method": "lora", "label": "lora", "task": "trec", "seed": 0, "knob": "r", "knob_value": 8,
                "lr": 1e-3, "precision": "fp32"}
    plan = {**settings, "run_id": "new", "data_sha": "d", "method_code": "B", "nproc": 1}
    old = {"run_id": "old", "status": "ok", "spec": {**settings, "data_sha": "d", "method_code": "A"},
           "data": {"fingerprint": "d"}, "env": {"git_commit": "abcdef0123"}, "finished_at": "1"}
    odd = {"run_id": "odd", "status": "ok", "spec": dict(settings)}  # no data: no key
    (tmp_path / "records").mkdir()
    for rec in (old, odd):
        (tmp_path / "records" / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    line = moved_on([plan], tmp_path)
    assert line.startswith("1 of 1 planned run(s) have an ok record of the same settings")
    assert "(runs per difference: lora's code 1; commit abcdef0)" in line and "nproc" not in line
    (tmp_path / "records" / "new.json").write_text(json.dumps({"run_id": "new", "status": "failed", "spec": plan}))
    assert moved_on([plan], tmp_path) is None and "lora's code 1" in moved_on([plan], tmp_path, rerun_failed=True)
    (tmp_path / "records" / "new.json").write_text(json.dumps({"run_id": "new", "status": "cancelled", "spec": plan}))
    assert "lora's code 1" in moved_on([plan], tmp_path)
