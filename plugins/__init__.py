"""peftbench's built-in method plugins (installed as ``peftbench_plugins``).

Each module registers its method through the ``peftbench_register_methods`` hook, exactly
as a third-party plugin would.
"""
