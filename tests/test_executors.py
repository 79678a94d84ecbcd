"""Executors: --jobs N on this machine (CPUs split, latency timed alone) and SLURM through
submitit's local cluster give the same runs and results as one run at a time."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from conftest import cli_in_process
from peftbench.executors.lock import MachineLock
from peftbench.records import load_records

FAST = ["--max-steps", "3", "--batch-size", "8", "--latency-min-time", "0", "--latency-batch", "4", "--no-progress",
        "--knob", "lora=2,adapter=2"]


def peftbench(*args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "peftbench.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def sequential(tiny_model_dirs, small_data, tmp_path_factory):
    env = dict(os.environ, PEFTBENCH_DATA=str(small_data))
    out = tmp_path_factory.mktemp("seq")
    res = cli_in_process("run", "--model", tiny_model_dirs["bert"], "--methods", "lora,adapter", "--out", out, *FAST, env=env)
    assert res.returncode == 0, res.stderr
    return {rid: r for rid, r in load_records(out).items()}, env


def _same_runs(a: dict, b: dict):
    assert set(a) == set(b)  # the same run ids
    for rid in a:
        assert b[rid]["status"] == "ok"
        for name, value in a[rid]["metrics"].items():
            assert b[rid]["metrics"][name] == pytest.approx(value, abs=1e-6)


def test_a_ctrl_c_with_two_jobs_starts_no_further_run(monkeypatch, tmp_path):
    """A worker thread picks its next spec the moment its run ends in a Ctrl-C, before the sweep
    can cancel what is queued; that spec must start nothing (it did: the sweep then waited for a
    whole run that began after the interrupt, and `resume.sh stop` found it still training)."""
    from peftbench import sweep
    from peftbench.executors import ExecutorOptions, local, placement

    started, done = [], []
    b_started, release = threading.Event(), threading.Event()

    def fake_execute_one(spec, out, timeout, progress, stop=None):
        started.append(spec["run_id"])
        if spec["run_id"] == "a":  # the Ctrl-C: this run ends interrupted while "b" trains
            assert b_started.wait(5)
            raise KeyboardInterrupt
        b_started.set()
        release.wait(5)
        return {"run_id": spec["run_id"], "status": "ok"}

    monkeypatch.setattr(sweep, "execute_one", fake_execute_one)
    monkeypatch.setattr(placement, "slots", lambda jobs, gpu=True: [{"slot": k, "jobs": jobs, "cpus": [0]} for k in range(jobs)])
    (tmp_path / "records").mkdir()
    todo = [{"run_id": r} for r in "abcdef"]
    threading.Timer(1.0, release.set).start()
    with pytest.raises(KeyboardInterrupt):
        local.run_all(todo, tmp_path, ExecutorOptions("local", 2), None, False, done.append)
    assert sorted(started) == ["a", "b"], started  # nothing started after the interrupt


def test_a_run_started_as_the_sweep_is_interrupted_is_sent_a_ctrl_c():
    """A run another thread started just before the interrupt never got the terminal's Ctrl-C: once
    the sweep's stop event is set, its wait sends it one (and a plain timeout does not)."""
    from peftbench.sweep import _join

    class Run:  # the parts of a run's process that _join uses
        def __init__(self):
            self.alive, self.interrupted = True, False

        def is_alive(self):
            return self.alive

        def join(self, timeout=None):
            time.sleep(min(timeout or 0.0, 0.02))

        def interrupt(self):
            self.interrupted, self.alive = True, False

    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    run = Run()
    assert _join(run, None, stop) is True and run.interrupted
    run = Run()
    assert _join(run, 0.1, threading.Event()) is False and not run.interrupted and run.alive


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_two_jobs_split_the_cpus(sequential, tiny_model_dirs, tmp_path):
    seq, env = sequential
    out = tmp_path / "jobs"
    res = cli_in_process("run", "--model", tiny_model_dirs["bert"], "--methods", "lora,adapter", "--out", out,
                         "--jobs", "2", *FAST, env=env)
    assert res.returncode == 0, res.stderr
    recs = load_records(out)
    _same_runs(seq, recs)
    placements = [r["placement"] for r in recs.values()]
    assert all(p["jobs"] == 2 and p["shared_machine"] and p["torch_threads"] == len(p["cpus"]) == 1 for p in placements)
    assert all(r["env"]["cpu_affinity"] == 1 for r in recs.values())  # confined before the environment was read
    assert all("waited_for_latency_s" in r["train"] and r["eval_waited_for_latency_s"] >= 0 for r in recs.values())
    # which run trained at the same time: the other one or none (3 steps each may not overlap), and mutually
    a, b = recs.values()
    assert set(a["train"]["alongside"]) <= {b["run_id"]} and set(b["train"]["alongside"]) <= {a["run_id"]}
    assert bool(a["train"]["alongside"]) == bool(b["train"]["alongside"])
    from peftbench.report import records_frame, summarize, to_markdown

    def table(records):
        return to_markdown(summarize(records_frame(records)))

    a["train"]["alongside"], b["train"]["alongside"] = [b["run_id"]], [a["run_id"]]
    shared = table([a, b])
    assert "†" in shared and "shared the machine" in shared and "training steps and evaluation batches wait" in shared
    a["train"]["alongside"] = b["train"]["alongside"] = []  # each trained alone: no mark
    assert "shared the machine" not in table([a, b])
    for r in (a, b):  # records from before runs said who trained alongside, or evaluation waited
        del r["train"]["alongside"], r["eval_waited_for_latency_s"]
    assert "though their data loading and evaluation may run" in table([a, b])


def test_runs_say_which_runs_trained_alongside(tmp_path):
    a, b, c = (MachineLock(tmp_path / "m.lock") for _ in range(3))
    with a.training("A"):
        with b.training("B"):  # within A's training: A is training at B's end
            pass
        with c.training("C"):  # after B ended, within A
            pass
        assert b.alongside == ["A"] and c.alongside == ["A"]
    assert a.alongside == ["B", "C"]  # both started and ended within A's training: the log says so
    with b.training("D"):  # after all of them
        pass
    assert b.alongside == []
    dead = tmp_path / "m.lock.running" / "999999999.E"  # a run killed while training: its mark is no company
    dead.write_text("E")
    with b.training("F"):
        pass
    assert b.alongside == [] and not dead.exists()


def test_latency_waits_for_no_training(tmp_path):
    """A training step holds the lock shared; a latency measurement takes it exclusively and, while
    it waits or measures, no new step starts."""
    a, b = MachineLock(tmp_path / "m.lock"), MachineLock(tmp_path / "m.lock")
    events = []
    step_started = threading.Event()

    def training():
        with a.step():
            step_started.set()
            time.sleep(0.3)
            events.append("step 1 done")
        time.sleep(0.05)
        with a.step():
            events.append("step 2 started")

    t = threading.Thread(target=training)
    t.start()
    step_started.wait(5)
    with b.exclusive():
        events.append("latency")
        time.sleep(0.3)
        events.append("latency done")
    t.join(5)
    assert events == ["step 1 done", "latency", "latency done", "step 2 started"]
    assert a.waited_s > 0.1


def test_a_run_killed_while_timing_latency_does_not_pause_the_others_for_ever(tmp_path):
    """A process SIGKILLed inside exclusive() (a per-run timeout, the OOM killer) never removes
    its pause flag; the other jobs' steps would wait on it for ever. A dead process's flag is
    cleared; a live one's still pauses."""
    import signal
    import subprocess
    import sys

    lock = MachineLock(tmp_path / "m.lock")
    code = ("import sys, time; from peftbench.executors.lock import MachineLock\n"
            "with MachineLock(sys.argv[1]).exclusive():\n    print('in', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "m.lock")], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "in"
    assert lock.paused()  # a live measurement pauses
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert [p.name for p in lock.pauses.iterdir()] == [str(child.pid)]  # left behind
    assert not lock.paused() and not any(lock.pauses.iterdir())
    with lock.step():  # and a training step goes on
        pass


def test_slurm_through_submitit_local_gives_the_same_runs(sequential, tiny_model_dirs, tmp_path):
    seq, env = sequential
    out = tmp_path / "slurm"
    res = peftbench("run", "--model", tiny_model_dirs["bert"], "--methods", "lora,adapter", "--out", out,
                    "--executor", "slurm", "--slurm-cluster", "local", "--slurm-time", "10", *FAST, env=env)
    assert res.returncode == 0, res.stderr
    recs = load_records(out)
    _same_runs(seq, recs)
    assert any((out / "slurm").iterdir())  # submitit's job folders: logs of each array element
    assert all(r["env"]["pid"] != json.loads("0") for r in recs.values())
    # resumes on the other executor: nothing left to run
    res = cli_in_process("run", "--model", tiny_model_dirs["bert"], "--methods", "lora,adapter", "--out", out, *FAST, env=env)
    assert res.returncode == 0 and "skipping 2 run(s) with an ok record; 0 to run" in res.stderr
    # and on SLURM again: nothing to submit is not an error (it was: a chunk of 0 runs)
    res = cli_in_process("run", "--model", tiny_model_dirs["bert"], "--methods", "lora,adapter", "--out", out, *FAST,
                         "--executor", "slurm", "--slurm-cluster", "debug", env=env)
    assert res.returncode == 0 and "0 to run" in res.stderr, res.stderr


def test_gpu_slots_are_the_gpus_this_process_was_given(monkeypatch):
    from peftbench.executors import placement

    monkeypatch.setattr(placement, "_gpus", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # a scheduler's share of the node
    assert [s["cuda_visible_devices"] for s in placement.slots(2)] == ["2", "3"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert [s["cuda_visible_devices"] for s in placement.slots(2)] == ["0", "1"]
    # every run on --device cpu: CPU sets, not GPUs
    assert all("cpus" in s and "cuda_visible_devices" not in s for s in placement.slots(1, gpu=False))


def test_a_lost_remote_run_keeps_the_record_it_wrote(tmp_path):
    from peftbench.records import record_path, write_atomic
    from peftbench.sweep import kept_or_failure

    spec = {"run_id": "abc"}
    started = time.time() - 1
    write_atomic(record_path(tmp_path, "abc"), {"run_id": "abc", "status": "ok", "spec": spec})
    assert kept_or_failure(tmp_path, spec, "failed", "task died", started)["status"] == "ok"
    # a record older than this attempt is not its own: the attempt failed
    rec = kept_or_failure(tmp_path, spec, "failed", "task died", time.time() + 60)
    assert rec["status"] == "failed" and rec["error"] == "task died"


def test_executor_bad_input(tmp_path, cli_env):
    fake = tmp_path / "nosubmitit"
    fake.mkdir()
    (fake / "submitit.py").write_text("raise ImportError('no submitit here')\n")
    env = dict(cli_env, PYTHONPATH=str(fake))
    res = peftbench("run", "--methods", "lora", "--executor", "slurm", "--dry-run", env=env)
    assert res.returncode == 2 and "--executor slurm needs submitit: pip install 'peftbench[slurm]'" in res.stderr
    res = cli_in_process("run", "--methods", "lora", "--jobs", "0", "--dry-run", env=cli_env)
    assert res.returncode == 2 and "--jobs 0: give a positive number" in res.stderr
    res = cli_in_process("run", "--methods", "lora", "--jobs", "999", "--dry-run", env=cli_env)
    assert res.returncode == 2 and "--jobs 999: this process may use" in res.stderr
    pytest.importorskip("submitit")
    nosrun = dict(cli_env, PATH=str(fake))  # no srun: not a SLURM machine (was an internal error from submitit)
    for flags, message in ((["--executor", "slurm"], "--executor slurm: no srun on this machine's PATH"),
                           (["--executor", "slurm", "--slurm-cluster", "local", "--slurm-time", "0"],
                            "--slurm-time 0: give a number of 1 or more"),
                           (["--executor", "slurm", "--slurm-cluster", "local", "--slurm-array-parallelism", "0"],
                            "--slurm-array-parallelism 0: give a number of 1 or more"),
                           (["--executor", "ray", "--ray-cpus-per-run", "0"], "--ray-cpus-per-run 0: give a positive")):
        if "ray" in flags:
            pytest.importorskip("ray")
        res = cli_in_process("run", "--methods", "lora", *flags, "--dry-run", env=nosrun)
        assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and message in res.stderr, res.stderr


def test_auto_device_and_precision_are_refused_for_runs_on_other_machines(tmp_path, cli_env):
    """auto is resolved where the sweep is planned: a CPU login node planned every run of a GPU SLURM
    sweep on the CPU, silently. With workers elsewhere, the device and precision are given."""
    import os

    pytest.importorskip("submitit")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_ / "srun").chmod(0o755)
    env = dict(cli_env, PATH=f"{bin_}{os.pathsep}{os.environ['PATH']}")
    slurm = ["run", "--methods", "lora", "--executor", "slurm", "--slurm-gpus-per-run", "1", "--dry-run"]
    res = cli_in_process(*slurm, env=env)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "--device auto is resolved on the machine that plans the sweep" in res.stderr
    res = cli_in_process(*slurm, "--device", "cuda", env=env)
    assert res.returncode == 2 and "--precision auto is resolved on the machine" in res.stderr
    res = cli_in_process(*slurm, "--device", "cuda", "--precision", "bf16", env=env)  # no CUDA here: the workers have it
    assert res.returncode == 0, res.stderr
    res = cli_in_process("run", "--methods", "lora", "--executor", "slurm", "--slurm-cluster", "local", "--dry-run",
                         env=env)  # the same jobs on this machine: auto is this machine's
    assert res.returncode == 0, res.stderr


def test_run_spec_reruns_one_run_from_its_record(sequential, tmp_path):
    seq, env = sequential
    rec = next(r for r in seq.values() if r["spec"]["method"] == "lora")
    (tmp_path / "rec.json").write_text(json.dumps(rec))
    out = tmp_path / "again"
    res = cli_in_process("run-spec", tmp_path / "rec.json", "--out", out, "--no-progress", env=env)
    assert res.returncode == 0, res.stderr
    again = load_records(out)[rec["run_id"]]
    assert again["metrics"] == pytest.approx(rec["metrics"]) and again["spec"]["run_id"] == rec["run_id"]
    bad = cli_in_process("run-spec", tmp_path / "nope.json", "--out", out, env=env)
    assert bad.returncode == 2 and "nope.json: no such file; give a run's JSON spec or record" in bad.stderr
    (tmp_path / "nope.json").write_text("{")
    bad = cli_in_process("run-spec", tmp_path / "nope.json", "--out", out, env=env)
    assert bad.returncode == 2 and "not a JSON spec" in bad.stderr
    # the model folder's files here differ from where the run was planned (its revision is their hash): the
    # record says what it trained on
    model = tmp_path / "model"
    shutil.copytree(rec["spec"]["model"], model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "transformers_version": "0.0.0"}))
    (tmp_path / "moved.json").write_text(json.dumps({**rec, "spec": {**rec["spec"], "model": str(model)}}))
    res = cli_in_process("run-spec", tmp_path / "moved.json", "--out", tmp_path / "moved", "--no-progress", env=env)
    moved = load_records(tmp_path / "moved")[rec["run_id"]]
    assert res.returncode == 0 and moved["model"]["revision"] == rec["spec"]["model_revision"], moved["model"]
    assert moved["model"]["revision_at_run"].startswith("local:") and "revision_at_run" not in again["model"]


# -- Ray: one local cluster (2 CPUs, 2 fake GPUs) shared by the tests below --------------------
KILLER = '''
import os, signal, time
from pathlib import Path
import peftbench
from peftbench_plugins.lora import LoRA

ARMED = Path(__ARMED__)


class WorkerKiller(LoRA):
    """LoRA, except that the first run to apply it (while ARMED exists) SIGKILLs the process that
    started its fork server: the Ray worker running the task."""
    name = "worker-killer"

    def apply(self, model, knob_value, **options):
        if next(model.parameters()).device.type != "meta":  # in a run, not while the sweep is planned
            server = os.getppid()
            worker = int(open(f"/proc/{server}/stat").read().rsplit(")", 1)[1].split()[1])
            is_ray = b"ray" in open(f"/proc/{worker}/cmdline", "rb").read()
            try:
                if is_ray:
                    ARMED.unlink()
                    os.kill(worker, signal.SIGKILL)
                    time.sleep(60)
            except FileNotFoundError:
                pass
        return super().apply(model, knob_value, **options)


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(WorkerKiller())
'''


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tmp_path_factory.mktemp("ray")
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    # token authentication (Ray's default once ~/.ray/auth_token exists) with a token of its own, so
    # that neither this machine's ~/.ray nor the environment decides whether clients may join
    token = tmp / "auth_token"
    token.write_text("peftbench-test-" + os.urandom(16).hex())
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **auth)
    res = subprocess.run([*ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=2",
                          "--include-dashboard=false", f"--temp-dir={tmp}", "--disable-usage-stats"],
                         capture_output=True, text=True, env=env, timeout=180)
    assert res.returncode == 0, res.stderr
    try:
        yield f"127.0.0.1:{port}", auth
    finally:
        subprocess.run([*ray, "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_ray_runs_each_task_on_its_gpu_and_survives_a_killed_worker(ray_cluster, sequential, tiny_model_dirs,
                                                                    tmp_path):
    seq, env = sequential
    ray_cluster, auth = ray_cluster
    # workers elsewhere: the device and precision are given (auto would be this machine's); the ones the
    # sequential sweep resolved here, so the run ids are the same
    spec = next(iter(seq.values()))["spec"]
    given = ["--device", spec["device"], "--precision", spec["precision"]]
    # a client without the token: one line naming the fix, before anything runs
    no_auth = dict(env, RAY_AUTH_MODE="disabled", RAY_NUM_REDIS_GET_RETRIES="3")
    res = peftbench("run", "--model", tiny_model_dirs["bert"], "--methods", "lora,adapter", "--out", tmp_path / "refused",
                    "--executor", "ray", "--ray-address", ray_cluster, *given, *FAST, env=no_auth)
    assert res.returncode == 2 and "needs RAY_AUTH_MODE=token here" in res.stderr.splitlines()[-1], res.stderr
    env = dict(env, **auth)
    out = tmp_path / "ray"
    res = peftbench("run", "--model", tiny_model_dirs["bert"], "--methods", "lora,adapter", "--out", out,
                    "--executor", "ray", "--ray-address", ray_cluster, *given, *FAST, env=env)
    assert res.returncode == 0, res.stderr
    recs = load_records(out)
    _same_runs(seq, recs)
    # two fake GPUs, two tasks at once: each saw its own CUDA_VISIBLE_DEVICES
    assert sorted(r["placement"]["cuda_visible_devices"] for r in recs.values()) == ["0", "1"]
    assert all(r["placement"]["executor"] == "ray" and r["placement"]["shared_machine"] for r in recs.values())

    armed = tmp_path / "armed"
    armed.touch()
    plugin = tmp_path / "killer.py"
    plugin.write_text(KILLER.replace("__ARMED__", repr(str(armed))))
    args = ["run", "--model", tiny_model_dirs["bert"], "--methods", "worker-killer", "--knob", "worker-killer=2",
            "--seeds", "0,1,2", "--out", out, "--plugins", plugin, *FAST[:-2]]
    res = peftbench(*args, "--executor", "ray", "--ray-address", ray_cluster, *given, env=env)
    assert res.returncode == 1 and "did not finish ok" in res.stderr, res.stderr  # the sweep went on
    killed = [r for r in load_records(out).values() if r["spec"]["method"] == "worker-killer"]
    failed = [r for r in killed if r["status"] != "ok"]
    assert len(killed) == 3 and len(failed) == 1 and "ray task failed" in failed[0]["error"], failed
    # the same sweep on the local executor: what Ray finished is skipped, the failed run is retried
    res = peftbench(*args, "--rerun-failed", env=env)
    assert res.returncode == 0, res.stderr
    assert "skipping 2 run(s) with an ok record" in res.stderr or "1 to run" in res.stderr, res.stderr


def test_ray_bad_input(cli_env, tmp_path):
    pytest.importorskip("ray")
    res = peftbench("run", "--methods", "lora", "--executor", "ray", "--ray-address", "127.0.0.1:1", "--dry-run",
                    env=cli_env, timeout=60)
    assert res.returncode == 2 and "--ray-address 127.0.0.1:1: no Ray cluster answers there" in res.stderr
    fake = tmp_path / "noray"
    fake.mkdir()
    (fake / "ray.py").write_text("raise ImportError('no ray here')\n")
    res = peftbench("run", "--methods", "lora", "--executor", "ray", "--dry-run",
                    env=dict(cli_env, PYTHONPATH=str(fake)))
    assert res.returncode == 2 and "--executor ray needs ray: pip install 'peftbench[ray]'" in res.stderr
