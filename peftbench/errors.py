"""Errors that the CLI turns into one line on stderr and exit code 2."""


class PeftbenchError(Exception):
    """Bad input or configuration: the message names the problem and the fix."""


class PluginError(PeftbenchError):
    """A plugin failed to load, registered a bad or duplicate name, or misspelled a hook."""


class UnsupportedModel(PeftbenchError):
    """A method could not find what it needs in a model."""


class PluginFailure(Exception):
    """A plugin's code raised (not a PeftbenchError it chose to raise): the plugin's failure, named
    with the plugin, recorded as a failed run rather than reported as peftbench's own error."""

    def __init__(self, kind: str, name: str, plugin: str, what: str, error: BaseException):
        import traceback

        self.error_type = type(error).__name__
        self.traceback = "".join(traceback.format_exception(error))  # the plugin's own, for the run's side file
        super().__init__(f"{kind} {name} (plugin {plugin}): {what} raised {self.error_type}: {first_line(error)}")


def first_line(e: BaseException) -> str:
    """An exception's message in one line (its type name when the message is empty)."""
    return (str(e).strip() or type(e).__name__).splitlines()[0]


def closest(name, choices, n=3):
    """A 'did you mean ...' suffix for an unknown name, or ''."""
    import difflib

    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(matches)}?)" if matches else ""


def check_file(path, give: str, error=PeftbenchError) -> None:
    """Raise ``error`` "PATH: no such file; give GIVE" (or "PATH is a folder; ...") unless PATH is a file."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise error(f"{path} is a folder; give {give}" if p.is_dir() else f"{path}: no such file; give {give}")
