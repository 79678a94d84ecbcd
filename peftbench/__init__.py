"""peftbench: compare parameter-efficient fine-tuning methods at matched budgets.

What a plugin needs: ``peftbench.hookimpl``, and the classes it registers: ``peftbench.Method``,
``peftbench.Task`` (with ``peftbench.HubSource``) and ``peftbench.Metric``.
"""

from importlib.metadata import PackageNotFoundError, version

from .hookspecs import hookimpl

try:
    __version__ = version("peftbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["HubSource", "Method", "Metric", "Task", "hookimpl", "__version__"]


def __getattr__(name):  # imported on first use: Method pulls in torch, the others pandas
    if name == "Method":
        from .method import Method

        return Method
    if name in ("Task", "Metric", "HubSource"):
        from . import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module 'peftbench' has no attribute {name!r}")
