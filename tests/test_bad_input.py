"""Bad input: one line on stderr naming the problem, exit code 2, no traceback, no record."""

import os
import subprocess
import sys

import pytest

from conftest import write_plugin
from peftbench.cli import main
from peftbench.errors import PeftbenchError

BROKEN_DUP = '''
import peftbench

class Dup(peftbench.Method):
    name = "lora"
    def apply(self, model, knob_value=None, **options):
        return model

@peftbench.hookimpl
def peftbench_register_methods(register):
    register(Dup())
'''


SILENT = """
import peftbench

@peftbench.hookimpl
def peftbench_register_methods(register):
    pass
"""

CRASHING = """
import peftbench

@peftbench.hookimpl
def peftbench_register_methods(register):
    raise KeyError("settings")
"""


def _case(tmp_path, small_data, tiny_model_dirs):
    """name -> (extra args, expected message fragment)."""
    bad_data = tmp_path / "bad-data"
    (bad_data / "SST-2").mkdir(parents=True)
    (bad_data / "SST-2" / "train.tsv").write_text("sentence\tlabel\nfine\t1\nbroken line\n")
    (bad_data / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nok\t0\n")
    latin1 = tmp_path / "latin1-data"
    (latin1 / "SST-2").mkdir(parents=True)
    (latin1 / "SST-2" / "train.tsv").write_bytes("sentence\tlabel\nfine\t1\ncaf\u00e9\t0\n".encode("latin-1"))
    (latin1 / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nok\t0\n")
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return {
        "unknown method": (["--methods", "lorra"], "unknown method 'lorra' (did you mean lora"),
        "unknown task": (["--tasks", "sst3"], "unknown task 'sst3' (did you mean sst2"),
        "unknown option": (["--methods", "lora[alpah=3]"], "unknown option 'alpah' (did you mean alpha?)"),
        "bad option value": (["--methods", "lora[alpha=big]"], "option alpha='big' is not a valid float"),
        "bad placement": (["--methods", "adapter[placement=middle]"], "placement must be one of houlsby, pfeiffer"),
        "malformed lr": (["--lr", "lora=fast"], "--lr 'lora=fast': 'fast' is not a valid number"),
        "lr for absent method": (["--lr", "lorra=1e-3"], "'lorra' is not a method in --methods (did you mean lora?)"),
        "negative lr": (["--lr", "lora=-1"], "a learning rate must be positive"),
        "malformed knob": (["--knob", "lora=x"], "--knob 'lora=x': 'x' is not a valid number"),
        "knob out of range": (["--knob", "lora=0"], "r must be a positive integer, got 0"),
        "knob on fixed method": (["--methods", "full", "--knob", "full=4"], "method full has no size knob"),
        "malformed budget": (["--budget", "lots"], "--budget 'lots' is not understood"),
        "negative reference budget": (["--budget", "lora:r=-1"], "a reference's size must be a positive integer"),
        "impossible budget": (["--budget", "5"], "budget 5 is out of reach for lora"),
        "budget over model": (["--budget", "100M"], "exceeds the model's"),
        "unknown target module": (["--methods", "lora[target_modules=nope]", "--budget", "none"],
                                  "lora: found no linear layers for target 'nope' in BertForSequenceClassification"),
        "negative seed": (["--seeds", "0,-1"], "--seeds -1: a seed must be an integer in [0, 2**32)"),
        "length over positions": (["--max-seq-len", "512"], "--max-seq-len = 512 exceeds the model's 128 positions"),
        "val samples over the training file": (["--lr-grid", "lora=1e-4,1e-3", "--val-samples", "100000000"],
                                               "task sst2: --val-samples 100000000: the training file has"),
        "latency length over positions": (["--latency-seq-len", "512"],
                                          "--latency-seq-len = 512 exceeds the model's 128 positions; give "
                                          "--latency-seq-len <= 128"),
        "bad seeds": (["--seeds", "a,b"], "--seeds 'a,b': expected comma-separated integers"),
        "bad train samples": (["--train-samples", "many"], "--train-samples 'many': give a positive integer or 'all'"),
        "zero epochs": (["--epochs", "0"], "--epochs must be positive"),
        "negative clipping norm": (["--max-grad-norm", "-1"], "--max-grad-norm must be a finite number >= 0, got -1.0"),
        "nan weight decay": (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0, got nan"),
        "warmup ratio over 1": (["--warmup-ratio", "1.5"], "--warmup-ratio must be in [0, 1), got 1.5"),
        "missing data folder": (["--data-dir", str(tmp_path / "nowhere")], "task sst2: --data-dir="),
        "malformed data": (["--data-dir", str(bad_data)], "train.tsv:3: expected 2 tab-separated fields, found 1"),
        "data not utf-8": (["--data-dir", str(latin1)], "train.tsv:3: not UTF-8 text; re-save the file as UTF-8"),
        "not a model": (["--model", str(not_a_model)], "is not a loadable model"),
        "missing model path": (["--model", str(tmp_path / "no" / "model")], "no such folder"),
        "broken plugin": (["--plugins", str(write_plugin(tmp_path, "broken", "import nope\n"))],
                          "broken.py failed to import: ModuleNotFoundError"),
        "empty plugin": (["--plugins", str(write_plugin(tmp_path, "empty", "X = 1\n"))], "defines no peftbench hooks"),
        "plugin registers nothing": (["--plugins", str(write_plugin(tmp_path, "silent", SILENT))],
                                     "silent.py registers nothing"),
        "plugin hook raises": (["--plugins", str(write_plugin(tmp_path, "crashing", CRASHING))],
                               "peftbench_register_methods raised KeyError: 'settings'"),
        "duplicate plugin": (["--plugins", str(write_plugin(tmp_path, "dup", BROKEN_DUP))],
                             "method 'lora' is registered twice: by plugin peftbench_plugins.lora and by plugin"),
        "out is a file": (["--out", str(a_file)], "is a file; give a folder"),
        "out is a file, dry run": (["--out", str(a_file), "--dry-run"], "is a file; give a folder"),
        "out under a file": (["--out", str(a_file / "sub")], "is not writable"),
        "out under a file, dry run": (["--out", str(a_file / "sub"), "--dry-run"],
                                      "is a file, so the folder cannot be made"),
        "unknown flag": (["--epoch", "2"], "No such option '--epoch'. (Did you mean one of: '--epochs'"),
        "bad device choice": (["--device", "tpu"], "'tpu' is not one of"),
    }


@pytest.fixture
def cases(tmp_path, small_data, tiny_model_dirs):
    return _case(tmp_path, small_data, tiny_model_dirs)


NAMES = [
    "unknown method", "unknown task", "unknown option", "bad option value", "bad placement", "malformed lr",
    "lr for absent method", "negative lr", "malformed knob", "knob out of range", "knob on fixed method",
    "malformed budget", "negative reference budget", "impossible budget", "budget over model", "unknown target module", "negative seed",
    "length over positions", "latency length over positions", "val samples over the training file", "bad seeds", "bad train samples", "zero epochs", "negative clipping norm",
    "nan weight decay", "warmup ratio over 1",
    "missing data folder", "malformed data", "data not utf-8", "not a model", "missing model path", "broken plugin", "empty plugin",
    "plugin registers nothing", "plugin hook raises", "duplicate plugin", "out is a file", "out is a file, dry run", "out under a file", "out under a file, dry run", "unknown flag", "bad device choice",
]


@pytest.mark.parametrize("name", NAMES)
def test_bad_input(name, cases, tmp_path, small_data, tiny_model_dirs, capsys, monkeypatch, plugin_manager):
    monkeypatch.setenv("PEFTBENCH_DATA", str(small_data))
    args, message = cases[name]
    base = ["run", "--model", str(tiny_model_dirs["bert"]), "--out", str(tmp_path / "out"), "--max-steps", "1"]
    code = main(base + args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().count("\n") == 0, err
    assert err.startswith("Error: ") and message in err, err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("out/records/*.json"))


def test_console_script_exit_code_and_debug(tmp_path):
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-m", "peftbench.cli", "run", "--methods", "lorra"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("Error: unknown method 'lorra' (did you mean lora") and "peftbench methods" in res.stderr
    res = subprocess.run([sys.executable, "-m", "peftbench.cli", "--debug", "run", "--methods", "lorra"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_the_fork_servers_quick_exit_is_the_fork_servers_only():
    """peftbench._forkserver makes the fork server end without interpreter teardown (os._exit(0)
    at exit); imported by anything else it must not, or that process's exit code would become 0."""
    code = "import sys, peftbench._forkserver; sys.exit(3)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 3


ABANDONED_START = """
import os, multiprocessing.forkserver as fs
from peftbench import worker
worker.context()  # the sweep's fork server, as a sweep starts it
pipe, to_child = fs._forkserver.connect_to_new_process([])  # the server forks the run's process ...
os.close(to_child)  # ... and a Ctrl-C stops the sweep before it sends what to run
fs.read_signed(pipe)  # the process's pid
print("exit", fs.read_signed(pipe))  # its exit code, once it has ended
"""


def test_a_start_given_up_leaves_no_traceback():
    """A Ctrl-C between the fork server's fork and the sweep's message to the new process (CI saw the
    EOFError's traceback under "Interrupted"): the abandoned process ends without one."""
    res = subprocess.run([sys.executable, "-c", ABANDONED_START], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.split() == ["exit", "1"], res.stderr
    assert "Traceback" not in res.stderr and "EOFError" not in res.stderr, res.stderr


def test_report_on_empty_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no run records found" in capsys.readouterr().err


def test_a_hub_id_with_an_owner_goes_to_the_hub_not_to_a_folder_check(monkeypatch, tmp_path):
    """"org/name" is a transformers model id (loaded from the hub or its cache) unless such a folder
    exists; a path that looks like one (./x, /x, a/b/c) and is missing is refused as a folder."""
    import transformers

    from peftbench.models import load_config

    asked = []
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda name, **kw: asked.append(name) or "config")
    assert load_config("someorg/tiny") == "config" and asked == ["someorg/tiny"]
    monkeypatch.chdir(tmp_path)
    for path in ("./someorg/tiny", str(tmp_path / "someorg" / "tiny"), "a/b/c"):
        with pytest.raises(PeftbenchError, match="no such folder"):
            load_config(path)
    assert asked == ["someorg/tiny"]
