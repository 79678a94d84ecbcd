"""peftbench: compare parameter-efficient fine-tuning methods at matched budgets."""

from importlib.metadata import PackageNotFoundError, version

from .hookspecs import hookimpl
from .method import Method

try:
    __version__ = version("peftbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["Method", "hookimpl", "__version__"]
