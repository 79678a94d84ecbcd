"""`peftbench check` and `pytest -p peftbench.testing` on third-party method files written here."""

import subprocess
import sys

import pytest

from conftest import write_plugin

HEADER = '''
from __future__ import annotations
from dataclasses import dataclass
import torch
from torch import nn
import peftbench
from peftbench.arch import find_role, linear_features, replace_module
from peftbench.method import freeze


@dataclass(frozen=True)
class Options:
    init: float = 1.0
'''

SCALED = HEADER + '''

class Scaled(nn.Module):
    """Rescales the outputs of a frozen projection by a trained vector."""

    def __init__(self, base, init):
        super().__init__()
        self.base = base
        _, out = linear_features(base)
        self.scale = nn.Parameter(torch.full((out,), init, device=base.weight.device, dtype=base.weight.dtype))

    def forward(self, x):
        {forward_extra}
        return self.base(x) * self.scale


class Method(peftbench.Method):
    name = "{name}"
    mergeable = {mergeable}
    Options = Options

    def apply(self, model, knob_value=None, **options):
        opts = self.options(**options)
        freeze(model)
        for name, module in find_role(model, "v"):
            replace_module(model, name, Scaled(module, opts.init))
        return model

    def merge(self, model):
        for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, Scaled)]:
            with torch.no_grad():
                module.base.weight.mul_(module.scale[:, None])
                {merge_bias}
            replace_module(model, name, module.base)
        return model


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(Method())
'''

GOOD = SCALED.format(name="scaled", mergeable=True, forward_extra="pass",
                     merge_bias="if module.base.bias is not None: module.base.bias.mul_(module.scale)")
# changes a frozen base weight while training
FROZEN = SCALED.format(name="touchy", mergeable=False, forward_extra=(
    "if self.training:\n            self.base.weight.data.mul_(1.001)"), merge_bias="pass")
# merge scales the weight twice
MERGE = SCALED.format(name="badmerge", mergeable=True, forward_extra="pass",
                      merge_bias="module.base.weight.mul_(module.scale[:, None])")
# LoRA-FA-like: a frozen random down-projection the checkpoint leaves out
CHECKPOINT = HEADER + '''

class FA(nn.Module):
    def __init__(self, base, r):
        super().__init__()
        self.base = base
        n_in, n_out = linear_features(base)
        self.A = nn.Parameter(torch.randn(r, n_in), requires_grad=False)
        self.B = nn.Parameter(torch.zeros(n_out, r))

    def forward(self, x):
        return self.base(x) + x @ self.A.T @ self.B.T


class LoraFA(peftbench.Method):
    name = "lorafa"
    knob = "r"
    default_knob = 4

    def apply(self, model, knob_value=None, **options):
        freeze(model)
        for name, module in find_role(model, "v"):
            replace_module(model, name, FA(module, knob_value))
        return model


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(LoraFA())
'''


def _check(path):
    """A classifier and a causal LM (which adds the two generation checks)."""
    return subprocess.run([sys.executable, "-m", "peftbench.cli", "check", str(path), "--families", "bert,llama-lm"],
                          capture_output=True, text=True, timeout=300)


def _rows(stdout):
    return {(cells[1], cells[2]): cells[3] for cells in (line.split("  ") for line in stdout.splitlines()[1:])
            for cells in [[c.strip() for c in cells if c.strip()]] if len(cells) >= 4}


@pytest.mark.parametrize("body,failing", [
    (GOOD, None),
    (FROZEN, "trains only its own parameters and the head"),
    (MERGE, "merge keeps the outputs"),
    (CHECKPOINT, "checkpoint restores the model"),
])
def test_check_names_the_failing_property(tmp_path, body, failing):
    res = _check(write_plugin(tmp_path, "third_party", body))
    rows = _rows(res.stdout)
    assert len(rows) == 11, res.stdout + res.stderr  # bert's 5 checks, llama-lm's 6
    failed = {check for (_, check), status in rows.items() if status == "FAIL"}
    if failing is None:
        assert res.returncode == 0 and not failed, res.stdout
    elif failing == "trains only its own parameters and the head":
        # changed base weights are not in the checkpoint either, which the restore check may see too
        assert res.returncode == 1 and failing in failed and failed <= {failing, "checkpoint restores the model"}
        assert "trains frozen weights" in res.stdout
    else:
        assert res.returncode == 1 and failed == {failing}, res.stdout
    if failing == "merge keeps the outputs":
        assert "merge changes outputs" in res.stdout


def test_check_of_a_file_without_methods_is_one_line(tmp_path):
    body = "import peftbench\n@peftbench.hookimpl\ndef peftbench_register_tasks(register):\n    pass\n"
    res = _check(write_plugin(tmp_path, "nothing", body))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "registers nothing" in res.stderr


def test_pytest_plugin_runs_the_matrix_on_a_third_party_method(tmp_path):
    good = write_plugin(tmp_path, "good_plugin", GOOD)
    bad = write_plugin(tmp_path, "bad_plugin", MERGE)
    (tmp_path / "test_empty.py").write_text("def test_nothing():\n    pass\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "peftbench.testing", "-p", "no:cacheprovider",
                          "--peftbench-plugins", str(good), "--peftbench-plugins", str(bad),
                          "--peftbench-methods", "scaled,badmerge", "--peftbench-families", "bert,llama-lm",
                          str(tmp_path / "test_empty.py")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    tail = res.stdout.strip().splitlines()[-1]
    # 2 methods x (bert's 5 checks + llama-lm's 6) + the file's own test; only badmerge's merge fails (on both)
    assert "2 failed" in tail and "21 passed" in tail, res.stdout[-3000:]
    assert "badmerge on bert: merge changes outputs" in res.stdout


def test_check_defaults_to_every_family():
    """`peftbench check` spells the families out (importing peftbench.testing imports torch)."""
    from peftbench.cli.info import CHECK_FAMILIES
    from peftbench.testing import ALL_FAMILIES

    assert CHECK_FAMILIES.split(",") == list(ALL_FAMILIES)


def test_a_check_that_applies_in_its_other_form_says_so(plugin_manager):
    """A method without a knob, or one that does not merge, passes those checks in their other form (the count
    stays the same; merge returns the model unchanged): the result says which, not a bare pass."""
    from peftbench.plugins import get_methods
    from peftbench.testing import FAMILIES, run_checks

    results = {r.check: r for r in run_checks([get_methods()["bitfit"]], FAMILIES[:1])}
    assert results["count grows with the knob"].status == "pass"
    assert results["count grows with the knob"].detail == "no knob: the count stays the same"
    assert results["merge keeps the outputs"].detail == "not mergeable: merge returns the model unchanged"
    lora = {r.check: r for r in run_checks([get_methods()["lora"]], FAMILIES[:1])}
    assert lora["count grows with the knob"].detail == "" and lora["merge keeps the outputs"].detail == ""


def test_check_of_a_task_plugin_or_an_unknown_name_says_what_check_covers(tmp_path):
    body = ("import peftbench\nfrom peftbench import Task\n@peftbench.hookimpl\ndef peftbench_register_tasks(register):"
            "\n    register(Task(name='only-a-task', version=1, folder='SST-2', train_file='train.tsv', "
            "eval_file='dev.tsv', text_columns=('sentence',), label_column='label'))\n")
    res = _check(write_plugin(tmp_path, "task_only", body))
    assert res.returncode == 2 and "registers no methods; `peftbench check` runs the method contract" in res.stderr
    res = _check("some-distribution")
    assert res.returncode == 2 and "no plugin named some-distribution registers methods" in res.stderr
    assert "not the distribution's" in res.stderr
