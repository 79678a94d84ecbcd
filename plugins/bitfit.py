"""BitFit (Ben Zaken et al. 2022): train only the bias terms of the base model."""

import peftbench
from peftbench.errors import UnsupportedModel
from peftbench.method import freeze, head_parameter_names


class BitFit(peftbench.Method):
    name = "bitfit"
    description = "bias terms only"
    default_lr = 1e-3
    lr_reference = "Ben Zaken et al. 2022 (BitFit): 1e-4..1e-3 on GLUE"

    def apply(self, model, knob_value=None, **options):
        self.options(**options)
        freeze(model)
        head = head_parameter_names(model)
        biases = [p for n, p in model.named_parameters() if n not in head and n.endswith(".bias")]
        if not biases:
            raise UnsupportedModel(f"bitfit: {type(model).__name__} has no bias terms to train")
        for p in biases:
            p.requires_grad_(True)
        return model


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(BitFit())
