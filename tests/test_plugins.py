"""Plugin loading: built-ins like externals, fake plugins in fixtures, local files, errors."""

import subprocess
import sys
from pathlib import Path

import pluggy
import pytest

import peftbench
from conftest import write_plugin
from peftbench import plugins
from peftbench.errors import PluginError
from peftbench.plugins import DEFAULT_PLUGINS, get_methods, load_plugin_file

PLUGIN_FILE = '''
import peftbench
from peftbench.method import freeze

class Frozen(peftbench.Method):
    name = "{name}"
    def apply(self, model, knob_value=None, **options):
        freeze(model)
        return model

@peftbench.hookimpl
def peftbench_register_methods(register):
    register(Frozen())
'''


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "peftbench.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_builtins_are_registered_like_external_plugins(plugin_manager):
    names = {plugin_manager.get_name(p) for p in plugin_manager.get_plugins()}
    assert set(DEFAULT_PLUGINS) <= names
    methods = get_methods()
    assert list(methods)[:5] == ["full", "bitfit", "lora", "adapter", "prefix"]
    assert methods["lora"].plugin == "peftbench_plugins.lora"


def test_no_misspelled_hooks(plugin_manager):
    plugin_manager.check_pending()


def test_fake_plugin_appears_and_is_removed(plugin_manager):
    class Fake:
        class Method(peftbench.Method):
            name = "fake"

            def apply(self, model, knob_value=None, **options):
                return model

        @peftbench.hookimpl
        def peftbench_register_methods(self, register):
            register(self.Method())

    plugin = Fake()
    plugin_manager.register(plugin, name="fake-plugin")
    assert get_methods()["fake"].plugin == "fake-plugin"
    plugin_manager.unregister(plugin)
    assert "fake" not in get_methods()


def test_duplicate_name_names_both_plugins(plugin_manager, tmp_path):
    load_plugin_file(write_plugin(tmp_path, "dup", PLUGIN_FILE.format(name="lora")))
    with pytest.raises(PluginError, match=r"method 'lora' is registered twice: by plugin peftbench_plugins.lora and by plugin .*dup.py"):
        get_methods()


def test_names_must_be_lowercase(plugin_manager, tmp_path):
    load_plugin_file(write_plugin(tmp_path, "upper", PLUGIN_FILE.format(name="MyLoRA")))
    with pytest.raises(PluginError, match="named 'MyLoRA'; names must be lowercase"):
        get_methods()


def test_broken_and_empty_plugin_files(plugin_manager, tmp_path):
    with pytest.raises(PluginError, match=r"plugin file .*broken.py failed to import: SyntaxError"):
        load_plugin_file(write_plugin(tmp_path, "broken", "def oops(:\n"))
    with pytest.raises(PluginError, match=r"failed to import: ModuleNotFoundError: No module named 'nope'"):
        load_plugin_file(write_plugin(tmp_path, "missing", "import nope\n"))
    with pytest.raises(PluginError, match="defines no peftbench hooks"):
        load_plugin_file(write_plugin(tmp_path, "empty", "x = 1\n"))
    with pytest.raises(PluginError, match="absent.py: no such file; give the path of a .py plugin file"):
        load_plugin_file(tmp_path / "absent.py")
    with pytest.raises(PluginError, match="is a folder; give the path of a .py plugin file"):
        load_plugin_file(tmp_path)


def test_misspelled_hook_is_reported(plugin_manager, tmp_path):
    body = "import peftbench\n@peftbench.hookimpl\ndef peftbench_register_method(register):\n    pass\n"
    with pytest.raises(PluginError, match="unknown hook 'peftbench_register_method'") as err:
        plugins.load_plugins([write_plugin(tmp_path, "typo", body)])
    assert "(did you mean peftbench_register_methods" in str(err.value) and "<module" not in str(err.value)


def test_entry_points_respect_load_plugins(monkeypatch, plugin_manager):
    import importlib.metadata as md

    loads = []

    class FakeEP:
        name, dist = "thirdparty", None

        def load(self):
            loads.append(self.name)
            raise ImportError("should not be loaded")

    monkeypatch.setattr(md, "entry_points", lambda group: [FakeEP()])
    monkeypatch.setenv("PEFTBENCH_LOAD_PLUGINS", "")
    plugins._load_entry_points()  # empty list: none loaded
    assert loads == [] and not plugin_manager.has_plugin("thirdparty")
    monkeypatch.setenv("PEFTBENCH_LOAD_PLUGINS", "thirdparty")
    with pytest.raises(PluginError, match=r"plugin 'thirdparty' \(package \?\) failed to import: ImportError"):
        plugins._load_entry_points()
    assert loads == ["thirdparty"]


def test_local_plugin_file_via_cli(tmp_path):
    path = write_plugin(tmp_path, "mine", PLUGIN_FILE.format(name="frozen"))
    out = _cli("methods", "--plugins", str(path))
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("frozen"))
    assert str(path) in line and "- (fixed)" in line


def test_broken_plugin_via_cli_is_one_line_exit_2(tmp_path):
    path = write_plugin(tmp_path, "bad", "raise RuntimeError('boom')\n")
    out = _cli("--plugins", str(path), "methods")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "bad.py failed to import: RuntimeError: boom" in out.stderr and "Traceback" not in out.stderr


def test_hookspecs_are_prefixed():
    from peftbench import hookspecs

    pm = pluggy.PluginManager("peftbench")
    pm.add_hookspecs(hookspecs)
    assert all(name.startswith("peftbench_") for name in pm.hook.__dict__ if not name.startswith("_"))


def test_every_package_is_in_the_distribution():
    """pyproject.toml lists its packages: a folder of modules missing there is missing from a wheel
    (a non-editable install had no peftbench.cli, so no `peftbench` command)."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name: root / folder for name, folder in setuptools["package-dir"].items()}
    found = {".".join((top, *init.parent.relative_to(folder).parts))
             for top, folder in folders.items() for init in folder.rglob("__init__.py")}
    assert found == set(setuptools["packages"])


def test_a_duplicate_metric_is_blamed_on_the_two_plugins_that_registered_it(plugin_manager, tmp_path):
    """A task's validation reads the metrics: a metric registered twice is said as such, not as an error of
    the task's plugin (it read 'plugin peftbench_tasks.glue: metric ... registered twice')."""
    body = ("import peftbench\n@peftbench.hookimpl\ndef peftbench_register_metrics(register):\n"
            "    register(peftbench.Metric('accuracy', lambda p, g: 1.0))\n")
    path = write_plugin(tmp_path, "dup_metric", body)
    plugins.load_plugins([path])
    with pytest.raises(PluginError) as err:
        plugins.get_tasks()
    assert str(err.value).startswith("metric 'accuracy' is registered twice: by plugin peftbench_tasks.metrics and "
                                     f"by plugin {path}")


def test_an_options_default_outside_its_type_is_the_plugins_error_at_registration(plugin_manager, tmp_path):
    """`check` passed such a method and `run` blamed the user's options ("option mode='c' must be one of
    a, b"); the default is the plugin's, said when it registers, naming it."""
    body = '''
from dataclasses import dataclass
from typing import Literal

import peftbench


@dataclass(frozen=True)
class Options:
    mode: Literal["a", "b"] = "c"


class M(peftbench.Method):
    name = "bad-default"
    Options = Options

    def apply(self, model, knob_value=None, **options):
        return model


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(M())
'''
    path = write_plugin(tmp_path, "bad_default", body)
    plugins.load_plugins([path])
    with pytest.raises(PluginError) as err:
        plugins.get_methods()
    assert str(err.value) == (f"plugin {path}: method bad-default: a default of its Options is invalid (method "
                              "bad-default: option mode='c' must be one of a, b); fix the Options dataclass")
