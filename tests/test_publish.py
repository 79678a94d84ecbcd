"""in-progress/publish.py: a finished job's records move into its results folder, and what the
folder's sweep file no longer plans leaves it, with its checkpoint and predictions."""

import importlib.util
import json
import sys

from conftest import ROOT


def _publish():
    spec = importlib.util.spec_from_file_location("publish", ROOT / "in-progress" / "publish.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_publish_copies_then_removes_what_is_no_longer_planned(tmp_path, monkeypatch, capsys):
    publish = _publish()
    root = tmp_path / "repo"
    kept, folder = root / "in-progress" / "job", root / "results" / "job"
    for d in (kept / "records", folder / "records", folder / "checkpoints", folder / "search" / "records"):
        d.mkdir(parents=True)
    (folder / "sweep.toml").write_text('out = "."\n')
    (kept / "records" / "new.json").write_text(json.dumps({"run_id": "new", "status": "ok"}))
    (kept / "sweep-extend.toml").write_text("")  # the job's own sweep file stays in in-progress/
    old = folder / "records" / "old.json"
    old.write_text("{}")
    (folder / "checkpoints" / "old.safetensors").write_bytes(b"x")
    dup = folder / "search" / "records" / "dup.json"
    dup.write_text("{}")
    keep = folder / "records" / "keep.json"
    keep.write_text("{}")
    found = {"search_missing": [], "search_extra": [], "search_duplicates": [str(dup)], "missing": [],
             "extra": [str(old)], "duplicates": []}
    monkeypatch.setattr(publish, "ROOT", root)
    monkeypatch.setattr("peftbench.published.audit", lambda f: found)
    monkeypatch.setattr(sys, "argv", ["publish.py", "job", "results/job"])
    assert publish.main() == 0
    assert (folder / "records" / "new.json").exists() and keep.exists()
    assert not old.exists() and not (folder / "checkpoints" / "old.safetensors").exists() and not dup.exists()
    assert not (folder / "sweep-extend.toml").exists()
    # a planned run without a record: refused, nothing removed
    found.update(missing=['{"seed": 2}'], extra=[str(keep)])
    assert publish.main() == 2 and keep.exists()
    assert "1 planned run(s) have no ok record" in capsys.readouterr().err
