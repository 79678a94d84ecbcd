"""The LoRA paper's questions as commands: study (targets, rank), analyze (subspace, delta), memory."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from ..errors import PeftbenchError, closest
from . import cli, given_plugins, load_plugin_files, plugin_option
from .output import check_file_targets, echo_csv, print_rows
from .run import run


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
        click.option("--progress/--no-progress", default=True, show_default=True,
                     help="Progress bars of the runs (off for a log file)."),
        click.option("--plot", type=click.Path(dir_okay=False), default=None,
                     help="Also write the study's figure (PNG) from the records, finished or not."),
    ]):
        f = opt(f)
    return f


def _show(records, name: str, plot=None, lead: str = "") -> None:
    """The paper-shaped table of a study's records (and its figure, each seed's value drawn)."""
    from ..report import records_frame, summarize
    from ..studies import lora_paper

    runs = records_frame(records)
    summary = summarize(runs)
    click.echo(f"{lead}The paper's shape ({name}):\n")
    click.echo(lora_paper.table(summary, name, seeds=True), nl=False)
    if plot:
        lora_paper.plot(summary, name, plot, runs)
        click.echo(f"figure: {plot}", err=True)


def _study(ctx, name, file_text, out, progress, plot=None):
    from ..records import load_records, write_atomic

    check_file_targets(plot=plot)
    out = Path(out)
    path = out / "sweep.toml"
    if path.is_file() and path.read_text() != file_text:  # e.g. a study file edited since (another grid)
        raise PeftbenchError(f"{path} exists and plans another study than these options write; resume it with "
                             f"`peftbench run --config {path}` (`peftbench study show {out}` prints the paper's "
                             "shape), or give another --out")
    made = [p for p in (out, *out.parents) if not p.exists()]  # the folders written here, innermost first
    before = set(out.iterdir()) if out.is_dir() else set()
    new = not path.is_file()
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, file_text, text=True)
    kept = f"study {name}: {path} (rerun or resume with `peftbench run --config {path}`)"
    code = 0
    try:
        ctx.invoke(run, config=str(path), progress=progress)
    except click.exceptions.Exit as e:
        code = e.exit_code
    except PeftbenchError as e:  # refused while planning: leave no file behind that plans what was refused
        if new and set(out.iterdir()) - before == {path}:
            path.unlink()
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise PeftbenchError(str(e).removeprefix(f"{path}: ")) from None  # the options', not the file's
        click.echo(kept, err=True)
        raise
    except BaseException:  # Ctrl-C, a crash: where to resume
        click.echo(kept, err=True)
        raise
    click.echo(kept, err=True)
    _show(load_records(out).values(), name, plot, lead="\n")
    ctx.exit(code)


def _study_settings(tasks_, seeds, model, train_samples, epochs, max_steps, batch_size, precision, latency,
                    lr_search, lr_extend, keep=False):
    from ..plan import parse_int_list, parse_train_samples

    if precision == "auto":  # the file pins what auto is here, so that it plans the same runs on any machine
        from ..precision import resolve
        from ..runner import resolve_device

        precision = resolve("auto", resolve_device("auto"))[0]
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
@click.option("--keep-checkpoints", is_flag=True,
              help="Keep each run's LoRA weights, for `peftbench analyze` (`study rank` always keeps them).")
@study_options
@click.pass_context
def study_targets(ctx, sets, budget, keep_checkpoints, tasks_, seeds, model, train_samples, epochs, max_steps,
                  batch_size, precision, latency, lr_search, lr_extend, out, progress, plot):
    """Which weight matrices to adapt under one budget (the paper's Table 5): LoRA on each target set,
    its rank solved for the budget (r = 8 / 4 / 2 for one / two / four matrix types)."""
    from ..studies import lora_paper

    settings = _study_settings(tasks_, seeds, model, train_samples, epochs, max_steps, batch_size, precision, latency,
                               lr_search, lr_extend, keep=keep_checkpoints)
    _study(ctx, "targets", lora_paper.sweep_file("targets", settings, _reachable(_sets(sets), budget, model),
                                                 budget=budget), out, progress, plot)


def _reachable(sets: list[str], budget: str, model: str) -> list[str]:
    """The target sets whose rank can meet the budget on this model; the others are left out with a
    line saying so (SmolLM2's feed-forward matrices train more than W_q at r=8 already at r=1)."""
    from ..budget import OutOfReach, budget_params, parse_budgets, solve
    from ..models import counter as make_counter
    from ..models import load_config
    from ..plan import parse_methods, reference_resolver
    from ..plugins import get_methods
    from ..studies.lora_paper import _method

    methods = get_methods()
    budgets = parse_budgets(budget)
    if len(budgets) != 1:
        raise PeftbenchError(f"--budget {budget}: give one budget (the study compares the sets at one)")
    b = budgets[0]
    counter = make_counter(load_config(model))
    target = budget_params(b, counter, reference_resolver(methods))
    kept, why = [], []
    for targets in sets:
        (choice,) = parse_methods(_method(targets), methods)
        try:
            solve(choice.method, choice.options, target, counter, choice.label)
            kept.append(targets)
        except OutOfReach as e:
            why.append(f"{targets}: {e}")
        except PeftbenchError as e:  # a set naming no layers (a typo): the user's to fix, it ends the command
            raise PeftbenchError(f"--sets: target set {targets}: {e}") from None
    if not kept:
        raise PeftbenchError(f"--budget {budget}: no target set reaches it on {model} ({why[0]})")
    for line in why:
        click.echo(f"warning: target set left out, {line}", err=True)
    return kept


@study.command("rank")
@click.option("--sets", default="q;q,v;q,k,v,o",
              show_default=True, help="Target sets separated by ';'.")
@click.option("--ranks", default="1,2,4,8,64", show_default=True)
@study_options
@click.pass_context
def study_rank(ctx, sets, ranks, tasks_, seeds, model, train_samples, epochs, max_steps, batch_size, precision,
               latency, lr_search, lr_extend, out, progress, plot):
    """Which rank (the paper's Table 6): r x target sets; checkpoints kept for `analyze subspace`."""
    from ..plan import parse_int_list
    from ..studies import lora_paper

    rs = parse_int_list(ranks, "--ranks")
    if any(r < 1 for r in rs):
        raise PeftbenchError(f"--ranks {ranks}: ranks must be positive integers")
    settings = _study_settings(tasks_, seeds, model, train_samples, epochs, max_steps, batch_size, precision,
                               latency, lr_search, lr_extend, keep=True)
    _study(ctx, "rank", lora_paper.sweep_file("rank", settings, _sets(sets), ranks=rs), out, progress, plot)


@study.command("show")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Also write the study's figure (PNG).")
def study_show(folder, plot):
    """The paper-shaped table (and figure) of a study's records in FOLDER, finished or not: a study run with
    `peftbench run --config` from an edited sweep file (another grid, fewer sets) included."""
    from ..records import load_records

    check_file_targets(plot=plot)
    records = load_records(Path(folder)) if Path(folder).is_dir() else {}
    lora = [r for r in records.values() if r.get("spec", {}).get("method") == "lora"]
    if not lora:
        raise PeftbenchError(f"{folder} has no records of lora runs; give the --out folder of a `peftbench study` "
                             "(or of `peftbench run --config` on its sweep file)")
    # a targets study gives every set one budget; a rank study gives each run its rank
    name = "targets" if len({r["spec"].get("budget") for r in lora} - {None}) == 1 and all(
        r["spec"].get("budget") for r in lora) else "rank"
    _show(records.values(), name, plot)


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
    from ..studies import analyze as an

    check_file_targets(plot=plot)
    specs = [an.read_record(record_a)["spec"], an.read_record(record_b)["spec"]]
    for key in ("model", "task"):
        if specs[0].get(key) != specs[1].get(key):
            raise PeftbenchError(f"{record_a} and {record_b} are runs of different {key}s ({specs[0].get(key)} vs "
                                 f"{specs[1].get(key)}); compare two lora runs of the same model and task")
    rec_a, model_a = an.load_run(record_a)
    rec_b, model_b = an.load_run(record_b)
    rows = an.subspace_table(an.factors(model_a), an.factors(model_b))
    cols = ("matrix", "r_a", "r_b", "phi_1_1", "phi_diag_mean", "random_1_1", "random_diag_mean")
    if fmt == "csv":
        echo_csv(cols, [[r[c] for c in cols] for r in rows])
    else:
        click.echo(f"A: {record_a} (r={rows[0]['r_a']}, seed {rec_a['spec']['seed']}); "
                   f"B: {record_b} (r={rows[0]['r_b']}, seed {rec_b['spec']['seed']})")
        print_rows([("matrix", "r A", "r B", "φ(1,1) top direction shared", "mean φ(i,i), i<=min r",
                      "random φ(1,1) ~ 1/d", "random mean φ(i,i)"),
                     *((r["matrix"], r["r_a"], r["r_b"], f"{r['phi_1_1']:.3f}", f"{r['phi_diag_mean']:.3f}",
                        f"{r['random_1_1']:.4f}", f"{r['random_diag_mean']:.4f}") for r in rows)])
        if specs[0].get("seed") == specs[1].get("seed"):
            click.echo(f"Both runs are seed {specs[0].get('seed')}: besides the task they share the data order, the "
                       "head's initialisation and the random draws of A (the first adapted matrix starts from the "
                       "same rows); runs of two seeds show what the rank alone shares.")
    if plot:
        an.plot_subspace(rows, plot, f"{Path(record_a).name} vs {Path(record_b).name}")


@analyze.command("delta")
@click.argument("record", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True)
def analyze_delta(record, fmt):
    """How ΔW relates to W per adapted matrix: ‖UᵀWV‖ for ΔW's, W's and random directions; amplification."""
    from ..studies import analyze as an

    rec, model = an.load_run(record)
    fs = an.factors(model)
    names = an.short_names(fs)
    rows = [{"matrix": names[name], **an.delta_stats(f["A"], f["B"], f["scaling"], f["W"])} for name, f in fs.items()]
    cols = ("matrix", "r", "delta_norm", "w_norm", "proj_delta", "proj_w", "proj_random", "proj_random_rms",
            "amplification")
    if fmt == "csv":
        echo_csv(cols, [[r[c] for c in cols] for r in rows])
        return
    click.echo(f"{record}: lora r={rec['spec']['knob_value']} on {rec['spec']['task']}, seed {rec['spec']['seed']}")
    print_rows([("matrix", "r", "‖ΔW‖", "‖W‖", "‖UᵀWV‖ ΔW dirs", "‖UᵀWV‖ W dirs", "‖UᵀWV‖ random (1 draw)",
                  "random rms r‖W‖/√(d_out·d_in)", "amplification ‖ΔW‖/‖UᵀWV‖"),
                 *((r["matrix"], r["r"], *(f"{r[c]:.3f}" for c in cols[2:8]), f"{r['amplification']:.1f}")
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
    from ..plan import parse_methods
    from ..plugins import get_methods
    from ..studies import memory as mem

    load_plugin_files(given_plugins(ctx, plugin_files))
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
        echo_csv(list(table[0]), [list(row.values()) for row in table])
        return
    click.echo(f"model {model}: {base:,} parameters (task head excluded); bytes in decimal units (1 GB = 1e9 B); "
               + ("activations excluded" if acts is None else "activations below"))
    print_rows([("method", "knob", "trainable", "% of model", "regime", "weights", "gradients", "AdamW state",
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
        print_rows(lines)
    if model == "gpt3-175b":
        click.echo("")
        for line in mem.paper_notes(base, table):
            click.echo(line)
