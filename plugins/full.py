"""Full fine-tuning: every parameter of the model is trained."""

import peftbench


class Full(peftbench.Method):
    name = "full"
    description = "full fine-tuning (every parameter)"
    default_lr = 5e-5
    lr_reference = "Devlin et al. 2019 (BERT) fine-tuning grid {2,3,5}e-5"

    def apply(self, model, knob_value=None, **options):
        self.options(**options)
        for p in model.parameters():
            p.requires_grad_(True)
        return model


@peftbench.hookimpl
def peftbench_register_methods(register):
    register(Full())
