"""The training loop's knobs do what they say."""

import datasets
import torch

from conftest import make_model
from peftbench.data import Collator
from peftbench.train import TrainConfig, linear_schedule, train


def _losses(max_grad_norm, weight_decay=0.0):
    g = torch.Generator().manual_seed(0)
    ds = datasets.Dataset.from_dict({
        "input_ids": torch.randint(3, 1000, (16, 7), generator=g).tolist(),
        "attention_mask": [[1] * 7] * 16,
        "labels": [i % 2 for i in range(16)],
    })
    model = make_model("bert")
    cfg = TrainConfig(lr=1e-3, max_steps=4, batch_size=4, max_grad_norm=max_grad_norm, weight_decay=weight_decay)
    torch.manual_seed(0)
    return train(model, ds, Collator(0, regression=False), cfg, "cpu").losses


def test_max_grad_norm_zero_means_no_clipping():
    assert _losses(0) == _losses(1e12)  # never clipped either way
    assert _losses(0) != _losses(1e-4)  # a tiny norm changes every update


def test_linear_schedule_warms_up_then_decays_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_schedule(opt, warmup=2, total=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
