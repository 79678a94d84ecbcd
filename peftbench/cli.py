"""The ``peftbench`` command line."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path

import click

from .errors import PeftbenchError, closest, first_line

EXIT_BAD_INPUT = 2


def plugin_option(f):
    return click.option(
        "--plugins", "plugin_files", multiple=True, metavar="FILE.py",
        help="Load a local plugin file (repeatable; also PEFTBENCH_PLUGINS).",
    )(f)


def _load(plugin_files):
    from .plugins import load_plugins

    load_plugins(plugin_files)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="peftbench")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@plugin_option
@click.pass_context
def cli(ctx, debug, plugin_files):
    """Compare parameter-efficient fine-tuning methods side by side."""
    ctx.ensure_object(dict)
    ctx.obj["plugins"] = tuple(plugin_files)


def _plugins(ctx, extra):
    return tuple(ctx.obj.get("plugins", ())) + tuple(extra)


@cli.command()
@click.option("--line", is_flag=True, help="Library versions in one line (what CI prints first).")
def env(line):
    """Show the environment: library versions, devices."""
    from .provenance import library_versions, versions_line

    from .precision import resolve
    from .runner import resolve_device

    if line:
        click.echo(versions_line())
        return
    device = resolve_device("auto")
    precision, why = resolve("auto", device)
    _print_rows([("library", "version"), *library_versions().items()])
    click.echo(f"\ndevice: {device}; --precision auto -> {precision} ({why})")


@cli.command()
@plugin_option
@click.pass_context
def methods(ctx, plugin_files):
    """List the registered methods."""
    from .plugins import get_methods

    _load(_plugins(ctx, plugin_files))
    rows = [("name", "knob", "mergeable", "default lr", "plugin", "description")]
    for m in get_methods().values():
        rows.append((m.name, m.knob or "- (fixed)", "yes" if m.mergeable else "no", f"{m.default_lr:g}", m.plugin, m.description))
    _print_rows(rows)
    from peftbench_plugins import peft_bridge

    if not peft_bridge.available():
        click.echo("\nHF peft methods (peft-lora, peft-ia3, ...): pip install 'peftbench[peft]'")


@cli.command()
@click.argument("plugin")
@click.option("--families", default=",".join(("bert", "roberta", "gpt2", "llama")), show_default=True,
              help="Tiny model families to check on.")
@click.pass_context
def check(ctx, plugin, families):
    """Run the method contract on the methods of PLUGIN (a .py file or an installed plugin's name)."""
    from . import testing
    from .plugins import get_methods, load_plugin_file, load_plugins

    load_plugins(_plugins(ctx, ()))
    if plugin.endswith(".py") or Path(plugin).is_file():
        name = load_plugin_file(plugin)
    else:
        name = plugin
    methods = [m for m in get_methods().values() if m.plugin == name]
    if not methods:
        from .plugins import pm

        known = sorted({m.plugin for m in get_methods().values()})
        hint = "" if pm.has_plugin(name) else f" (registered plugins: {', '.join(known)})"
        raise PeftbenchError(f"plugin {plugin} registers no methods{hint}; give a plugin file or entry-point name")
    fams = [f.strip() for f in families.split(",") if f.strip()]
    bad = [f for f in fams if f not in testing.FAMILIES]
    if bad:
        raise PeftbenchError(f"--families: unknown {', '.join(bad)}; use {', '.join(testing.FAMILIES)}")
    results = testing.run_checks(methods, fams)
    _print_rows([("method", "family", "check", "result", "detail"),
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
    from .plugins import get_tasks

    _load(_plugins(ctx, plugin_files))
    rows = [("name", "version", "metrics", "labels", "max len", "data folder", "plugin", "description")]
    for t in get_tasks().values():
        labels = "generation" if t.kind == "generation" else "regression" if t.is_regression else str(t.num_labels)
        metrics = ",".join(f"{m}{'↑' if d == 'higher' else '↓'}" for m, d in t.directions().items())
        rows.append((t.name, str(t.version), metrics, labels, str(t.max_seq_len), t.folder, t.plugin, t.description))
    _print_rows(rows)


def _format_rows(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]


def _echo_csv(header, rows) -> None:
    """CSV on stdout (quoting labels such as lora[target_modules=q,v])."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    click.echo(buf.getvalue(), nl=False)


def _print_rows(rows):
    for line in _format_rows(rows):
        click.echo(line)


def _budget_rows(solutions):
    rows = [("budget", "method", "knob", "knob_value", "params", "budget_params", "deviation_pct", "fixed")]
    for btext, s in solutions:
        rows.append((btext, s.method, s.knob or "-", "-" if s.knob_value is None else str(s.knob_value),
                     f"{s.params:,}", f"{s.budget:,}", f"{s.deviation_pct:+.1f}", "fixed" if s.fixed else ""))
    return rows


@cli.command()
@click.option("--methods", "methods_", required=True, help="Comma list; variants as name[key=value,...].")
@click.option("--budget", required=True, help="73728, 75k, 1.2M, 0.3%, lora:r=8; comma list.")
@click.option("--model", default="minilm", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True)
@plugin_option
@click.pass_context
def budget(ctx, methods_, budget, model, fmt, plugin_files):
    """Solve the knob of each method for a budget, without training."""
    from .budget import budget_params, parse_budgets, solve
    from .models import counter as make_counter
    from .models import load_config
    from .plugins import get_methods
    from .plan import parse_methods, reference_resolver

    _load(_plugins(ctx, plugin_files))
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
        _echo_csv(["method", "knob", "knob_value", "params", "budget", "deviation_pct", "fixed", "budget_spec"],
                  [[s.method, s.knob or "", "" if s.knob_value is None else s.knob_value, s.params,
                    s.budget, f"{s.deviation_pct:.3f}", str(s.fixed).lower(), btext] for btext, s in solutions])
    else:
        click.echo(f"model {model}: {counter.base:,} base parameters (head excluded)")
        _print_rows(_budget_rows(solutions))


@cli.command("run-spec")
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The sweep's output folder.")
@click.option("--timeout-per-run", type=float, default=None)
@click.option("--progress/--no-progress", default=True)
def run_spec(spec_file, out, timeout_per_run, progress):
    """Run one planned run from its spec (JSON: a spec, or a record whose spec to run again) and write
    its record into OUT; what every executor runs, so a run behaves the same wherever it runs."""
    from .sweep import check_output_dir, execute_one

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


@cli.group()
def study():
    """The LoRA paper's questions as sweeps: which matrices to adapt (targets), which rank (rank)."""


def study_options(f):
    for opt in reversed([
        click.option("--tasks", "tasks_", default="trec", show_default=True, help="Comma list of tasks."),
        click.option("--seeds", default="0,1,2", show_default=True),
        click.option("--model", default="minilm", show_default=True),
        click.option("--train-samples", default="all", show_default=True),
        click.option("--epochs", type=float, default=2.0, show_default=True),
        click.option("--max-steps", type=int, default=None),
        click.option("--batch-size", type=int, default=32, show_default=True),
        click.option("--precision", default="auto", show_default=True),
        click.option("--latency/--no-latency", default=False, show_default=True),
        click.option("--lr-search/--no-lr-search", default=True, show_default=True,
                     help="Choose each set's learning rate on held-out training data (default grid)."),
        click.option("--lr-extend", type=int, default=0, show_default=True,
                     help="Where a set's best rate is at an edge of the grid, try up to N more rates beyond it."),
        click.option("--out", required=True, type=click.Path(file_okay=False),
                     help="Folder for the study's sweep file and records (resumes)."),
    ]):
        f = opt(f)
    return f


def _study(ctx, name, file_text, out):
    from .report import records_frame, summarize
    from .records import load_records, write_atomic
    from .studies import lora_paper

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.toml"
    write_atomic(path, file_text, text=True)
    click.echo(f"study {name}: {path} (rerun or resume with `peftbench run --config {path}`)", err=True)
    code = 0
    try:
        ctx.invoke(run, config=str(path))
    except click.exceptions.Exit as e:
        code = e.exit_code
    click.echo(f"\nThe paper's shape ({name}):\n")
    click.echo(lora_paper.table(summarize(records_frame(load_records(out).values())), name), nl=False)
    ctx.exit(code)


def _study_settings(tasks_, seeds, model, train_samples, epochs, max_steps, batch_size, precision, latency,
                    lr_search, lr_extend, keep=False):
    from .plan import parse_int_list

    return {"model": model, "tasks": [t.strip() for t in tasks_.split(",") if t.strip()],
            "seeds": parse_int_list(seeds, "--seeds"), "train_samples": parse_train_samples(train_samples) or "all",
            "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size, "precision": precision,
            "latency": latency, "lr_search": lr_search or None, "lr_extend": lr_extend or None,
            "keep_checkpoints": keep}


def _sets(text: str) -> list[str]:
    sets = [x.strip() for x in text.split(";") if x.strip()]
    if not sets:
        raise PeftbenchError("--sets: give target sets separated by ';', e.g. 'q;q,v;q,k,v,o'")
    return sets


@study.command("targets")
@click.option("--sets", default="q;k;v;o;q,k;q,v;q,k,v,o;ffn",
              show_default=True, help="Target sets separated by ';' (roles q,k,v,o,ffn or module names).")
@click.option("--budget", default="lora[target_modules=q]:r=8", show_default=True,
              help="The one budget every set gets (default: what LoRA r=8 on one matrix type trains).")
@study_options
@click.pass_context
def study_targets(ctx, sets, budget, tasks_, seeds, model, train_samples, epochs, max_steps, batch_size, precision,
                  latency, lr_search, lr_extend, out):
    """Which weight matrices to adapt under one budget (the paper's Table 5): LoRA on each target set,
    its rank solved for the budget (r = 8 / 4 / 2 for one / two / four matrix types)."""
    from .studies import lora_paper

    settings = _study_settings(tasks_, seeds, model, train_samples, epochs, max_steps, batch_size, precision, latency,
                               lr_search, lr_extend)
    _study(ctx, "targets", lora_paper.sweep_file("targets", settings, _sets(sets), budget=budget), out)


@study.command("rank")
@click.option("--sets", default="q;q,v;q,k,v,o",
              show_default=True, help="Target sets separated by ';'.")
@click.option("--ranks", default="1,2,4,8,64", show_default=True)
@study_options
@click.pass_context
def study_rank(ctx, sets, ranks, tasks_, seeds, model, train_samples, epochs, max_steps, batch_size, precision,
               latency, lr_search, lr_extend, out):
    """Which rank (the paper's Table 6): r x target sets; checkpoints kept for `analyze subspace`."""
    from .plan import parse_int_list
    from .studies import lora_paper

    rs = parse_int_list(ranks, "--ranks")
    if any(r < 1 for r in rs):
        raise PeftbenchError(f"--ranks {ranks}: ranks must be positive integers")
    settings = _study_settings(tasks_, seeds, model, train_samples, epochs, max_steps, batch_size, precision,
                               latency, lr_search, lr_extend, keep=True)
    _study(ctx, "rank", lora_paper.sweep_file("rank", settings, _sets(sets), ranks=rs), out)


@cli.group()
def analyze():
    """What LoRA's update learned, from run checkpoints (the LoRA paper's Section 7)."""


@analyze.command("subspace")
@click.argument("record_a", type=click.Path())
@click.argument("record_b", type=click.Path())
@click.option("--plot", type=click.Path(), default=None, help="Write φ(i, j) heatmaps of the last adapted layer (PNG).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True)
def analyze_subspace(record_a, record_b, plot, fmt):
    """Subspace similarity φ of two lora runs' A matrices (e.g. r=8 vs r=64, or two seeds), per matrix."""
    from .studies import analyze as an

    specs = [an.read_record(record_a)["spec"], an.read_record(record_b)["spec"]]
    for key in ("model", "task"):
        if specs[0].get(key) != specs[1].get(key):
            raise PeftbenchError(f"{record_a} and {record_b} are runs of different {key}s ({specs[0].get(key)} vs "
                                 f"{specs[1].get(key)}); compare two lora runs of the same model and task")
    rec_a, model_a = an.load_run(record_a)
    rec_b, model_b = an.load_run(record_b)
    rows = an.subspace_table(an.factors(model_a), an.factors(model_b))
    cols = ("matrix", "r_a", "r_b", "phi_1_1", "phi_diag_mean", "random_1_1")
    if fmt == "csv":
        _echo_csv(cols, [[r[c] for c in cols] for r in rows])
    else:
        click.echo(f"A: {record_a} (r={rows[0]['r_a']}, seed {rec_a['spec']['seed']}); "
                   f"B: {record_b} (r={rows[0]['r_b']}, seed {rec_b['spec']['seed']})")
        _print_rows([("matrix", "r A", "r B", "φ(1,1) top direction shared", "mean φ(i,i), i<=min r",
                      "random φ(1,1) ~ 1/d"),
                     *((r["matrix"], r["r_a"], r["r_b"], f"{r['phi_1_1']:.3f}", f"{r['phi_diag_mean']:.3f}",
                        f"{r['random_1_1']:.4f}") for r in rows)])
    if plot:
        an.plot_subspace(rows, plot, f"{Path(record_a).name} vs {Path(record_b).name}")


@analyze.command("delta")
@click.argument("record", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True)
def analyze_delta(record, fmt):
    """How ΔW relates to W per adapted matrix: ‖UᵀWV‖ for ΔW's, W's and random directions; amplification."""
    from .studies import analyze as an

    rec, model = an.load_run(record)
    rows = [{"matrix": an.short(name), **an.delta_stats(f["A"], f["B"], f["scaling"], f["W"])}
            for name, f in an.factors(model).items()]
    cols = ("matrix", "r", "delta_norm", "w_norm", "proj_delta", "proj_w", "proj_random", "amplification")
    if fmt == "csv":
        _echo_csv(cols, [[r[c] for c in cols] for r in rows])
        return
    click.echo(f"{record}: lora r={rec['spec']['knob_value']} on {rec['spec']['task']}, seed {rec['spec']['seed']}")
    _print_rows([("matrix", "r", "‖ΔW‖", "‖W‖", "‖UᵀWV‖ ΔW dirs", "‖UᵀWV‖ W dirs", "‖UᵀWV‖ random",
                  "amplification ‖ΔW‖/‖UᵀWV‖"),
                 *((r["matrix"], r["r"], *(f"{r[c]:.3f}" for c in cols[2:7]), f"{r['amplification']:.1f}")
                   for r in rows)])


@cli.command()
@click.option("--model", default="gpt3-175b", show_default=True,
              help="A built-in config (gpt3-175b, gpt2-medium, bloom-3b, bert-base-uncased), minilm, smollm2, "
                   "a transformers model id or a folder with config.json; no weights are loaded.")
@click.option("--methods", "methods_", default="full,lora", show_default=True, help="Comma list; variants as name[key=value,...].")
@click.option("--knob", "knob_text", default=None, help="Knob values per method, e.g. lora=1,lora=4,lora=8 (default: the method's).")
@click.option("--precision", "regimes", default="fp32,fp16-mixed,pure-16bit", show_default=True,
              help="Precision regimes (comma list): fp32, bf16-autocast, fp16-mixed, pure-16bit.")
@click.option("--activations", "shape", default=None, metavar="BATCHxSEQ",
              help="Also count the activations one training step keeps for its backward pass at this batch x "
                   "sequence length (e.g. 1x2048), on the meta device through transformers' forward (fp32).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True)
@plugin_option
@click.pass_context
def memory(ctx, model, methods_, knob_text, regimes, fmt, shape, plugin_files):
    """Training memory (weights, gradients, AdamW state) and checkpoint size of each method for a model
    config, counted exactly on the meta device; activations with --activations."""
    from .plan import parse_methods
    from .plugins import get_methods
    from .studies import memory as mem

    _load(_plugins(ctx, plugin_files))
    choices = parse_methods(methods_, get_methods())
    regimes = [r.strip() for r in regimes.split(",") if r.strip()]
    bad = [r for r in regimes if r not in mem.REGIMES]
    if bad:
        raise PeftbenchError(f"--precision {bad[0]}: not a regime{closest(bad[0], mem.REGIMES)}; "
                             f"choose from {', '.join(mem.REGIMES)}")
    knobs: dict = {}
    for part in (knob_text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise PeftbenchError(f"--knob {part.strip()!r}: give method=positive integer, e.g. lora=4")
        if name.strip() not in {c.method.name for c in choices}:
            raise PeftbenchError(f"--knob {part.strip()!r}: {name.strip()} is not in --methods")
        knobs.setdefault(name.strip(), []).append(int(value))
    batch = seq_len = None
    if shape is not None:
        b, sep, n = shape.lower().partition("x")
        if not sep or not b.strip().isdigit() or not n.strip().isdigit() or int(b) < 1 or int(n) < 1:
            raise PeftbenchError(f"--activations {shape!r}: give BATCHxSEQ, two positive integers, e.g. 1x2048")
        batch, seq_len = int(b), int(n)
    base, table = mem.rows(model, choices, knobs, regimes)
    acts = mem.activation_rows(model, choices, knobs, batch, seq_len) if shape is not None else None
    if acts is not None:
        for row in table:
            row["activations_fp32"] = acts[(row["method"], row["knob"])]
    if fmt == "csv":
        _echo_csv(list(table[0]), [list(row.values()) for row in table])
        return
    click.echo(f"model {model}: {base:,} parameters (task head excluded); bytes in decimal units (1 GB = 1e9 B); "
               + ("activations excluded" if acts is None else "activations below"))
    _print_rows([("method", "knob", "trainable", "% of model", "regime", "weights", "gradients", "AdamW state",
                  "training total", "checkpoint"),
                 *((r["method"], r["knob"], f"{r['trainable']:,}", f"{r['pct']:.4f}%", r["regime"],
                    *(mem.human(r[k]) for k in ("weights", "gradients", "optimizer", "training", "checkpoint")))
                   for r in table)])
    click.echo("")
    for name in regimes:
        click.echo(f"{name}: {mem.REGIMES[name].what}")
    if acts is not None:
        click.echo("")
        click.echo(f"Activations of one training step at batch {batch} x {seq_len} tokens (what autograd keeps for "
                   "the backward pass; counted on the meta device through transformers' own forward, fp32, no "
                   "recomputation; an estimate of a real run: a fused attention kernel keeps no seq x seq tensor, "
                   "and bf16 autocast keeps less, 0.77x on MiniLM at 32 x 64, measured the same way):")
        fp32 = {(r["method"], r["knob"]): r["training"] for r in table if r["regime"] == "fp32"}
        lines = [("method", "knob", "activations", "fp32 training total + activations")]
        for (m, k), v in acts.items():
            total = mem.human(v + fp32[m, k]) if v is not None and (m, k) in fp32 else ""
            lines.append((m, k, "n/a (needs real weights)" if v is None else mem.human(v), total))
        _print_rows(lines)
    if model == "gpt3-175b":
        click.echo("")
        for line in mem.paper_notes(base, table):
            click.echo(line)


@cli.command()
@click.option("--methods", "methods_", default="lora,adapter", show_default=True,
              help="Comma list of methods; variants as name[key=value,...], e.g. adapter[placement=pfeiffer].")
@click.option("--tasks", "tasks_", default="sst2", show_default=True, help="Comma list of tasks.")
@click.option("--seeds", default="0", show_default=True, help="Comma list of seeds.")
@click.option("--model", default="minilm", show_default=True, help="minilm, a transformers model id, or a folder.")
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
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", default="auto", show_default=True,
              help="auto|fp32|bf16|fp16: auto = bf16 autocast on CUDA with bf16 and on CPUs with AMX-BF16/AVX512-BF16, else fp32.")
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
              help="Learning-rate search: where the best rate is at an edge of its grid, try up to N more rates beyond it.")
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
        from . import worker

        # The fork server imports torch & co. (on another core) while this process does the
        # same to plan: started first thing, before this process has imported anything heavy.
        # (A sweep file that asks for --nproc > 1 runs through torchrun instead; the idle
        # server then ends with this process.)
        worker.context()
    from . import report
    from .plan import SweepSettings, plan_all
    from .sweep import check_output_dir, run_sweep

    if timeout_per_run is not None and timeout_per_run <= 0:
        raise PeftbenchError(f"--timeout-per-run must be positive, got {timeout_per_run}")
    if config:
        from . import sweepfile

        given = [f"--{p.replace('_', '-')}" for p in SWEEP_FLAGS
                 if ctx.get_parameter_source(p) is click.core.ParameterSource.COMMANDLINE]
        if given:
            raise PeftbenchError(f"--config {config} defines the sweep; drop {', '.join(given)} (or edit the file)")
        settings, config_out = sweepfile.load(config)
        for s in settings:
            s.plugins = tuple(s.plugins) + _plugins(ctx, plugin_files)
            if data_dir:
                s.data_dir = data_dir
        out = out or config_out
    else:
        settings = [SweepSettings(
            methods=methods_, tasks=tasks_, seeds=seeds, model=model, data_dir=data_dir, knob=knob, budget=budget,
            lr=lr, epochs=epochs, max_steps=max_steps, train_samples=parse_train_samples(train_samples),
            data_seed=data_seed, train_subset=train_subset, batch_size=batch_size, max_seq_len=max_seq_len,
            warmup_ratio=warmup_ratio, weight_decay=weight_decay, max_grad_norm=max_grad_norm, device=device,
            precision=precision, keep_checkpoint=keep_checkpoints, plugins=_plugins(ctx, plugin_files),
            latency=latency_settings(latency, latency_batch, latency_seq_len, latency_min_time),
            eval_split=eval_split, eval_samples=eval_samples, num_beams=num_beams, length_penalty=length_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size, max_new_tokens=max_new_tokens, meteor=meteor,
            lr_search=lr_search, lr_grid=tuple(lr_grid), val_samples=val_samples, search_seeds=search_seeds,
            lr_extend=lr_extend,
            nproc=nproc,
        )]
    out = Path(out or Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    from .executors import ExecutorOptions
    from .studies.configs import CONFIGS

    executor_options = ExecutorOptions(executor, jobs, {
        "partition": slurm_partition, "time_min": slurm_time, "gpus_per_run": slurm_gpus_per_run,
        "array_parallelism": slurm_array_parallelism, "cluster": slurm_cluster},
        {"address": ray_address, "cpus_per_run": ray_cpus_per_run}).validate()
    for s in settings:
        if s.nproc > 1:  # one process per GPU, or per CPU core
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
    the_plan = plan_all(settings)  # validates everything before any training starts
    if not dry_run:
        check_output_dir(out)
    for message in the_plan.warnings:
        click.echo(f"warning: {message}", err=True)
    if the_plan.solutions:
        click.echo("Budget solutions (method's own parameters, head excluded):", err=True)
        for line in _format_rows(_budget_rows(the_plan.solutions)):
            click.echo("  " + line, err=True)
    click.echo(f"{len(the_plan.specs) + len(the_plan.waiting)} run(s) -> {out}"
               + (f", after {len(the_plan.searches)} learning-rate search run(s) -> {out / 'search'}"
                  if the_plan.searches else ""), err=True)

    if dry_run:  # what the sweep would do: planned runs, and how many already have an ok record
        from .records import load_records

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
        from . import lrsearch

        def search(specs):
            return {r["run_id"]: r for r in run_sweep(specs, out / "search", **options).records}

        finals, lines, _ = lrsearch.run_search(the_plan.searches, the_plan.waiting, search,
                                               lambda line: click.echo(f"learning-rate grid grown: {line}", err=True))
        for line in lines:
            click.echo(f"learning rate chosen: {line}", err=True)
        specs = specs + finals
    result = run_sweep(specs, out, **options)
    click.echo(report.to_markdown(report.summarize(report.records_frame(result.records))))
    bad = [r for r in result.records if r["status"] != "ok"]
    click.echo(f"{len(result.records) - len(bad)} of {len(result.records)} run(s) ok; records in {out}/records", err=True)
    if bad:
        click.echo(f"{len(bad)} run(s) did not finish ok: " + ", ".join(f"{r['spec'].get('label')}/{r['spec'].get('task')}/s{r['spec'].get('seed')}={r['status']}" for r in bad), err=True)
        ctx.exit(1)


def parse_train_samples(text: str) -> int | None:
    if str(text).lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise PeftbenchError(f"--train-samples {text!r}: give a positive integer or 'all'") from None


def latency_settings(measure: bool, batch, seq_len, min_time) -> dict | None:
    """The latency measurement a run makes (None: none), validated."""
    if not measure:
        return None
    ok = isinstance(batch, int) and batch >= 1 and (seq_len is None or (isinstance(seq_len, int) and seq_len >= 1))
    if not ok or not isinstance(min_time, (int, float)) or min_time < 0:
        raise PeftbenchError("--latency-batch/--latency-seq-len must be positive integers and --latency-min-time >= 0")
    return {"batch": batch, "seq_len": seq_len, "min_reps": 20, "min_time_s": float(min_time), "warmup": 3}


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

    from .plugins import get_task
    from .tasks import load_task_data

    _load(_plugins(ctx, plugin_files))
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
        _print_rows([("metric", "score"), *((k, f"{v:.4f}") for k, v in scores.items())])


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
def report(dirs, fmt, output, summary_only, plot, cost_plot, task_filter):
    """Print the comparison table of the records in DIR(s) and every record folder below them."""
    from . import report as rep
    from .records import load_records, write_atomic
    from .report import overview, page

    records = {}
    for d in dirs:
        if not Path(d).is_dir():
            raise PeftbenchError(f"{d} is not a folder of run records; give the --out folder of a run")
        for folder in rep.record_folders(Path(d)):
            records.update(load_records(folder, warn=lambda m: click.echo(f"warning: {m}", err=True)))
    if not records:
        raise PeftbenchError(f"no run records found in or below {', '.join(dirs)}; give the --out folder of a run "
                             "(the one holding records/)")
    _warn_stale(records.values())
    df = rep.records_frame(records.values())
    if task_filter:
        df = df[df.task.isin([t.strip() for t in task_filter.split(",")])]
    summary = rep.summarize(df)
    if summary_only:
        ov = overview.overview(summary)
        text = (overview.to_markdown(ov) if fmt == "md" else ov.to_csv(index=False) if fmt == "csv"
                else page.render_page(summary) if fmt == "html" else None)
        if text is None:
            raise PeftbenchError(f"--summary is written as md, csv or html, not {fmt}; drop --summary or pick one")
    else:
        text = page.render_page(summary) if fmt == "html" else rep.render(summary, fmt)
    if output:
        write_atomic(Path(output), text, text=True)
    else:
        click.echo(text, nl=False)
    if plot:
        rep.plot(summary, plot)
    if cost_plot:
        rep.plots.plot_costs(summary, cost_plot)


def _warn_stale(records) -> None:
    """Say (on stderr, not in the table) which ok records other code or libraries made."""
    from collections import Counter

    from .provenance import current_environment
    from .records import stale_reasons

    current = current_environment()
    reasons = Counter(reason for r in records if r["status"] == "ok" for reason in stale_reasons(r, current))
    stale = sum(1 for r in records if r["status"] == "ok" and stale_reasons(r, current))
    if stale:
        shown = "; ".join(f"{reason} ({n})" for reason, n in reasons.most_common(4))
        click.echo(f"warning: {stale} record(s) are stale, made by other code or libraries than installed now: {shown}; "
                   "the same `peftbench run` with --rerun-stale refreshes them", err=True)


def main(argv=None):
    """Entry point: bad input -> one line on stderr, exit code 2 (tracebacks with --debug)."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("PEFTBENCH_DEBUG") == "1"
    try:
        rv = cli.main(args=argv, prog_name="peftbench", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo("Interrupted: finished runs are kept; a run in progress is recorded as cancelled.", err=True)
        return 130
    except click.UsageError as e:
        if debug:
            raise
        cmd = e.ctx.command_path if e.ctx else "peftbench"
        click.echo(f"Error: {e.format_message()} (see {cmd} --help)", err=True)
        return EXIT_BAD_INPUT
    except PeftbenchError as e:
        if debug:
            raise
        click.echo(f"Error: {e}", err=True)
        return EXIT_BAD_INPUT
    except Exception as e:
        if debug:
            raise
        click.echo(f"Error: internal error: {type(e).__name__}: {first_line(e)} (rerun with --debug for the traceback)", err=True)
        return 1


def console() -> None:
    """The ``peftbench`` command: :func:`main`, then exit without tearing the interpreter down.
    Finalising the modules a sweep imported (torch, transformers, pandas, the plugins) and
    collecting their objects took 2.3 s after the last line was printed (a tiny-model
    ``peftbench run``, one core); the exit handlers still run (logging, multiprocessing, weakref
    finalizers, temporary folders), the output is flushed, then the process ends."""
    code = main()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to say
            pass
    os._exit(code)


if __name__ == "__main__":
    console()
