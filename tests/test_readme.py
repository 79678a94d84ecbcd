"""The README's plugin example is a working plugin, and its commands exist."""

import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, make_model
from peftbench.method import apply_method
from peftbench.plugins import get_methods, load_plugin_file

README = (ROOT / "README.md").read_text()


def _plugin_source() -> str:
    section = README.split("## Writing a method plugin", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_plugin_example_loads_and_trains(tmp_path, plugin_manager):
    path = tmp_path / "ia3.py"
    path.write_text(_plugin_source())
    assert len(_plugin_source().strip().splitlines()) <= 45
    load_plugin_file(path)
    method = get_methods()["ia3"]
    model, counts = apply_method(method, make_model("bert"), None)
    assert counts.method == 2 * (32 + 32 + 64)  # keys, values, FFN-in per layer
    model.train()
    from conftest import batch

    loss = model(**batch()).loss
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.endswith(".scale"))


def test_readme_opens_with_the_two_commands():
    head = README.split("## ", 1)[0]
    assert "make run" in head and "make test" in head
    makefile = (ROOT / "Makefile").read_text()
    assert "peftbench run --methods lora,adapter" in makefile
    assert "pip install --quiet torch==2.13.0 -e \".[dev]\"" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_cli_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "peftbench.cli", "--help"], capture_output=True, text=True, timeout=60)
    for command in ("run", "report", "budget", "methods", "tasks"):
        assert re.search(rf"^\s+{command}\b", out.stdout, re.M), out.stdout
