"""peftbench's built-in task definitions (installed as ``peftbench_tasks``)."""
