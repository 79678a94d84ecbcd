"""What is installed and what records say: env, methods, tasks, check, budget, score, report."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import PeftbenchError, check_file, closest
from . import cli, given_plugins, load_plugin_files, plugin_option
from .output import budget_rows, check_file_targets, echo_csv, print_rows


@cli.command()
@click.option("--line", is_flag=True, help="Library versions in one line (what CI prints first).")
def env(line):
    """Show the environment: library versions, devices."""
    from ..provenance import library_versions, versions_line

    from ..precision import cpu_identity, resolve
    from ..runner import resolve_device

    if line:
        click.echo(versions_line())
        return
    device = resolve_device("auto")
    precision, why = resolve("auto", device)
    print_rows([("library", "version"), *library_versions().items()])
    cpu = cpu_identity()
    click.echo(f"\ncpu: {cpu['cpu'] or 'unknown'} (bf16 units: {', '.join(cpu['cpu_bf16'] or []) or 'none found'})"
               f"\ndevice: {device}; --precision auto -> {precision} ({why})")


@cli.command()
@plugin_option
@click.pass_context
def methods(ctx, plugin_files):
    """List the registered methods."""
    from ..plugins import get_methods

    load_plugin_files(given_plugins(ctx, plugin_files))
    rows = [("name", "knob", "mergeable", "default lr", "plugin", "description")]
    for m in get_methods().values():
        rows.append((m.name, m.knob or "- (fixed)", "yes" if m.mergeable else "no", f"{m.default_lr:g}", m.plugin, m.description))
    print_rows(rows)
    from peftbench_plugins import peft_bridge

    if not peft_bridge.available():
        click.echo("\nHF peft methods (peft-lora, peft-ia3, ...): pip install 'peftbench[peft]'")


# testing.ALL_FAMILIES, written out: importing peftbench.testing imports torch
CHECK_FAMILIES = "bert,roberta,gpt2,llama,gpt2-lm,llama-lm,bloom-lm"


@cli.command()
@click.argument("plugin")
@click.option("--families", default=CHECK_FAMILIES, show_default=True,
              help="Tiny model families to check on (classifiers; -lm: causal LMs, with the generation checks).")
@click.pass_context
def check(ctx, plugin, families):
    """Run the method contract on the methods of PLUGIN (a .py file or an installed plugin's name)."""
    from .. import testing
    from ..plugins import get_methods, load_plugin_file, load_plugins

    load_plugins(given_plugins(ctx, ()))
    if plugin.endswith(".py") or Path(plugin).is_file():
        name = load_plugin_file(plugin)
    else:
        name = plugin
    methods = [m for m in get_methods().values() if m.plugin == name]
    if not methods:
        from ..plugins import pm

        known = sorted({m.plugin for m in get_methods().values()})
        if pm.has_plugin(name):  # loaded, but a task or metric plugin: the contract is about methods
            raise PeftbenchError(f"plugin {plugin} registers no methods; `peftbench check` runs the method contract "
                                 "(a task plugin is checked by `peftbench run --plugins FILE --tasks NAME`)")
        raise PeftbenchError(f"no plugin named {plugin} registers methods (plugins with methods: {', '.join(known)}); "
                             "give a plugin file or an entry-point name (the name in [project.entry-points.peftbench], "
                             "not the distribution's)")
    try:
        fams = testing.parse_families(families)
    except ValueError as e:
        raise PeftbenchError(f"--families: {e}") from None
    results = testing.run_checks(methods, fams)
    print_rows([("method", "family", "check", "result", "detail"),
                 *((r.method, r.family, r.check, r.status, r.detail[:120]) for r in results)])
    failed = [r for r in results if r.status == "FAIL"]
    click.echo(f"\n{len(results) - len(failed)} of {len(results)} checks passed or not applicable; {len(failed)} failed",
               err=True)
    ctx.exit(1 if failed else 0)


@cli.command()
@plugin_option
@click.pass_context
def tasks(ctx, plugin_files):
    """List the registered tasks."""
    from ..plugins import get_tasks

    load_plugin_files(given_plugins(ctx, plugin_files))
    rows = [("name", "version", "metrics", "labels", "max len", "data folder", "plugin", "description")]
    for t in get_tasks().values():
        labels = "generation" if t.kind == "generation" else "regression" if t.is_regression else str(t.num_labels)
        metrics = ",".join(f"{m}{'↑' if d == 'higher' else '↓'}" for m, d in t.directions().items())
        rows.append((t.name, str(t.version), metrics, labels, str(t.max_seq_len), t.folder, t.plugin, t.description))
    print_rows(rows)


@cli.command()
@click.option("--methods", "methods_", required=True, help="Comma list; variants as name[key=value,...].")
@click.option("--budget", default="lora:r=8", show_default=True,
              help="73728, 75k, 1.2M, 0.3%, lora:r=8; comma list (the default is run's).")
@click.option("--model", default="minilm", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True)
@plugin_option
@click.pass_context
def budget(ctx, methods_, budget, model, fmt, plugin_files):
    """Solve the knob of each method for a budget, without training."""
    from ..budget import budget_params, parse_budgets, solve
    from ..models import counter as make_counter
    from ..models import load_config
    from ..plugins import get_methods
    from ..plan import parse_methods, reference_resolver

    load_plugin_files(given_plugins(ctx, plugin_files))
    all_methods = get_methods()
    choices = parse_methods(methods_, all_methods)
    budgets = parse_budgets(budget)
    counter = make_counter(load_config(model))
    solutions = []
    for b in budgets:
        target = budget_params(b, counter, reference_resolver(all_methods))
        for c in choices:
            solutions.append((b.text, solve(c.method, c.options, target, counter, c.label)))
    if fmt == "csv":
        echo_csv(["method", "knob", "knob_value", "params", "budget", "deviation_pct", "fixed", "budget_spec"],
                  [[s.method, s.knob or "", "" if s.knob_value is None else s.knob_value, s.params,
                    s.budget, f"{s.deviation_pct:.3f}", str(s.fixed).lower(), btext] for btext, s in solutions])
    else:
        click.echo(f"model {model}: {counter.base:,} base parameters (head excluded)")
        print_rows(budget_rows(solutions))


@cli.command()
@click.argument("predictions", type=click.Path(dir_okay=False))
@click.option("--task", "task_name", default="e2e", show_default=True, help="A generation task.")
@click.option("--split", default=None, help="The split the outputs are for (E2E: test or dev; default the task's).")
@click.option("--data-dir", default=None, help="Folder holding the task folders (else PEFTBENCH_DATA).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--meteor/--no-meteor", default=True, show_default=True, help="Score METEOR (needs Java).")
@plugin_option
@click.pass_context
def score(ctx, predictions, task_name, split, data_dir, fmt, meteor, plugin_files):
    """Score any system's outputs for a generation task: PREDICTIONS has one line per distinct
    input of the split, in the order of first appearance (E2E: per MR of the official CSV)."""
    import json

    from ..plugins import get_task
    from ..tasks import load_task_data

    check_file(predictions, "a text file of predictions, one a line")
    load_plugin_files(given_plugins(ctx, plugin_files))
    task = get_task(task_name)
    if task.kind != "generation":
        raise PeftbenchError(f"--task {task_name} is not a generation task; score scores generated text (e.g. e2e)")
    split = task.split(split)
    data = load_task_data(task, data_dir, split)
    try:
        lines = Path(predictions).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PeftbenchError(f"{predictions}: cannot read it as UTF-8 text ({e})") from None
    if len(lines) != len(data.eval):
        raise PeftbenchError(f"{predictions} has {len(lines)} lines but the {task.name} {split} split has "
                             f"{len(data.eval)} distinct inputs; give one output per input, in the split's order")
    metrics = [m for m in task.metrics if meteor or m != "meteor"]
    scores = task.score([ln.strip() for ln in lines], list(data.eval["references"]), metrics)
    if fmt == "json":
        click.echo(json.dumps({"task": task.name, "split": split, "outputs": len(lines), **scores}, indent=1))
    else:
        print_rows([("metric", "score"), *((k, f"{v:.4f}") for k, v in scores.items())])


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex", "html", "json"]), default="md", show_default=True,
              help="html: one self-contained page (summary, sortable tables, plots inline).")
@click.option("--output", "--out", "-o", "output", type=click.Path(), default=None,
              help="Write to a file instead of stdout.")
@click.option("--summary", "summary_only", is_flag=True,
              help="The summary across tasks (rows: method configurations; columns: tasks, mean rank, costs).")
@click.option("--plot", type=click.Path(), default=None, help="Also write a PNG: metric vs trainable parameters per task.")
@click.option("--cost-plot", type=click.Path(), default=None,
              help="Also write a PNG: latency over base, throughput and peak memory per method and task.")
@click.option("--task", "task_filter", default=None, help="Only these tasks (comma list).")
@click.option("--runs", "runs_only", is_flag=True,
              help="One row per run record instead: its file, status, configuration, size, seed, rate, metric and "
                   "checkpoint (which records to give `peftbench analyze`); md, csv or json.")
def report(dirs, fmt, output, summary_only, plot, cost_plot, task_filter, runs_only):
    """Print the comparison table of the records in DIR(s) and every record folder below them."""
    from .. import report as rep
    from ..records import load_records
    from ..report import overview, page

    for d in dirs:
        if not Path(d).is_dir():
            raise PeftbenchError(f"{d} is not a folder of run records; give the --out folder of a run")
    check_file_targets(output=output, plot=plot, cost_plot=cost_plot)
    tasks = {t.strip() for t in task_filter.split(",") if t.strip()} if task_filter else None
    if runs_only:
        if fmt not in ("md", "csv", "json"):
            raise PeftbenchError(f"--runs lists the records as md, csv or json, not {fmt}; pick one of those")
        if summary_only or plot or cost_plot:
            raise PeftbenchError("--runs lists the records without --summary, --plot or --cost-plot; drop those")
        from ..report import runs

        found = runs.record_files(dirs, warn=lambda m: click.echo(f"warning: {m}", err=True))
        if not found:
            raise PeftbenchError(f"no run records found in or below {', '.join(dirs)}; give the --out folder of a run "
                                 "(the one holding records/)")
        _check_tasks(tasks, {r["spec"].get("task") for _, r in found}, dirs)
        _emit(runs.render(runs.runs_frame([(p, r) for p, r in found if not tasks or r["spec"].get("task") in tasks]),
                          fmt), output)
        return
    records = {}
    for d in dirs:
        for folder in rep.record_folders(Path(d)):
            records.update(load_records(folder, warn=lambda m: click.echo(f"warning: {m}", err=True)))
    if not records:
        raise PeftbenchError(f"no run records found in or below {', '.join(dirs)}; give the --out folder of a run "
                             "(the one holding records/)")
    _warn_stale(records.values())
    df = rep.records_frame(records.values())
    for line in rep.duplicate_seeds(df):
        click.echo(f"warning: {line}", err=True)
    if tasks:
        _check_tasks(tasks, set(df.task), dirs)
        df = df[df.task.isin(tasks)]
    summary = rep.summarize(df)
    if summary_only:
        ov = overview.overview(summary)
        text = (overview.to_markdown(ov) if fmt == "md" else ov.to_csv(index=False) if fmt == "csv"
                else page.render_page(summary) if fmt == "html" else None)
        if text is None:
            raise PeftbenchError(f"--summary is written as md, csv or html, not {fmt}; drop --summary or pick one")
    else:
        text = page.render_page(summary) if fmt == "html" else rep.render(summary, fmt)
    rep.plots.check_plottable(summary, metric=bool(plot), costs=bool(cost_plot))  # before anything is written
    if plot:
        rep.plot(summary, plot)
    if cost_plot:
        rep.plots.plot_costs(summary, cost_plot)
    _emit(text, output)


def _emit(text: str, output) -> None:
    """A report's text to -o (atomically) or stdout."""
    from ..records import write_atomic

    if output:
        write_atomic(Path(output), text, text=True)
    else:
        click.echo(text, nl=False)


def _check_tasks(asked, present, dirs) -> None:
    """--task names only tasks the records have (else the table would be empty without a word why)."""
    present = sorted(t for t in present if t)
    for task in sorted(asked or ()):
        if task not in present:
            raise PeftbenchError(f"--task {task}: no records of it in {', '.join(map(str, dirs))}{closest(task, present)}; "
                                 f"the records' tasks: {', '.join(present)}")


def _warn_stale(records) -> None:
    """Say (on stderr, not in the table) which ok records other code or libraries made."""
    from collections import Counter

    from ..provenance import current_environment
    from ..records import stale_reasons

    current = current_environment()
    reasons = Counter(reason for r in records if r["status"] == "ok" for reason in stale_reasons(r, current))
    stale = sum(1 for r in records if r["status"] == "ok" and stale_reasons(r, current))
    if stale:
        shown = "; ".join(f"{reason} ({n})" for reason, n in reasons.most_common(4))
        click.echo(f"warning: {stale} record(s) are stale, made by other code or libraries than installed now: {shown}; "
                   "the same `peftbench run` with --rerun-stale refreshes them", err=True)
