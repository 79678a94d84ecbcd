"""The hooks a peftbench plugin can implement.

A plugin is a module with functions decorated by ``@peftbench.hookimpl``; each hook
receives a ``register`` callback (as in simonw/llm) and calls it once per thing it adds.
"""

import pluggy

hookspec = pluggy.HookspecMarker("peftbench")
hookimpl = pluggy.HookimplMarker("peftbench")


@hookspec
def peftbench_register_methods(register):
    """Register fine-tuning methods: call ``register(method)`` with a ``peftbench.Method``."""


@hookspec
def peftbench_register_tasks(register):
    """Register tasks: call ``register(task)`` with a ``peftbench.tasks.Task``."""


@hookspec
def peftbench_register_metrics(register):
    """Register metrics: call ``register(metric)`` with a ``peftbench.Metric``."""
