"""The ``peftbench`` command line: the group, its entry points and what every command shares.

The commands live by theme: ``run.py`` (run, run-spec), ``info.py`` (env, methods, tasks, check,
budget, score, report), ``studies.py`` (the LoRA paper's questions: study, analyze, memory).
"""

from __future__ import annotations

import os
import sys

import click

from ..errors import PeftbenchError, PluginFailure, first_line

EXIT_BAD_INPUT = 2


def plugin_option(f):
    return click.option(
        "--plugins", "plugin_files", multiple=True, metavar="FILE.py",
        help="Load a local plugin file (repeatable; also PEFTBENCH_PLUGINS).",
    )(f)


def load_plugin_files(plugin_files):
    from ..plugins import load_plugins

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


def given_plugins(ctx, extra):
    """The plugin files given to the group (``peftbench --plugins F cmd``) and to the command."""
    return tuple(ctx.obj.get("plugins", ())) + tuple(extra)


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
    except click.UsageError as e:  # one line even with --debug (which `report DIR --debug` misplaces)
        cmd = e.ctx.command_path if e.ctx else "peftbench"
        click.echo(f"Error: {e.format_message()} (see {cmd} --help)", err=True)
        return EXIT_BAD_INPUT
    except PeftbenchError as e:
        if debug:
            raise
        click.echo(f"Error: {e}", err=True)
        return EXIT_BAD_INPUT
    except PluginFailure as e:  # a plugin's code raised outside a run (counting a budget): the plugin's error
        if debug:
            raise
        click.echo(f"Error: {e}; fix the plugin or leave it out", err=True)
        return 1
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


from . import info, run, studies  # noqa: E402,F401  (each registers its commands on ``cli``)
