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


def test_a_last_step_that_breaks_the_weights_is_diverged():
    """Each loss is read before its update, so the last update is checked on the weights: an infinite
    gradient there (clipping turns it into NaN weights) is a diverged run, not an ok one."""
    import pytest

    from peftbench.train import Diverged

    g = torch.Generator().manual_seed(0)
    ds = datasets.Dataset.from_dict({"input_ids": torch.randint(3, 1000, (16, 7), generator=g).tolist(),
                                     "attention_mask": [[1] * 7] * 16, "labels": [i % 2 for i in range(16)]})
    model = make_model("bert")
    weight = next(p for p in model.parameters() if p.requires_grad)
    calls = []
    weight.register_hook(lambda grad: grad * float("inf") if len(calls.append(1) or calls) == 4 else grad)
    with pytest.raises(Diverged, match="non-finite in the last of 4 steps"):
        train(model, ds, Collator(0, regression=False), TrainConfig(lr=1e-3, max_steps=4, batch_size=4), "cpu")


def test_a_checkpoint_saved_in_bf16_trains_in_fp32(tmp_path, minilm_tokenizer):
    """transformers loads a config's bf16 as bf16; a run's weights and optimizer state are fp32
    (its precision is autocast over them), as its record says."""
    from conftest import make_model as tiny
    from peftbench.models import load_model
    from peftbench.plugins import get_task

    tiny("bert").to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = load_model(str(tmp_path / "bf16"), get_task("sst2"), minilm_tokenizer, "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_a_ddp_epoch_has_whole_global_batches_only():
    from peftbench.train import total_steps

    cfg = TrainConfig(lr=1e-3, batch_size=4, epochs=2)
    assert total_steps(10, cfg) == 6 and total_steps(10, cfg, drop_last=True) == 4  # 3 vs 2 batches an epoch
    assert total_steps(3, cfg, drop_last=True) == 2  # fewer examples than a batch: the one partial batch


def test_prediction_runs_each_batch_inside_the_guard():
    """With other jobs on the machine, evaluation waits batch by batch while another job times latency."""
    import contextlib

    from peftbench.train import predict

    g = torch.Generator().manual_seed(0)
    ds = datasets.Dataset.from_dict({"input_ids": torch.randint(3, 1000, (10, 7), generator=g).tolist(),
                                     "attention_mask": [[1] * 7] * 10, "labels": [i % 2 for i in range(10)]})
    model = make_model("bert")
    inside, forwards = [], []
    model.register_forward_pre_hook(lambda module, args: forwards.append(bool(inside)))

    @contextlib.contextmanager
    def guard():
        inside.append(1)
        yield
        inside.pop()

    pred, gold = predict(model, ds, Collator(0, regression=False), "cpu", batch_size=4, guard=guard)
    assert forwards == [True, True, True] and len(pred) == len(gold) == 10
