"""Sweep files (`peftbench run --config`): defaults, per-sweep and per-task overrides, what a
default lr_extend applies to, and bad files as one line with exit code 2."""

import pytest

from conftest import cli_in_process
from peftbench import sweepfile
from peftbench.errors import PeftbenchError

FILE = """
out = "results"
tasks = ["sst2", "trec"]
seeds = [0, 1]
epochs = 1
lr_extend = 2
lr_grid = { lora = [1e-4, 1e-3] }

[[sweep]]
methods = ["base"]
seeds = [0]

[[sweep]]
methods = ["lora", "bitfit"]
budget = "lora:r=2"

[task.trec]
epochs = 3
"""


def write(tmp_path, text, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_overrides_and_what_lr_extend_applies_to(tmp_path):
    settings, out = sweepfile.load(write(tmp_path, FILE))
    assert out == (tmp_path / "results").resolve()  # relative to the file's folder
    by = {(s.methods, s.tasks): s for s in settings}
    assert set(by) == {("base", "sst2"), ("base", "trec"), ("lora,bitfit", "sst2"), ("lora,bitfit", "trec")}
    assert by["base", "sst2"].seeds == "0" and by["lora,bitfit", "sst2"].seeds == "0,1"
    assert by["lora,bitfit", "trec"].epochs == 3 and by["lora,bitfit", "sst2"].epochs == 1  # [task.trec]
    assert by["lora,bitfit", "sst2"].lr_grid == ("lora=0.0001,0.001",) and by["lora,bitfit", "sst2"].lr_extend == 2
    # the baseline's sweep searches nothing: the default lr_extend is not its
    assert by["base", "sst2"].lr_grid == () and by["base", "sst2"].lr_extend == 0


def test_lr_extend_a_sweep_sets_itself_still_needs_a_search(tmp_path, cli_env, tiny_model_dirs):
    path = write(tmp_path, f'model = "{tiny_model_dirs["bert"]}"\nout = "o"\n[[sweep]]\nmethods = ["base"]\n'
                           "lr_extend = 2\n")
    res = cli_in_process("run", "--config", path, "--dry-run", env=cli_env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "--lr-extend 2 grows a learning-rate search's grid" in res.stderr


@pytest.mark.parametrize("text, message", [
    ('methds = ["lora"]\n', "unknown key 'methds' in the top level (did you mean methods"),
    ('[[sweep]]\nmethods = ["lora"]\nepoch = 2\n', "unknown key 'epoch' in [[sweep]] number 1"),
    ('methods = ["lora"\n', "not valid TOML"),
    ('methods = ["lora"]\nlr_grid = { full = [1e-5, 1e-4] }\n', "lr_grid names full, which no sweep runs"),
    ('methods = ["lora[target_modules=q]"]\nlr_grid = { "lora[target_modules=q]" = [1e-5, 1e-4] }\n',
     "lr_grid key 'lora[target_modules=q]': a grid belongs to a method and serves all its variants; name it "
     "without options (lora = [...])"),
    ('methods = ["lora"]\n[task.cola]\nepochs = 2\n', "[task.cola] names a task that no sweep runs"),
    ('methods = ["lora"]\ntasks = ["sst2", "trec"]\n[task.trecc]\nepochs = 2\n',
     "[task.trecc] names a task that no sweep runs (did you mean trec?)"),
    ('methods = ["lora"]\n[task.sst2]\nmethods = ["full"]\n', "unknown key 'methods' in [task.sst2]"),
    ('out = 5\nmethods = ["lora"]\n', "out = 5 must be a folder's path in quotes"),
    ('methods = ["lora"]\ndevice = "tpu"\n', "device = 'tpu': give one of auto, cpu, cuda"),
    ('methods = ["lora"]\nlr = { lora = [1e-3, 2e-3] }\n',
     "lr.lora = [0.001, 0.002]: give one value per method (a grid of rates to search: lr_grid)"),
])
def test_bad_files_are_one_line(tmp_path, cli_env, text, message):
    path = write(tmp_path, text)
    with pytest.raises(PeftbenchError) as err:
        sweepfile.load(path)
    assert message in str(err.value), str(err.value)
    res = cli_in_process("run", "--config", path, "--dry-run", env=cli_env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and message in res.stderr, res.stderr


def test_a_file_and_sweep_flags_are_bad_input(tmp_path, cli_env):
    path = write(tmp_path, 'methods = ["lora"]\n')
    res = cli_in_process("run", "--config", path, "--methods", "full", "--epochs", "2", "--dry-run", env=cli_env)
    assert res.returncode == 2 and "defines the sweep; drop --methods, --epochs" in res.stderr, res.stderr
    res = cli_in_process("run", "--config", tmp_path / "missing.toml", env=cli_env)
    assert res.returncode == 2 and "missing.toml: no such file" in res.stderr
    # a value refused while planning: the flag's message (the key has its name), prefixed with the file
    path = write(tmp_path, 'methods = ["lora"]\n[task.sst2]\nepochs = -2\n')
    res = cli_in_process("run", "--config", path, "--dry-run", env=cli_env)
    assert res.returncode == 2 and f"Error: {path}: --epochs must be positive, got -2.0" in res.stderr, res.stderr


def test_lr_extend_in_a_file_that_searches_nothing(tmp_path, cli_env, tiny_model_dirs):
    path = write(tmp_path, f'model = "{tiny_model_dirs["bert"]}"\nout = "o"\nmethods = ["lora"]\nlr_extend = 1\n')
    res = cli_in_process("run", "--config", path, "--dry-run", env=cli_env)
    assert res.returncode == 2 and "--lr-extend 1 grows a learning-rate search's grid" in res.stderr, res.stderr


def test_budget_solutions_shared_by_entries_are_shown_once(tmp_path, cli_env, tiny_model_dirs):
    """A [task.x] table splits a sweep into one entry per task; the same budget solution is printed once."""
    path = write(tmp_path, f'model = "{tiny_model_dirs["bert"]}"\nout = "o"\nmethods = ["lora", "bitfit"]\n'
                           'tasks = ["sst2", "trec"]\n[task.trec]\nepochs = 2\n')
    res = cli_in_process("run", "--config", path, "--dry-run", env=cli_env)
    assert res.returncode == 0, res.stderr
    rows = [ln.split() for ln in res.stderr.splitlines() if ln.startswith("  lora:r=8")]
    assert [r[1] for r in rows] == ["lora", "bitfit"], res.stderr
