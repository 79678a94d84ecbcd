"""The base model itself: nothing of its own is trained. On a classification task this is a linear
probe (only the task head trains, on the frozen model); on a generation task it is the untuned
model, the floor every method should beat."""

import peftbench
from peftbench.method import freeze


class Base(peftbench.Method):
    name = "base"
    probe = True
    description = "nothing trained but the task head (classification: a linear probe; generation: untuned)"
    default_lr = 1e-3
    lr_reference = "linear-probe practice (the head alone)"

    def apply(self, model, knob_value=None, **options):
        self.options(**options)
        freeze(model)
        return model


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(Base())
