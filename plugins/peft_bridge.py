"""Hugging Face peft methods as peftbench methods (optional extra: pip install 'peftbench[peft]')."""

import importlib.util

import peftbench


def available() -> bool:
    return importlib.util.find_spec("peft") is not None


@peftbench.hookimpl
def peftbench_register_methods(register):
    if not available():
        return
