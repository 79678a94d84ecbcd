"""in-progress/publish.py: a finished job's records move into its results folder, and what the
folder's sweep file no longer plans leaves it, with its checkpoint and predictions; an unfinished
job changes nothing."""

import importlib.util
import json
import sys

from conftest import ROOT


def _publish():
    spec = importlib.util.spec_from_file_location("publish", ROOT / "in-progress" / "publish.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path, status="ok"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": path.stem, "status": status}))


def test_publish_copies_then_removes_what_is_no_longer_planned(tmp_path, monkeypatch, capsys):
    publish = _publish()
    root = tmp_path / "repo"
    kept, folder = root / "in-progress" / "job", root / "results" / "job"
    folder.mkdir(parents=True)
    (folder / "sweep.toml").write_text('out = "."\n')
    _write(kept / "records" / "new.json")
    _write(kept / "records" / "keep.json", status="cancelled")  # never over a published ok record
    (kept / "sweep-extend.toml").parent.mkdir(parents=True, exist_ok=True)
    (kept / "sweep-extend.toml").write_text("")  # the job's own sweep file stays in in-progress/
    for name in ("old", "keep"):
        _write(folder / "records" / f"{name}.json")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "old.safetensors").write_bytes(b"x")
    _write(folder / "search" / "records" / "dup.json")
    seen = {}

    def audit(stage):  # what the plan would say of the staged folder
        seen["stage"] = stage
        seen["staged_keep_ok"] = json.loads((stage / "records" / "keep.json").read_text())["status"] == "ok"
        return {"search_missing": [], "search_extra": [], "search_duplicates": [str(stage / "search/records/dup.json")],
                "missing": missing, "extra": [str(stage / "records/old.json")], "duplicates": []}

    monkeypatch.setattr(publish, "ROOT", root)
    monkeypatch.setattr("peftbench.published.audit", audit)
    monkeypatch.setattr(sys, "argv", ["publish.py", "job", "results/job"])
    missing = ['{"seed": 2}']  # a planned run without a record: refused, nothing changed
    assert publish.main() == 2 and "1 planned run(s) have no ok record" in capsys.readouterr().err
    assert not (folder / "records" / "new.json").exists() and (folder / "records" / "old.json").exists()
    assert seen["stage"] != folder and (seen["stage"] / "records" / "new.json").exists() is False  # gone with tmp
    missing = []
    assert publish.main() == 0 and seen["staged_keep_ok"]
    assert (folder / "records" / "new.json").exists() and json.loads((folder / "records" / "keep.json").read_text())["status"] == "ok"
    assert not (folder / "records" / "old.json").exists() and not (folder / "checkpoints" / "old.safetensors").exists()
    assert not (folder / "search" / "records" / "dup.json").exists() and not (folder / "sweep-extend.toml").exists()


def test_two_planned_runs_that_the_compared_settings_cannot_tell_apart_are_refused():
    """Else one would be reported a duplicate of the other and publish.py would delete its record."""
    import pytest

    from peftbench.published import _compare

    spec = {"method": "lora", "seed": 0, "data_sha": "d", "generation": {"num_beams": 1}}
    with pytest.raises(ValueError, match="share the settings"):
        _compare([spec, spec | {"generation": {"num_beams": 4}}], [])
