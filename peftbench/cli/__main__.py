"""``python -m peftbench.cli``: the ``peftbench`` command."""

from . import console

console()
