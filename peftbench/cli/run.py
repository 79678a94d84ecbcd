"""``peftbench run`` (plan a sweep, search rates, run, print the table) and ``run-spec`` (one run)."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import click

from ..errors import PeftbenchError, check_file, first_line
from ..sweepfile import DEVICES
from . import cli, given_plugins, plugin_option
from .output import budget_rows, format_rows


@cli.command("run-spec")
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The sweep's output folder.")
@click.option("--timeout-per-run", type=float, default=None)
@click.option("--progress/--no-progress", default=True)
def run_spec(spec_file, out, timeout_per_run, progress):
    """Run one planned run from its spec (JSON: a spec, or a record whose spec to run again) and write
    its record into OUT; what every executor runs, so a run behaves the same wherever it runs."""
    from ..sweep import check_output_dir, execute_one

    check_file(spec_file, "a run's JSON spec or record")
    try:
        data = json.loads(Path(spec_file).read_text())
    except (OSError, ValueError) as e:
        raise PeftbenchError(f"{spec_file}: not a JSON spec ({first_line(e)})") from None
    spec = data.get("spec", data) if isinstance(data, dict) else None
    if not isinstance(spec, dict) or not {"run_id", "method", "task", "seed"} <= set(spec):
        raise PeftbenchError(f"{spec_file}: not a run spec (no run_id, method, task, seed); give a record or a spec")
    check_output_dir(Path(out))
    rec = execute_one(spec, Path(out), timeout_per_run, progress)
    click.echo(_summary_line(rec), err=True)
    return 0 if rec["status"] == "ok" else 1


@cli.command()
@click.option("--methods", "methods_", default="lora,adapter", show_default=True,
              help="Comma list of methods; variants as name[key=value,...], e.g. adapter[placement=pfeiffer].")
@click.option("--tasks", "tasks_", default="sst2", show_default=True, help="Comma list of tasks.")
@click.option("--seeds", default="0", show_default=True, help="Comma list of seeds.")
@click.option("--model", default="minilm", show_default=True, help="minilm, smollm2, a transformers model id, or a folder.")
@click.option("--data-dir", default=None, help="Folder holding the task folders (else PEFTBENCH_DATA, else the hub).")
@click.option("--budget", default=None, help="Matched budget(s) for the method's own parameters "
              "(default lora:r=8): 73728, 75k, 1.2M, 0.3%, lora:r=8; 'none' = each method's default knob.")
@click.option("--knob", default=None, help="Explicit knob per method, e.g. lora=8,adapter=16 (overrides --budget).")
@click.option("--lr", default=None, help="Learning rate per method, e.g. lora=5e-4,full=5e-5 (default: the method's).")
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps.")
@click.option("--train-samples", default="4000", show_default=True, help="Seeded subset of the training set, or 'all'.")
@click.option("--data-seed", type=int, default=0, show_default=True, help="Seed of the training subset.")
@click.option("--train-subset", type=click.Choice(["random", "first"]), default="random", show_default=True,
              help="How --train-samples picks examples: a random subset (--data-seed) or the first N in file order "
              "(as datasets' train[:N]; files grouped by source, e.g. CoLA's, make that a biased sample).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--max-seq-len", type=int, default=None, help="Default: the task's.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--warmup-ratio", type=float, default=0.06, show_default=True)
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True, help="Gradient clipping norm; 0 = none.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--precision", default="auto", show_default=True,
              help="auto|fp32|bf16|fp16: auto = bf16 autocast on CUDA with bf16, on CPUs with AMX-BF16, and on CPUs "
                   "with AVX512-BF16 where a bf16 matmul measures >= 1.5x fp32; else fp32.")
@click.option("--out", default=None, help="Output folder (default runs/<timestamp>); records of many sweeps may share one.")
@click.option("--latency/--no-latency", default=True, show_default=True, help="Measure inference latency.")
@click.option("--latency-batch", type=int, default=32, show_default=True, help="N of the batch-N latency.")
@click.option("--latency-seq-len", type=int, default=None, help="Fixed sequence length for latency (default max length).")
@click.option("--latency-min-time", type=float, default=2.0, show_default=True, help="Seconds of timed calls per candidate.")
@click.option("--keep-checkpoints/--no-keep-checkpoints", default=True, show_default=True)
@click.option("--rerun-failed", is_flag=True, help="Retry runs whose record is not ok.")
@click.option("--force", is_flag=True, help="Rerun every run, even those with an ok record.")
@click.option("--rerun-stale", is_flag=True,
              help="Rerun runs whose ok record was made by other peftbench code or library versions than those installed.")
@click.option("--timeout-per-run", type=float, default=None, help="Kill a run after this many seconds.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--eval-split", default=None, help="Generation tasks: the split to evaluate on (E2E: test or dev; default test).")
@click.option("--eval-samples", type=int, default=None, help="Generation tasks: score only the first N inputs (recorded).")
@click.option("--num-beams", type=int, default=1, show_default=True, help="Generation: beam size (1 = greedy).")
@click.option("--length-penalty", type=float, default=1.0, show_default=True, help="Generation: beam length penalty.")
@click.option("--no-repeat-ngram-size", type=int, default=0, show_default=True, help="Generation: block repeated n-grams.")
@click.option("--max-new-tokens", type=int, default=None, help="Generation: at most this many new tokens (default: the task's).")
@click.option("--meteor/--no-meteor", default=True, show_default=True, help="Generation: score METEOR (needs Java).")
@click.option("--lr-search", is_flag=True,
              help="Choose each method's learning rate on held-out training data (a grid around its default).")
@click.option("--lr-grid", multiple=True, help="Search these rates for a method, e.g. lora=1e-4,3e-4,1e-3 (repeatable).")
@click.option("--val-samples", type=int, default=500, show_default=True,
              help="Learning-rate search: training examples held out to score the candidates on.")
@click.option("--search-seeds", default="0", show_default=True, help="Learning-rate search: seeds per candidate.")
@click.option("--lr-extend", type=int, default=0, show_default=True,
              help="Learning-rate search: where the best rate is at an edge of its grid (and no other rate scored as well), "
                   "try up to N more rates beyond it.")
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="A sweep file (TOML) instead of the sweep flags; see peftbench/sweepfile.py.")
@click.option("--nproc", type=int, default=1, show_default=True,
              help="Processes per run (torchrun + DDP: gloo on CPU, NCCL on GPUs); --batch-size is the global batch.")
@click.option("--dry-run", is_flag=True, help="Plan the sweep and say what has an ok record already; run nothing.")
@click.option("--executor", type=click.Choice(["local", "ray", "slurm"]), default="local", show_default=True,
              help="Where runs execute: this machine, a Ray cluster, or SLURM through submitit.")
@click.option("--ray-address", default=None, help="ray: join this cluster (host:port); default a local one.")
@click.option("--ray-cpus-per-run", type=int, default=1, show_default=True, help="ray, without GPUs: CPUs per run.")
@click.option("--jobs", type=int, default=1, show_default=True,
              help="local: runs at once, each with its own CPUs (threads split) or GPU; latency timed alone.")
@click.option("--slurm-partition", default=None)
@click.option("--slurm-time", type=int, default=60, show_default=True, help="Minutes per run's job.")
@click.option("--slurm-gpus-per-run", type=int, default=0, show_default=True)
@click.option("--slurm-array-parallelism", type=int, default=64, show_default=True)
@click.option("--slurm-cluster", default="slurm", show_default=True,
              help="submitit's cluster: slurm, local (the same jobs on this machine) or debug (in this process).")
@plugin_option
@click.pass_context
def run(ctx, methods_, tasks_, seeds, model, data_dir, budget, knob, lr, epochs, max_steps, train_samples,
        data_seed, train_subset, batch_size, max_seq_len, weight_decay, warmup_ratio, max_grad_norm, device, precision, out,
        latency, latency_batch, latency_seq_len, latency_min_time, keep_checkpoints, rerun_failed, force,
        rerun_stale, timeout_per_run, progress, eval_split, eval_samples, num_beams, length_penalty,
        no_repeat_ngram_size, max_new_tokens, meteor, lr_search, lr_grid, val_samples, search_seeds, lr_extend, config,
        nproc, dry_run, executor, ray_address, ray_cpus_per_run, jobs, slurm_partition, slurm_time, slurm_gpus_per_run, slurm_array_parallelism,
        slurm_cluster, plugin_files):
    """Train and evaluate each method x task x budget x seed; print the comparison table."""
    if executor == "local" and not dry_run and (config or nproc == 1):
        from .. import worker

        # The fork server imports torch & co. (on another core) while this process does the
        # same to plan: started first thing, before this process has imported anything heavy.
        # (A sweep file that asks for --nproc > 1 runs through torchrun instead; the idle
        # server then ends with this process.)
        worker.context()
    from .. import report
    from ..plan import SweepSettings, latency_settings, parse_train_samples, plan_all
    from ..sweep import check_output_dir, run_sweep

    if timeout_per_run is not None and timeout_per_run <= 0:
        raise PeftbenchError(f"--timeout-per-run must be positive, got {timeout_per_run}")
    if config:
        from .. import sweepfile

        given = [f"--{p.rstrip('_').replace('_', '-')}" for p in SWEEP_FLAGS
                 if ctx.get_parameter_source(p) is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise PeftbenchError(f"--config {config} defines the sweep; drop {', '.join(given)} (or edit the file)")
        settings, config_out = sweepfile.load(config)
        for s in settings:
            s.plugins = tuple(s.plugins) + given_plugins(ctx, plugin_files)
            if data_dir:
                s.data_dir = data_dir
        out = out or config_out
    else:
        settings = [SweepSettings(
            methods=methods_, tasks=tasks_, seeds=seeds, model=model, data_dir=data_dir, knob=knob, budget=budget,
            lr=lr, epochs=epochs, max_steps=max_steps, train_samples=parse_train_samples(train_samples),
            data_seed=data_seed, train_subset=train_subset, batch_size=batch_size, max_seq_len=max_seq_len,
            warmup_ratio=warmup_ratio, weight_decay=weight_decay, max_grad_norm=max_grad_norm, device=device,
            precision=precision, keep_checkpoint=keep_checkpoints, plugins=given_plugins(ctx, plugin_files),
            latency=latency_settings(latency, latency_batch, latency_seq_len, latency_min_time),
            eval_split=eval_split, eval_samples=eval_samples, num_beams=num_beams, length_penalty=length_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size, max_new_tokens=max_new_tokens, meteor=meteor,
            lr_search=lr_search, lr_grid=tuple(lr_grid), val_samples=val_samples, search_seeds=search_seeds,
            lr_extend=lr_extend,
            nproc=nproc,
        )]
    out = Path(out or Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    from ..executors import ExecutorOptions
    from ..studies.configs import CONFIGS

    executor_options = ExecutorOptions(executor, jobs, {
        "partition": slurm_partition, "time_min": slurm_time, "gpus_per_run": slurm_gpus_per_run,
        "array_parallelism": slurm_array_parallelism, "cluster": slurm_cluster},
        {"address": ray_address, "cpus_per_run": ray_cpus_per_run},
        gpu=any(s.device != "cpu" for s in settings)).validate()
    for s in settings:
        s.runs_elsewhere = executor_options.elsewhere
        if s.nproc > 1 and not s.runs_elsewhere:  # one process per GPU, or per CPU core
            import torch

            gpus = torch.cuda.device_count() if s.device in ("auto", "cuda") else 0
            have, what = (gpus, "GPU(s)") if gpus else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                        else os.cpu_count() or 1, "CPU(s)")
            if s.nproc > have:
                raise PeftbenchError(f"--nproc {s.nproc}: this machine gives this process {have} {what}; give "
                                     f"--nproc {have} or fewer")
        if s.model in CONFIGS:
            raise PeftbenchError(f"--model {s.model} is a built-in config without weights (for peftbench memory "
                                 "and budget); to train, give a model folder, a transformers model id, minilm or smollm2")
    try:
        the_plan = plan_all(settings)  # validates everything before any training starts
    except PeftbenchError as e:
        if not config:
            raise
        # the file's keys are the flags' names (epochs for --epochs): the message names a flag, this the file
        raise PeftbenchError(f"{config}: {e}") from None
    check_output_dir(out, create=not dry_run)  # a dry run creates nothing, but says what a run would
    for message in the_plan.warnings:
        click.echo(f"warning: {message}", err=True)
    if the_plan.solutions:
        click.echo("Budget solutions (method's own parameters, head excluded):", err=True)
        for line in format_rows(budget_rows(the_plan.solutions)):
            click.echo("  " + line, err=True)
    click.echo(f"{len(the_plan.specs) + len(the_plan.waiting)} run(s) -> {out}"
               + (f", after {len(the_plan.searches)} learning-rate search run(s) -> {out / 'search'}"
                  if the_plan.searches else ""), err=True)

    def explain(specs, folder):  # planned runs whose records of the same settings came from other code
        from ..published import moved_on

        if line := moved_on(specs, folder, rerun_failed=rerun_failed):
            click.echo(f"note: {line}", err=True)

    explain(the_plan.searches, out / "search")
    explain(the_plan.specs, out)
    if dry_run:  # what the sweep would do: planned runs, and how many already have an ok record
        from ..records import load_records

        def done(folder, specs):
            have = load_records(folder) if folder.is_dir() else {}
            return sum(1 for s in specs if have.get(s["run_id"], {}).get("status") == "ok")

        searched = ("; the runs at searched rates get their ids once their search is done: "
                    f"{len(the_plan.waiting)} of them" if the_plan.waiting else "")
        click.echo(f"dry run: {done(out / 'search', the_plan.searches)} of {len(the_plan.searches)} search run(s) and "
                   f"{done(out, the_plan.specs)} of {len(the_plan.specs)} run(s) at a fixed rate have an ok record in "
                   f"{out}{searched}; nothing was run", err=True)
        return

    def on_record(rec, i, n):
        click.echo(f"[{i}/{n}] {_summary_line(rec)}", err=True)

    def warn(msg):
        click.echo(f"warning: {msg}", err=True)

    def on_start(result, n_todo):
        if result.replaced:
            click.echo(f"rerunning {result.replaced} run(s) with an ok record (kept in records/superseded/)", err=True)
        if result.skipped_ok or result.skipped_failed:
            click.echo(f"skipping {result.skipped_ok} run(s) with an ok record"
                       + (f" and {result.skipped_failed} earlier failure(s) (--rerun-failed retries them)"
                          if result.skipped_failed else "") + f"; {n_todo} to run", err=True)

    options = dict(rerun_failed=rerun_failed, force=force, rerun_stale=rerun_stale, timeout=timeout_per_run,
                   progress=progress, on_record=on_record, on_start=on_start, warn=warn, executor=executor_options)
    specs = the_plan.specs
    if the_plan.searches:  # first the search on held-out training data, then the runs at the chosen rates
        from .. import lrsearch

        def search(specs):
            return {r["run_id"]: r for r in run_sweep(specs, out / "search", **options).records}

        finals, lines, _ = lrsearch.run_search(the_plan.searches, the_plan.waiting, search,
                                               lambda line: click.echo(f"learning-rate grid grown: {line}", err=True))
        for line in lines:
            click.echo(f"learning rate chosen: {line}", err=True)
        explain(finals, out)
        specs = specs + finals
    result = run_sweep(specs, out, **options)
    click.echo(report.to_markdown(report.summarize(report.records_frame(result.records))))
    bad = [r for r in result.records if r["status"] != "ok"]
    click.echo(f"{len(result.records) - len(bad)} of {len(result.records)} run(s) ok; records in {out}/records", err=True)
    if bad:
        click.echo(f"{len(bad)} run(s) did not finish ok: " + ", ".join(f"{r['spec'].get('label')}/{r['spec'].get('task')}/s{r['spec'].get('seed')}={r['status']}" for r in bad), err=True)
        ctx.exit(1)


# the run options that define a sweep (what --config replaces)
SWEEP_FLAGS = ("methods_", "tasks_", "seeds", "model", "budget", "knob", "lr", "epochs", "max_steps", "train_samples",
               "data_seed", "train_subset", "batch_size", "max_seq_len", "weight_decay", "warmup_ratio",
               "max_grad_norm", "device", "precision", "latency", "latency_batch", "latency_seq_len", "latency_min_time",
               "keep_checkpoints", "eval_split", "eval_samples", "num_beams", "length_penalty", "no_repeat_ngram_size",
               "max_new_tokens", "meteor", "lr_search", "lr_grid", "val_samples", "search_seeds", "lr_extend",
               "nproc")


def _summary_line(rec) -> str:
    spec = rec.get("spec", {})
    knob = f" {spec.get('knob')}={spec.get('knob_value')}" if spec.get("knob") else ""
    head = f"{spec.get('label')}{knob} {spec.get('task')} seed {spec.get('seed')}"
    if rec["status"] != "ok":
        kind = rec.get("error_type")
        kind = f" ({kind})" if kind and kind != rec["status"] and kind not in str(rec.get("error")) else ""
        return f"{head}: {rec['status'].upper()}{kind} - {rec.get('error')}"
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in rec["metrics"].items())
    p = rec["params"]
    t = rec["train"]
    speed = f"{t['samples_per_s']:.1f} samples/s" if t.get("samples_per_s") else "not trained"
    return (f"{head}: {metrics} | {p['method']:,} params ({p['method_pct']:.3f}%) + head {p['head']:,} | "
            f"{speed} | {rec['duration_s']:.0f} s")
