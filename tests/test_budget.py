"""The budget solver: parsing, exact counting on the meta device, agreement with brute force."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import peftbench
from conftest import make_model
from peftbench.budget import Counter, brute_force, budget_params, parse_budget, parse_budgets, solve
from peftbench.errors import PeftbenchError
from peftbench.method import freeze
from peftbench.plugins import get_methods
from peftbench.plan import reference_resolver


def _meta(family):
    model = make_model(family)
    with torch.device("meta"):
        return type(model)(model.config)


@pytest.mark.parametrize(
    "text,count,percent,ref",
    [("73728", 73728, None, None), ("75k", 75000, None, None), ("1.2M", 1.2e6, None, None), ("2e5", 2e5, None, None),
     ("0.3%", None, 0.3, None), ("lora:r=8", None, None, ("lora", 8)),
     ("adapter[placement=pfeiffer]:bottleneck=4", None, None, ("adapter[placement=pfeiffer]", 4))],
)
def test_parse_budget(text, count, percent, ref):
    b = parse_budget(text)
    assert b.count == count and b.percent == percent
    assert (b.ref_spec, b.ref_knob) == (ref or (None, None))


@pytest.mark.parametrize("text", ["lots", "-5", "0%", "150%", "1.2X", "lora:r=x"])
def test_bad_budgets(text):
    with pytest.raises(PeftbenchError, match="budget"):
        parse_budget(text)


def test_parse_several():
    assert [b.text for b in parse_budgets("0.1%,0.5%,lora[alpha=8]:r=4")] == ["0.1%", "0.5%", "lora[alpha=8]:r=4"]


SOLVABLE = [
    ("lora", {}), ("lora", {"target_modules": ("q", "k", "v", "o", "ffn")}), ("adapter", {}),
    ("adapter", {"placement": "pfeiffer"}), ("prefix", {}), ("prefix", {"reparam": True, "reparam_hidden": 8}),
]


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("name,options", SOLVABLE)
def test_solver_equals_brute_force(family, name, options):
    method = get_methods()[name]
    counter = Counter(_meta(family))
    for target in (700, 3333, 9000):
        try:
            sol = solve(method, options, target, counter)
        except PeftbenchError:
            continue  # out of reach within 25%: checked separately
        assert sol.knob_value == brute_force(method, options, target, counter), (target, sol)
        assert sol.params == counter.count(method, options, sol.knob_value)


def test_meta_counts_equal_real_counts():
    method = get_methods()["adapter"]
    counter = Counter(_meta("bert"))
    from peftbench.method import apply_method

    _, real = apply_method(method, make_model("bert"), 6)
    assert counter.count(method, {}, 6) == real.method
    assert next(counter.meta.parameters()).device.type == "meta"


def test_random_draws_of_a_method_go_to_meta_when_counting(monkeypatch):
    """peft's FourierFT draws a CPU permutation of each adapted weight's entries (minutes per count at
    GPT-3's size): counting on the meta device draws it there, and the count stays the real one."""
    pytest.importorskip("peft")
    from peftbench.method import apply_method

    method = get_methods()["peft-fourierft"]
    _, real = apply_method(method, make_model("bert"), 7)
    drawn = []
    randperm = torch.randperm

    def recorded(*args, **kwargs):
        drawn.append(randperm(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(torch, "randperm", recorded)
    assert Counter(_meta("bert")).count(method, {}, 7) == real.method
    assert drawn and all(t.device.type == "meta" for t in drawn)


def test_fixed_methods_report_their_count():
    counter = Counter(_meta("bert"))
    sol = solve(get_methods()["bitfit"], {}, 1000, counter)
    assert sol.fixed and sol.knob_value is None and sol.params == 640


def test_reference_budget_checks_the_knob_name():
    counter = Counter(_meta("bert"))
    resolve = reference_resolver(get_methods())
    assert budget_params(parse_budget("lora:r=2"), counter, resolve) == 512
    with pytest.raises(PeftbenchError, match="lora's knob is r, not bottleneck; write lora:r=8"):
        budget_params(parse_budget("lora:bottleneck=8"), counter, resolve)
    with pytest.raises(PeftbenchError, match="bitfit has no size knob"):
        budget_params(parse_budget("bitfit:r=8"), counter, resolve)


def test_out_of_reach_budget_names_method_and_range():
    counter = Counter(_meta("bert"))
    k_max = counter.base // 256  # LoRA on q,v of the tiny BERT: 256 parameters per unit of r
    with pytest.raises(PeftbenchError, match=rf"out of reach for lora .*counts run from 256 at r=1 to {256 * k_max:,} at r={k_max}"):
        solve(get_methods()["lora"], {}, 50, counter)
    with pytest.raises(PeftbenchError, match="exceeds the model's"):
        budget_params(parse_budget("10M"), counter, None)


@dataclass(frozen=True)
class _Opts:
    width: int = 3


class Stripes(peftbench.Method):
    """A third-party method with no closed-form count: the solver only sees apply()."""

    name = "stripes"
    knob = "stripes"
    default_knob = 2
    Options = _Opts

    def apply(self, model, knob_value, **options):
        opts = self.options(**options)
        freeze(model)
        body = getattr(model, model.base_model_prefix)
        like = next(model.parameters())
        body.stripes = nn.ParameterList(
            [nn.Parameter(torch.zeros(opts.width * (i + 1) + 7, device=like.device)) for i in range(knob_value)]
        )
        return model


def test_third_party_method_solved_without_host_changes(plugin_manager):
    class Plugin:
        @peftbench.hookimpl
        def peftbench_register_methods(self, register):
            register(Stripes())

    plugin_manager.register(Plugin(), name="stripes-plugin")
    method = get_methods()["stripes"]
    counter = Counter(_meta("bert"))
    for target in (50, 200, 777):
        sol = solve(method, {"width": 5}, target, counter)
        assert sol.knob_value == brute_force(method, {"width": 5}, target, counter)


def test_budget_command_csv(tmp_path):
    from conftest import cli_in_process

    out = cli_in_process("budget", "--methods", "lora,adapter[placement=pfeiffer],prefix,bitfit,lora[target_modules=q,k,v,o]",
                         "--budget", "lora:r=8", "--format", "csv")
    assert out.returncode == 0, out.stderr
    import csv
    import io

    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("method,knob,knob_value,params,budget,deviation_pct,fixed")
    rows = {row[0]: row for row in csv.reader(io.StringIO(out.stdout))}
    assert all(len(row) == 8 for row in rows.values())
    assert rows["lora"][1:5] == ["r", "8", "73728", "73728"]
    assert rows["lora[target_modules=q,k,v,o]"][1:5] == ["r", "4", "73728", "73728"]
    assert abs(float(rows["adapter[placement=pfeiffer]"][5])) <= 5
    assert abs(float(rows["prefix"][5])) <= 5
    assert rows["bitfit"][6] == "true" and rows["bitfit"][3] == "26112"
