"""Schedules and parameter groups."""

from types import SimpleNamespace

import pytest
import torch

from lmtrain.args import TrainingArguments
from lmtrain.training.optim import build_scheduler, current_lr, parameter_groups, scheduler_names
from tests.conftest import tiny_gpt2


def lrs(name, warmup=2, total=10, **kwargs):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    args = SimpleNamespace(lr_scheduler_type=name, warmup_steps=warmup, lr_scheduler_kwargs=kwargs)
    sched = build_scheduler(opt, args, total)
    out = []
    for _ in range(total):
        out.append(current_lr(sched))
        opt.step()
        sched.step()
    return out


def test_linear_warmup_then_decay_to_zero():
    assert lrs("linear") == pytest.approx([0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])


def test_cosine_peaks_after_warmup_and_ends_near_zero():
    values = lrs("cosine", warmup=2, total=12)
    assert values[2] == pytest.approx(1.0) and values[-1] < 0.05
    assert all(a >= b for a, b in zip(values[2:], values[3:]))


def test_constant_schedules():
    assert lrs("constant") == [1.0] * 10
    assert lrs("constant_with_warmup")[:3] == [0.0, 0.5, 1.0]


def test_polynomial_power_one_is_linear_to_lr_end():
    values = lrs("polynomial", lr_end=0.2)
    assert values[2] == pytest.approx(1.0)
    assert values[2:] == pytest.approx([1.0 - 0.8 * i / 8 for i in range(8)])
    assert set(scheduler_names()) >= {"linear", "cosine", "constant", "constant_with_warmup", "polynomial"}


def test_warmup_comes_from_args_get_warmup_steps():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    args = TrainingArguments(output_dir="unused", lr_scheduler_type="linear")
    args.get_warmup_steps = lambda total: total // 4  # what the args object says wins over its fields
    sched = build_scheduler(opt, args, 8)
    seen = []
    for _ in range(3):
        seen.append(current_lr(sched))
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.0, 0.5, 1.0])


def test_no_weight_decay_on_biases_and_norms():
    groups = parameter_groups(tiny_gpt2(), 0.1)
    decay = {id(p) for p in groups[0]["params"]}
    model = tiny_gpt2()
    names_decay = [n for n, p in model.named_parameters() if p.ndim >= 2 and "ln" not in n]
    assert len(decay) == len(names_decay)
    assert groups[1]["weight_decay"] == 0.0
