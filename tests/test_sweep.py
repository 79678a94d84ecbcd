"""Sweeps that survive: fault injection, kill and resume, determinism, atomic records."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_in_process, write_plugin
from peftbench.records import load_records, read_record, write_atomic

FAULTS = '''
import os, signal, time
import peftbench
from peftbench.method import freeze


class Fault(peftbench.Method):
    probe = True  # trains the head only

    def apply(self, model, knob_value=None, **options):
        freeze(model)
        calls = {"n": 0}

        def hook(module, args, output):
            calls["n"] += 1
            if module.training and calls["n"] >= 2:
                return self.fault(output)
        model.register_forward_hook(hook)
        return model


class Boom(Fault):
    name = "boom"
    def fault(self, output):
        raise RuntimeError("injected failure inside training")


class NaN(Fault):
    name = "nan"
    def fault(self, output):
        output.loss = output.loss * float("nan")
        return output


class Exit(Fault):
    name = "exit"
    def fault(self, output):
        os._exit(7)


class Kill(Fault):
    name = "sigkill"
    def fault(self, output):
        os.kill(os.getpid(), signal.SIGKILL)


class OOM(Fault):
    name = "oom"
    def fault(self, output):
        import torch
        torch.empty(1 << 60, dtype=torch.uint8)  # the CPU allocator refuses: a RuntimeError


class Hang(Fault):
    name = "hang"
    def fault(self, output):
        time.sleep(600)


@peftbench.hookimpl
def peftbench_register_methods(register):
    for cls in (Boom, NaN, Exit, Kill, Hang, OOM):
        register(cls())
'''

FAST = ["--max-steps", "4", "--batch-size", "8", "--no-latency", "--no-progress", "--train-samples", "64"]


peftbench = cli_in_process  # in this process: no imports anew


def by_label(out):
    return {r["spec"]["label"] + f"/s{r['spec']['seed']}": r for r in load_records(out).values()}


def test_faults_are_recorded_and_the_sweep_goes_on(tiny_model_dirs, cli_env, tmp_path):
    plugin = write_plugin(tmp_path, "faults", FAULTS)
    out = tmp_path / "out"
    res = peftbench("run", "--plugins", plugin, "--model", tiny_model_dirs["bert"],
                    "--methods", "boom,nan,exit,lora,sigkill,oom,bitfit", "--knob", "lora=2",
                    "--out", out, *FAST, env=cli_env)
    assert res.returncode == 1, res.stderr
    assert "5 run(s) did not finish ok" in res.stderr.splitlines()[-1]
    # only the test about timeouts uses one (passing runs under load must not turn into timeouts)
    hang = peftbench("run", "--plugins", plugin, "--model", tiny_model_dirs["bert"], "--methods", "hang",
                     "--timeout-per-run", "5", "--out", out, *FAST, env=cli_env)
    assert hang.returncode == 1, hang.stderr
    recs = by_label(out)
    status = {k.split("/")[0]: r["status"] for k, r in recs.items()}
    assert status == {"boom": "failed", "nan": "diverged", "exit": "failed", "lora": "ok",
                      "sigkill": "failed", "hang": "timeout", "oom": "oom", "bitfit": "ok"}
    assert "can't allocate memory" in recs["oom/s0"]["error"]
    assert recs["boom/s0"]["error"] == "injected failure inside training"
    assert recs["boom/s0"]["error_type"] == "RuntimeError"
    tb = (out / "records" / recs["boom/s0"]["traceback_file"]).read_text()
    assert "Traceback" in tb and "injected failure" in tb
    assert "loss became nan at step 2" in recs["nan/s0"]["error"]
    assert "exited with code 7" in recs["exit/s0"]["error"]
    assert "SIGKILL" in recs["sigkill/s0"]["error"]
    assert "--timeout-per-run 5 s" in recs["hang/s0"]["error"]
    assert not list((out / "records").glob(".*"))  # no temp or spec files left behind


def _pids_tagged(tag: str) -> list[int]:
    """Live processes whose environment carries PEFTBENCH_TEST_TAG=tag (Linux /proc)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if f"PEFTBENCH_TEST_TAG={tag}".encode() in (p / "environ").read_bytes().split(b"\0"):
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


def _processes_tagged(tag: str) -> int:
    return len(_pids_tagged(tag))


def _is_run(pid: int) -> bool:
    """A run process (a fork-server child executing child_main), not the sweep or the fork server."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        return b"forkserver" in Path(f"/proc/{parent}/cmdline").read_bytes() and b"forkserver" in cmdline
    except (OSError, ValueError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_kill_the_sweep_then_resume(tiny_model_dirs, cli_env, tmp_path):
    out = tmp_path / "out"
    cli_env = dict(cli_env, PEFTBENCH_TEST_TAG=tmp_path.name)
    args = ["run", "--model", tiny_model_dirs["bert"], "--methods", "lora", "--knob", "lora=2",
            "--seeds", "0,1,2", "--out", out, "--max-steps", "150", "--batch-size", "8", "--no-latency", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "peftbench.cli", *map(str, args)], env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "records").glob("*.json")):
        time.sleep(0.05)
    time.sleep(0.3)  # the second run is under way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 120  # the run in progress dies with the sweep (via its fork server) or finishes
    while time.time() < deadline and _processes_tagged(tmp_path.name):
        time.sleep(0.1)
    assert not _processes_tagged(tmp_path.name), "a run outlived its sweep by two minutes"
    first = {p.name: p.read_bytes() for p in (out / "records").glob("*.json")}
    assert 1 <= len(first) < 3
    res = peftbench(*args, env=cli_env)
    assert res.returncode == 0, res.stderr
    assert f"skipping {len(first)} run(s) with an ok record; {3 - len(first)} to run" in res.stderr, res.stderr
    recs = load_records(out)
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs.values())
    assert sorted(r["spec"]["seed"] for r in recs.values()) == [0, 1, 2]
    for name, content in first.items():  # the finished run was neither recomputed nor rewritten
        assert (out / "records" / name).read_bytes() == content


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_killed_sweep_takes_its_run_along(tiny_model_dirs, cli_env, tmp_path, sig=signal.SIGKILL):
    """A run that would go on for hours dies within seconds of its sweep (SIGKILL here; SIGTERM
    behaves the same): the fork server exits once the sweep is gone and its children die with it."""
    cli_env = dict(cli_env, PEFTBENCH_TEST_TAG=tmp_path.name)
    args = ["run", "--model", tiny_model_dirs["bert"], "--methods", "lora", "--knob", "lora=2", "--out",
            tmp_path / "out", "--max-steps", "10000000", "--epochs", "100000", "--batch-size", "2", "--no-latency",
            "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "peftbench.cli", *map(str, args)], env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(_is_run(p) for p in _pids_tagged(tmp_path.name)):
        time.sleep(0.1)
    assert any(_is_run(p) for p in _pids_tagged(tmp_path.name)), "the run did not start"
    time.sleep(1.0)
    proc.send_signal(sig)
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and _processes_tagged(tmp_path.name):
        time.sleep(0.1)
    left = _processes_tagged(tmp_path.name)
    for pid in _pids_tagged(tmp_path.name):  # do not leave them running if the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{left} process(es) of the sweep outlived it by 15 s"


def test_same_command_twice_gives_identical_results(tiny_model_dirs, cli_env, tmp_path):
    results = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        res = peftbench("run", "--model", tiny_model_dirs["gpt2"], "--methods", "lora,prefix", "--knob",
                        "lora=2,prefix=3", "--out", out, "--tasks", "stsb", "--seeds", "0,1", *FAST, env=cli_env)
        assert res.returncode == 0, res.stderr
        results.append({r["run_id"]: r for r in load_records(out).values()})
    assert results[0].keys() == results[1].keys() and len(results[0]) == 4
    # Same seeds, data order and initialisation; equal to float32 rounding, not always to the bit: on a
    # Xeon without AMX (2026-12-02) one of the four runs' Pearson came out 0.08994855731725693 once and
    # 0.08994858711957932 the next time in the same process (the BLAS kernels' summation order can vary
    # between calls); a seeding or data-order mistake moves these numbers by far more than 1e-6.
    for rid, a in results[0].items():
        b = results[1][rid]
        assert a["metrics"].keys() == b["metrics"].keys()
        assert all(b["metrics"][k] == pytest.approx(v, rel=1e-6, abs=1e-7) for k, v in a["metrics"].items())
        assert b["train"]["loss_curve"] == pytest.approx(a["train"]["loss_curve"], rel=1e-6, abs=1e-7)
        assert a["determinism"]["seed"] == a["spec"]["seed"]


def test_train_subset_first_is_recorded_and_changes_the_data(tiny_model_dirs, cli_env, tmp_path):
    runs = {}
    for how in ("random", "first"):
        out = tmp_path / how
        res = peftbench("run", "--model", tiny_model_dirs["bert"], "--methods", "bitfit", "--out", out,
                        "--train-subset", how, *FAST, env=cli_env)
        assert res.returncode == 0, res.stderr
        (rec,) = load_records(out).values()
        runs[how] = rec
    assert runs["first"]["spec"]["train_subset"] == "first" and runs["random"]["spec"]["train_subset"] == "random"
    assert runs["first"]["run_id"] != runs["random"]["run_id"]
    assert runs["first"]["train"]["loss_curve"] != runs["random"]["train"]["loss_curve"]


def test_settings_that_pick_nothing_do_not_split_run_ids(tiny_model_dirs, small_data):
    from peftbench.plan import SweepSettings, plan

    def spec(**kw):
        s = SweepSettings(methods="lora", model=str(tiny_model_dirs["bert"]), data_dir=str(small_data),
                          budget="none", latency=None, **kw)
        (one,) = plan(s).specs
        return one

    all_data = spec(train_samples=None, train_subset="first")
    assert all_data["train_subset"] == "random" and all_data["run_id"] == spec(train_samples=None)["run_id"]
    first = spec(train_samples=64, train_subset="first", data_seed=5)
    assert first["data_seed"] == 0 and first["run_id"] == spec(train_samples=64, train_subset="first")["run_id"]
    assert spec(train_samples=64, data_seed=5)["run_id"] != spec(train_samples=64)["run_id"]


def test_rerun_failed_and_force(tiny_model_dirs, cli_env, tmp_path):
    plugin = write_plugin(tmp_path, "faults", FAULTS)
    out = tmp_path / "out"
    args = ["run", "--plugins", plugin, "--model", tiny_model_dirs["bert"], "--methods", "boom,bitfit",
            "--out", out, *FAST]
    assert peftbench(*args, env=cli_env).returncode == 1
    res = peftbench(*args, env=cli_env)
    assert "skipping 1 run(s) with an ok record and 1 earlier failure(s)" in res.stderr and res.returncode == 1
    res = peftbench(*args, "--rerun-failed", env=cli_env)
    assert "[1/1] boom" in res.stderr
    ok_before = next(r for r in load_records(out).values() if r["status"] == "ok")
    res = peftbench(*args, "--force", env=cli_env)
    assert "[2/2]" in res.stderr
    # the rerun replaced the ok record; the earlier result is kept, not lost
    kept = out / "records" / "superseded" / f"{ok_before['run_id']}.{ok_before['attempt']}.json"
    assert read_record(kept) == ok_before
    assert len(load_records(out)) == 2


def test_corrupt_record_is_reported_and_treated_as_missing(tmp_path):
    write_atomic(tmp_path / "records" / "good.json", {"run_id": "good", "status": "ok"})
    (tmp_path / "records" / "bad.json").write_text('{"run_id": "bad", "stat')
    warnings = []
    recs = load_records(tmp_path, warn=warnings.append)
    assert list(recs) == ["good"]
    assert len(warnings) == 1 and "bad.json: corrupt record" in warnings[0]
    with pytest.raises(ValueError, match="corrupt"):
        read_record(tmp_path / "records" / "bad.json")


def test_atomic_write_leaves_old_record_when_writing_fails(tmp_path):
    path = tmp_path / "r.json"
    write_atomic(path, {"run_id": "x", "status": "ok"})

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("crash while serialising")

    with pytest.raises(RuntimeError):
        write_atomic(path, {"run_id": "x", "status": "ok", "bad": Unserialisable()})
    assert json.loads(path.read_text()) == {"run_id": "x", "status": "ok"}
    assert os.listdir(tmp_path) == ["r.json"]


MARKER = '''
import os
from pathlib import Path

import peftbench
from peftbench_plugins.lora import LoRA


class Marked(LoRA):
    """LoRA that creates the file $PEFTBENCH_TEST_MARK at its first training forward."""
    name = "marked"

    def apply(self, model, knob_value, **options):
        model = super().apply(model, knob_value, **options)

        def mark(module, args, output):
            if module.training:
                Path(os.environ["PEFTBENCH_TEST_MARK"]).touch()
        model.register_forward_hook(mark)
        return model


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(Marked())
'''


def _start_marked_sweep(tiny_model_dirs, cli_env, tmp_path):
    """A two-run sweep of a method that marks its first training step; returns (proc, out, mark)."""
    out = tmp_path / "out"
    mark = tmp_path / "training-started"
    plugin = write_plugin(tmp_path, "marker", MARKER)
    env = dict(cli_env, PEFTBENCH_TEST_MARK=str(mark), PEFTBENCH_TEST_TAG=tmp_path.name)
    args = ["run", "--plugins", plugin, "--model", tiny_model_dirs["bert"], "--methods", "marked",
            "--knob", "marked=2", "--seeds", "0,1", "--out", out, "--epochs", "1000", "--batch-size", "8",
            "--no-latency", "--no-progress"]
    # SIGINT at its default: a test run started from a background job (`cmd &` in a script) would
    # otherwise hand the sweep an ignored SIGINT, as that shell does to its background commands
    proc = subprocess.Popen([sys.executable, "-m", "peftbench.cli", *map(str, args)], env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, out, mark


def _wait_for(condition, proc, what):
    deadline = time.time() + 300
    while time.time() < deadline and not condition() and proc.poll() is None:
        time.sleep(0.01)
    assert condition(), f"the sweep never reached {what}"


@pytest.mark.parametrize("when", ["starting", "training"])
def test_ctrl_c_records_cancelled_and_leaves_nothing_half_written(tiny_model_dirs, cli_env, tmp_path, when):
    """SIGINT to the sweep's process group (a terminal's Ctrl-C) as soon as the first run's spec is
    written (while the fork server and the run start), or once the run has done a training step."""
    proc, out, mark = _start_marked_sweep(tiny_model_dirs, cli_env, tmp_path)
    _wait_for((lambda: list((out / "records").glob(".*.spec"))) if when == "starting" else mark.exists, proc, when)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Interrupted" in err.splitlines()[-1]
    recs = list(load_records(out).values())
    assert [r["status"] for r in recs] == ["cancelled"]  # the second run never started
    assert sorted(p.name for p in (out / "records").iterdir()) == [f"{recs[0]['run_id']}.json"]


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_sigint_to_the_run_alone_still_stops_the_sweep(tiny_model_dirs, cli_env, tmp_path):
    """A run interrupted by a SIGINT that the sweep did not get (it exits 130) ends the sweep too."""
    proc, out, mark = _start_marked_sweep(tiny_model_dirs, cli_env, tmp_path)
    _wait_for(mark.exists, proc, "training")
    runs = [pid for pid in _pids_tagged(tmp_path.name) if _is_run(pid)]
    assert len(runs) == 1, runs
    os.kill(runs[0], signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert [r["status"] for r in load_records(out).values()] == ["cancelled"]


ENV_PROBE = '''
import os
import peftbench
from peftbench.method import freeze


class EnvProbe(peftbench.Method):
    name = "env-probe"
    probe = True

    def apply(self, model, knob_value=None, **options):
        if os.getpid() != int(os.environ["PROBE_SWEEP_PID"]):  # the run's process, not the planning sweep's
            with open(os.environ["PROBE_FILE"], "w") as f:
                f.write(os.environ["PROBE_MARK"])
        freeze(model)
        return model


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(EnvProbe())
'''


def test_each_run_gets_the_environment_its_sweep_has_now(tiny_model_dirs, cli_env, tmp_path):
    """The fork server starts once per process (with the environment of that moment); a later sweep
    of the same process, in another environment, hands its runs that environment."""
    plugin = write_plugin(tmp_path, "envprobe", ENV_PROBE)
    for mark in ("first", "second"):
        probe = tmp_path / f"{mark}.txt"
        env = dict(cli_env, PROBE_MARK=mark, PROBE_FILE=str(probe), PROBE_SWEEP_PID=str(os.getpid()))
        res = cli_in_process("run", "--plugins", plugin, "--model", tiny_model_dirs["bert"], "--methods", "env-probe",
                             "--out", tmp_path / mark, *FAST, env=env)
        assert res.returncode == 0, res.stderr
        assert probe.read_text() == mark
