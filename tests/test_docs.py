"""The plugin guide's examples (docs/plugins.md) are working plugins."""

import json
import re

from conftest import ROOT, cli_in_process

GUIDE = (ROOT / "docs" / "plugins.md").read_text()


def _files(tmp_path) -> dict:
    out = {}
    for body in re.findall(r"```python\n(.*?)```", GUIDE, re.S):
        name = re.match(r"# file: (\S+)", body)
        if name:
            (tmp_path / name.group(1)).write_text(body)
            out[name.group(1)] = tmp_path / name.group(1)
    return out


_cli = cli_in_process  # in this process: no imports anew


def test_guide_method_passes_the_contract(tmp_path):
    files = _files(tmp_path)
    assert set(files) == {"ln_tuning.py", "stsb_binary.py"}
    res = _cli("check", files["ln_tuning.py"], "--families", "bert,roberta,gpt2,llama")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count(" pass") == 15  # 5 checks on each of 3 classifier families
    assert res.stdout.count(" n/a ") == 5 and "LlamaForSequenceClassification has no nn.LayerNorm" in res.stdout


def test_guide_task_and_metric_run_and_report_their_direction(tmp_path, tiny_model_dirs, cli_env):
    files = _files(tmp_path)
    out = tmp_path / "out"
    res = _cli("run", "--plugins", files["ln_tuning.py"], "--plugins", files["stsb_binary.py"],
               "--model", tiny_model_dirs["bert"], "--tasks", "stsb-binary", "--methods", "ln-tuning[train=bias]",
               "--out", out, "--max-steps", "2", "--batch-size", "8", "--no-latency", "--no-progress", env=cli_env)
    assert res.returncode == 0, res.stderr
    (rec,) = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert rec["metric_directions"] == {"error_rate": "lower", "accuracy": "higher"}
    assert rec["metrics"]["error_rate"] == 1 - rec["metrics"]["accuracy"]
    assert rec["plugins"]["task"]["kind"] == "file" and rec["plugins"]["task"]["file"] == str(files["stsb_binary.py"])
    assert "| error_rate ↓ " in res.stdout
    listed = _cli("tasks", "--plugins", files["stsb_binary.py"], env=cli_env).stdout
    assert re.search(r"^stsb-binary .*error_rate↓,accuracy↑.*STS-B thresholded at 3", listed, re.M), listed
