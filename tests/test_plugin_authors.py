"""What a third-party plugin author hits: each reproducer ends as a one-line error or a failed
record that names the method and its plugin (issue: plugin authors first)."""

import enum
import json
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from conftest import cli_in_process, make_model, write_plugin
from peftbench.errors import PeftbenchError, PluginError
from peftbench.method import apply_method, parse_options
from peftbench.plugins import get_methods, load_plugin_file

FAST = ["--max-steps", "2", "--batch-size", "8", "--no-latency", "--no-progress", "--train-samples", "32"]


peftbench = cli_in_process  # in this process: no imports anew


def records(out):
    return [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]


FUTURE = '''
from __future__ import annotations
from dataclasses import dataclass
import peftbench
from peftbench.method import freeze


@dataclass(frozen=True)
class LNOptions:
    eps_scale: float = 1.0
    names: tuple[str, ...] = ("LayerNorm",)


class LNTuning(peftbench.Method):
    name = "ln-tuning"
    Options = LNOptions

    def apply(self, model, knob_value=None, **options):
        opts = self.options(**options)
        freeze(model)
        for n, p in model.named_parameters():
            if any(k in n for k in opts.names):
                p.requires_grad_(True)
        return model


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(LNTuning())
'''


def test_future_annotations_and_dataclass_options_import(plugin_manager, tmp_path):
    load_plugin_file(write_plugin(tmp_path, "ln", FUTURE))
    method = get_methods()["ln-tuning"]
    assert method.options(names="LayerNorm,norm").names == ("LayerNorm", "norm")
    _, counts = apply_method(method, make_model("bert"), None)
    assert counts.method == 2 * 2 * 2 * 32 + 2 * 32  # per layer 2 LayerNorms (weight+bias) + embeddings


METHOD_TEMPLATE = '''
import peftbench
from peftbench.method import freeze


class M(peftbench.Method):
    name = "{name}"
    knob = {knob!r}
    default_knob = {default_knob!r}

    def apply(self, model, knob_value=None, **options):
        freeze(model)
        {body}


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(M())
'''

TRAIN_BIASES = "[p.requires_grad_(True) for n, p in model.named_parameters() if n.endswith('.bias')]"
CASES = {
    # bug 2: apply cannot run on the meta device (reads a value)
    "needs-real": ("float(next(model.parameters()).sum().item())\n        " + TRAIN_BIASES + "\n        return model",
                   None, None),
    # bug 3: apply raises
    "keyerror": ("raise KeyError('missing_layer')", "r", 4),
    # bug 4: nothing of its own is trained
    "probe-by-accident": ("return model", None, None),
    # bug 5: forgets to return the model
    "no-return": (TRAIN_BIASES, None, None),
}


def _plugin(tmp_path, name):
    body, knob, default = CASES[name]
    return write_plugin(tmp_path, name.replace("-", "_"), METHOD_TEMPLATE.format(
        name=name, knob=knob, default_knob=default, body=body))


def test_apply_that_needs_real_tensors_is_counted_on_a_cpu_copy(tiny_model_dirs, cli_env, tmp_path):
    out = tmp_path / "out"
    res = peftbench("run", "--plugins", _plugin(tmp_path, "needs-real"), "--model", tiny_model_dirs["bert"],
                    "--methods", "needs-real,lora", "--out", out, *FAST, env=cli_env)
    assert res.returncode == 0, res.stderr
    assert "warning: method needs-real cannot be applied on the meta device" in res.stderr
    assert "counted on a CPU copy" in res.stderr
    rec = next(r for r in records(out) if r["spec"]["method"] == "needs-real")
    assert rec["status"] == "ok" and rec["params"]["method"] > 0


@pytest.mark.parametrize("budget", [["--knob", "keyerror=4"], ["--budget", "lora:r=2"]])
def test_apply_that_raises_is_a_failed_run_naming_method_and_plugin(tiny_model_dirs, cli_env, tmp_path, budget):
    path = _plugin(tmp_path, "keyerror")
    out = tmp_path / "out"
    res = peftbench("run", "--plugins", path, "--model", tiny_model_dirs["bert"], "--methods", "keyerror,bitfit",
                    "--out", out, *budget, *FAST, env=cli_env)
    assert res.returncode == 1, res.stderr
    assert "internal error" not in res.stderr
    rec = next(r for r in records(out) if r["spec"]["method"] == "keyerror")
    assert rec["status"] == "failed" and rec["error_type"] == "KeyError"
    assert rec["error"] == f"method keyerror (plugin {path}): apply() raised KeyError: 'missing_layer'"
    assert "keyerror r=" in res.stderr and "FAILED - method keyerror (plugin" in res.stderr
    assert "KeyError: 'missing_layer'" in res.stderr
    assert [r["status"] for r in records(out) if r["spec"]["method"] == "bitfit"] == ["ok"]  # the sweep went on
    # it failed while the sweep was planned: no warning that a CPU copy counted it; its traceback beside the record
    assert "cannot be applied on the meta device" not in res.stderr
    tb = (out / "records" / rec["traceback_file"]).read_text()
    assert "raise KeyError('missing_layer')" in tb and "plan_error_traceback" not in rec["spec"]
    assert rec["plugins"]["method"]["plugin"] == str(path) and rec["plugins"]["method"]["sha256"]  # whose code


TASK_TEMPLATE = """
import pandas as pd
import peftbench
from peftbench import Task


def reader(path, task):
    {body}


@peftbench.hookimpl
def peftbench_register_tasks(register):
    register(Task(name="{name}", version=1, folder="SST-2", train_file="train.tsv", eval_file="dev.tsv",
                  text_columns=("sentence",), label_column="label", format="custom", reader=reader))
"""


def test_task_reader_that_raises_is_a_failed_run_naming_the_task(tiny_model_dirs, cli_env, tmp_path):
    body = TASK_TEMPLATE.format(name="broken", body='raise ValueError("cannot parse " + path.name)')
    path = write_plugin(tmp_path, "broken_task", body)
    out = tmp_path / "out"
    res = peftbench("run", "--plugins", path, "--model", tiny_model_dirs["bert"], "--methods", "bitfit",
                    "--tasks", "broken,sst2", "--out", out, *FAST, env=cli_env)
    assert res.returncode == 1, res.stderr
    by_task = {r["spec"]["task"]: r for r in records(out)}
    assert by_task["sst2"]["status"] == "ok"
    assert by_task["broken"]["status"] == "failed" and by_task["broken"]["error_type"] == "ValueError"
    assert by_task["broken"]["error"] == (f"task broken (plugin {path}): reading train.tsv raised ValueError: "
                                          "cannot parse train.tsv")
    assert by_task["broken"]["plugins"]["task"]["plugin"] == str(path)


def _one_failed_run(path, task, tiny_model_dirs, cli_env, tmp_path) -> dict:
    """BitFit on plugin ``path``'s task ``task``: the sweep exits 1 with the plugin's failure recorded (never
    peftbench's internal error); its one record."""
    out = tmp_path / "out"
    res = peftbench("run", "--plugins", path, "--model", tiny_model_dirs["bert"], "--methods", "bitfit",
                    "--tasks", task, "--out", out, *FAST, env=cli_env)
    assert res.returncode == 1 and "internal error" not in res.stderr, res.stderr
    (rec,) = records(out)
    return rec


def test_task_reader_returning_other_columns_is_a_failed_run_saying_what_it_returned(tiny_model_dirs, cli_env,
                                                                                      tmp_path):
    body = TASK_TEMPLATE.format(name="wrongcols", body='return pd.DataFrame({"sentence": ["a b"], "y": [1]})')
    path = write_plugin(tmp_path, "wrong_columns", body)
    rec = _one_failed_run(path, "wrongcols", tiny_model_dirs, cli_env, tmp_path)
    assert rec["status"] == "failed" and rec["error"] == (
        f"task wrongcols (plugin {path}): reading train.tsv raised ValueError: its reader returned columns sentence, "
        "y; a reader returns a pandas DataFrame with columns text_a, [text_b,] label")


def test_a_metric_returning_no_number_fails_the_run_before_it_trains(tiny_model_dirs, cli_env, tmp_path):
    """The metric scores the trivial baseline's predictions before training: its failure costs no training."""
    body = ("import peftbench\nfrom peftbench import Task\n@peftbench.hookimpl\ndef peftbench_register_metrics(register):\n"
            "    register(peftbench.Metric('dictscore', lambda p, g: {'acc': 1.0}))\n"
            "@peftbench.hookimpl\ndef peftbench_register_tasks(register):\n"
            "    register(Task(name='dictsst', version=1, folder='SST-2', train_file='train.tsv', eval_file='dev.tsv',\n"
            "                  text_columns=('sentence',), label_column='label', metrics=('dictscore',)))\n")
    path = write_plugin(tmp_path, "dict_metric", body)
    rec = _one_failed_run(path, "dictsst", tiny_model_dirs, cli_env, tmp_path)
    assert rec["status"] == "failed" and rec["error_type"] == "TypeError", rec.get("error")
    assert rec["error"].startswith(f"metric dictscore (plugin {path}): scoring raised TypeError"), rec["error"]
    assert rec["failed_in"] == "data" and set(rec["phases_s"]) == {"setup"}, (rec["failed_in"], rec["phases_s"])


@pytest.mark.parametrize("name,message", [
    ("probe-by-accident", "leaves no trainable parameter of its own: it would train the task head only"),
    ("no-return", "apply() returned NoneType, not the model; end apply with `return model`"),
])
def test_method_mistakes_are_one_line_errors_naming_the_method(tiny_model_dirs, cli_env, tmp_path, name, message):
    path = _plugin(tmp_path, name)
    res = cli_in_process("run", "--plugins", path, "--model", tiny_model_dirs["bert"], "--methods", name,
                         "--out", tmp_path / "out", *FAST, env=cli_env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert f"method {name} (plugin {path})" in res.stderr and message in res.stderr


def test_a_declared_probe_may_train_the_head_only(plugin_manager, tmp_path):
    body = METHOD_TEMPLATE.format(name="probe", knob=None, default_knob=None, body="return model")
    load_plugin_file(write_plugin(tmp_path, "probe", body.replace('name = "probe"', 'name = "probe"\n    probe = True')))
    _, counts = apply_method(get_methods()["probe"], make_model("bert"), None)
    assert counts.method == 0 and counts.head > 0


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Rich:
    mode: Literal["fast", "exact"] = "fast"
    level: Literal[1, 2, 3] = 1
    layers: list[int] = None
    color: Color = Color.RED
    maybe: Optional[Literal["a", "b"]] = None


def test_literal_list_and_enum_options():
    opts = parse_options(Rich, {"mode": "exact", "level": "2", "layers": "0,3", "color": "blue", "maybe": "b"}, "m")
    assert opts == Rich("exact", 2, [0, 3], Color.BLUE, "b")
    assert parse_options(Rich, {"color": "RED", "maybe": "none"}, "m").color is Color.RED
    with pytest.raises(PeftbenchError, match=r"mode='slow' must be one of fast, exact"):
        parse_options(Rich, {"mode": "slow"}, "m")
    with pytest.raises(PeftbenchError, match=r"level='7' must be one of 1, 2, 3"):
        parse_options(Rich, {"level": "7"}, "m")
    with pytest.raises(PeftbenchError, match=r"color='green' must be one of RED, BLUE"):
        parse_options(Rich, {"color": "green"}, "m")
    with pytest.raises(PeftbenchError, match=r"option layers='x' is not a valid int"):
        parse_options(Rich, {"layers": "0,x"}, "m")


def test_load_plugins_names_are_normalised_like_packaging(monkeypatch, plugin_manager):
    import importlib.metadata as md

    from peftbench import plugins

    loaded = []

    class Dist:
        name, version = "peftbench_HP.extras", "1.2"

    class EP:
        name, dist = "hp", Dist()

        def load(self):
            import types

            import peftbench
            from peftbench.tasks import Metric

            @peftbench.hookimpl
            def peftbench_register_metrics(register):
                register(Metric("hp-metric", None))

            loaded.append(self.name)
            return types.SimpleNamespace(peftbench_register_metrics=peftbench_register_metrics)

    monkeypatch.setattr(md, "entry_points", lambda group: [EP()])
    monkeypatch.setenv("PEFTBENCH_LOAD_PLUGINS", "other-package")
    plugins._load_entry_points()
    assert loaded == []  # not allowed: not loaded
    monkeypatch.setenv("PEFTBENCH_LOAD_PLUGINS", "peftbench-hp-extras")
    plugins._load_entry_points()
    assert loaded == ["hp"] and plugins.plugin_origin("hp")["distribution"] == "peftbench_HP.extras"
    plugin_manager.unregister(name="hp")


@pytest.mark.parametrize("flag", ["mergeable", "probe", "static_graph"])
def test_method_flags_must_be_booleans(plugin_manager, tmp_path, flag):
    body = METHOD_TEMPLATE.format(name="flagged", knob=None, default_knob=None, body="return model")
    load_plugin_file(write_plugin(tmp_path, "flagged", body.replace(
        'name = "flagged"', f'name = "flagged"\n    {flag} = "no"')))
    with pytest.raises(PluginError, match=f"method flagged: {flag} must be True or False, got 'no'"):
        get_methods()


def test_method_version_must_be_int_or_str(plugin_manager, tmp_path):
    body = METHOD_TEMPLATE.format(name="versioned", knob=None, default_knob=None, body="return model")
    load_plugin_file(write_plugin(tmp_path, "versioned", body.replace(
        'name = "versioned"', 'name = "versioned"\n    version = 1.5')))
    with pytest.raises(PluginError, match="version must be an int or a str"):
        get_methods()


# -- loading: every way a plugin can be broken is one line naming it ------------------------------
def test_a_plugin_file_that_exits_at_import_is_named(plugin_manager, tmp_path):
    for body in ("import sys\nsys.exit(0)\n", "raise SystemExit('this plugin needs foo')\n"):
        with pytest.raises(PluginError, match=r"plugin file .*exits\.py failed to import: SystemExit"):
            load_plugin_file(write_plugin(tmp_path, "exits", body))


def test_a_hook_with_a_wrong_signature_is_the_plugins_error(plugin_manager, tmp_path):
    body = METHOD_TEMPLATE.format(name="badsig", knob=None, default_knob=None, body="return model").replace(
        "def peftbench_register_methods(register):", "def peftbench_register_methods(register, extra):")
    body += "\n\n@peftbench.hookimpl\ndef peftbench_register_method(register):\n    pass\n"  # misspelled too
    with pytest.raises(PluginError, match=r"plugin file .*badsig\.py: .*peftbench_register_methods"):
        load_plugin_file(write_plugin(tmp_path, "badsig", body))


def _entry_points(monkeypatch, *eps):
    import importlib.metadata as md

    monkeypatch.setattr(md, "entry_points", lambda group: list(eps))


def _ep(name, dist, obj):
    return type("EP", (), {"name": name, "dist": type("Dist", (), {"name": dist, "version": "1"})(),
                           "load": lambda self: obj})()


def _metric_plugin(metric):
    import types

    import peftbench
    from peftbench.tasks import Metric

    @peftbench.hookimpl
    def peftbench_register_metrics(register):
        if metric:
            register(Metric(metric, None))

    return types.SimpleNamespace(peftbench_register_metrics=peftbench_register_metrics)


def test_broken_entry_points_are_one_line_each(monkeypatch, plugin_manager, capsys):
    from peftbench import plugins

    monkeypatch.delenv("PEFTBENCH_LOAD_PLUGINS", raising=False)
    cases = [
        ((_ep("m", "pkg-a", _metric_plugin("a-metric")), _ep("m", "pkg-b", _metric_plugin("b-metric"))),
         r"plugin 'm' \(package pkg-b\): another plugin is named 'm' too \(package pkg-a\)"),
        ((_ep("fn", "pkg-f", _metric_plugin("f").peftbench_register_metrics),),  # a function, not a module
         r"plugin 'fn' \(package pkg-f\) defines no peftbench hooks"),
        ((_ep("empty", "pkg-e", _metric_plugin(None)),), r"plugin 'empty' \(package pkg-e\) registers nothing"),
    ]
    for eps, message in cases:
        _entry_points(monkeypatch, *eps)
        with pytest.raises(PluginError, match=message):
            plugins._load_entry_points()
        for ep in eps:
            if plugin_manager.has_plugin(ep.name):
                plugin_manager.unregister(name=ep.name)
        plugins._origins.clear()
    same = _metric_plugin("s-metric")  # one module under two entry-point names
    _entry_points(monkeypatch, _ep("one", "pkg-1", same), _ep("two", "pkg-2", same))
    with pytest.raises(PluginError, match=r"plugin 'two' \(package pkg-2\): Plugin already registered"):
        plugins._load_entry_points()
    plugin_manager.unregister(name="one")
    monkeypatch.setenv("PEFTBENCH_LOAD_PLUGINS", "pkg-aa")  # a typo: says so, loads nothing
    plugins._load_entry_points()
    assert "PEFTBENCH_LOAD_PLUGINS names pkg-aa, which no installed plugin" in capsys.readouterr().err


def test_what_a_plugin_registers_is_checked_and_the_plugin_named(plugin_manager, tmp_path):
    bad_knob = METHOD_TEMPLATE.format(name="strknob", knob="r", default_knob="8", body="return model")
    load_plugin_file(write_plugin(tmp_path, "strknob", bad_knob))
    with pytest.raises(PluginError, match=r"plugin .*strknob\.py: method strknob: default_knob must be a positive "
                                          r"int, got '8'"):
        get_methods()
    plugin_manager.unregister(name=str((tmp_path / "strknob.py").resolve()))
    from peftbench.plugins import get_metrics, get_tasks

    for field, value, message in [("metrics", "()", r"metrics must be a non-empty tuple of metric names"),
                                  ("metrics", "'accuracy'", r"metrics must be a non-empty tuple"),
                                  ("num_labels", "'2'", r"num_labels must be a positive int")]:
        body = ("import peftbench\nfrom peftbench.tasks import Task\n\n@peftbench.hookimpl\n"
                "def peftbench_register_tasks(register):\n"
                f"    register(Task('sst2-x', 1, 'SST-2', 'train.tsv', 'dev.tsv', ('sentence',), 'label', "
                f"{field}={value}))\n")
        path = write_plugin(tmp_path, f"task_{field}_{len(value)}", body)
        load_plugin_file(path)
        with pytest.raises(PluginError, match=rf"plugin .*{path.name}: task sst2-x: {message}"):
            get_tasks()
        plugin_manager.unregister(name=str(path.resolve()))
    body = ("import peftbench\nfrom peftbench.tasks import Metric\n\n@peftbench.hookimpl\n"
            "def peftbench_register_metrics(register):\n    register(Metric('err', None, higher_is_better='no'))\n")
    load_plugin_file(write_plugin(tmp_path, "direction", body))
    with pytest.raises(PluginError, match=r"metric err: higher_is_better must be True or False, got 'no'"):
        get_metrics()


def test_a_methods_crash_while_counting_a_budget_is_the_plugins_not_an_internal_error(plugin_manager, tmp_path):
    body = METHOD_TEMPLATE.format(name="crashy", knob="r", default_knob=8, body="raise RuntimeError('boom')")
    path = write_plugin(tmp_path, "crash", body)
    res = peftbench("budget", "--plugins", path, "--methods", "crashy", "--budget", "75k")
    assert res.returncode == 1, res
    assert "internal error" not in res.stderr and "method crashy (plugin" in res.stderr and "boom" in res.stderr
    res = peftbench("report", str(tmp_path), "--debug")  # a misplaced group flag: a usage line, not a traceback
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--debug" in res.stderr


def test_entry_points_with_specname_hooks_or_hooks_that_ask_for_the_methods_load(monkeypatch, plugin_manager):
    """pluggy registers a hook under another function name (``specname=``), and a hook may itself call
    get_methods() (a task plugin looking at the methods): both loaded before the checks on entry points
    and must still."""
    import types

    import peftbench
    from peftbench import plugins
    from peftbench_plugins.lora import LoRA

    class MyLoRA(LoRA):
        name = "my-lora"

    @peftbench.hookimpl(specname="peftbench_register_methods")
    def methods(register):
        register(MyLoRA())

    @peftbench.hookimpl
    def peftbench_register_tasks(register):
        assert "lora" in get_methods()  # re-enters load_plugins while this entry point is being checked

    monkeypatch.delenv("PEFTBENCH_LOAD_PLUGINS", raising=False)
    _entry_points(monkeypatch, _ep("mine", "pkg-mine", types.SimpleNamespace(
        methods=methods, peftbench_register_tasks=peftbench_register_tasks)))
    monkeypatch.setattr(plugins, "_defaults_loaded", False)
    plugins.load_plugins()
    assert "my-lora" in get_methods()
    plugin_manager.unregister(name="mine")
    plugins._origins.clear()
