"""Every lr_scheduler_type of the installed transformers gives its get_scheduler's learning rates."""

from types import SimpleNamespace

import pytest
import torch
from transformers.optimization import get_scheduler

from lmtrain.errors import ConfigError
from lmtrain.training.optim import (
    build_scheduler,
    current_lr,
    is_plateau,
    scheduler_kwargs,
    scheduler_names,
    warmup_steps,
)

METRIC_DRIVEN = {"reduce_lr_on_plateau", "greedy"}
# Schedules that cannot be built without some kwargs.
REQUIRED = {
    "cosine_with_min_lr": {"min_lr_rate": 0.1},
    "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
    "warmup_stable_decay": {"num_decay_steps": 6},
}
EXTRA = [
    ("cosine", {"num_cycles": 1.0}),
    ("cosine_with_restarts", {"num_cycles": 3}),
    ("polynomial", {"power": 2.0, "lr_end": 1e-3}),
    ("inverse_sqrt", {"timescale": 4}),
    ("cosine_with_min_lr", {"min_lr": 0.01}),
    ("cosine_with_min_lr", {"min_lr_rate": 0.25}),
    ("cosine_warmup_with_min_lr", {"min_lr": 0.02}),
    ("warmup_stable_decay", {"num_decay_steps": 5, "decay_type": "cosine", "min_lr_ratio": 0.1}),
    ("warmup_stable_decay", {"num_decay_steps": 4, "num_stable_steps": 8, "decay_type": "1-sqrt"}),
]
TOTAL, WARMUP, LR = 20, 3, 0.1


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=LR)


def _sequence(scheduler, optimizer, steps=TOTAL + 2):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def _args(name, kwargs=None, warmup=WARMUP):
    return SimpleNamespace(lr_scheduler_type=name, lr_scheduler_kwargs=kwargs, warmup_steps=warmup)


def _pair(name, kwargs):
    ours_opt, theirs_opt = _optimizer(), _optimizer()
    ours = build_scheduler(ours_opt, _args(name, kwargs), TOTAL)
    theirs = get_scheduler(
        name,
        theirs_opt,
        num_warmup_steps=WARMUP,
        num_training_steps=TOTAL,
        scheduler_specific_kwargs=dict(kwargs or {}),
    )
    return (ours, ours_opt), (theirs, theirs_opt)


CASES = [(n, REQUIRED.get(n)) for n in scheduler_names() if n not in METRIC_DRIVEN]
CASES += [(n, kw) for n, kw in EXTRA if n in scheduler_names()]


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{kw}" for n, kw in CASES])
def test_learning_rates_equal_transformers(name, kwargs):
    (ours, ours_opt), (theirs, theirs_opt) = _pair(name, kwargs)
    assert type(ours) is type(theirs)
    mine, expected = _sequence(ours, ours_opt), _sequence(theirs, theirs_opt)
    assert mine == pytest.approx(expected, abs=1e-12, rel=0)
    assert len(set(mine)) > 1 or name == "constant"  # the schedule really moves


def test_warmup_is_applied():
    (ours, opt), _ = _pair("linear", None)
    values = _sequence(ours, opt)
    assert values[: WARMUP + 1] == pytest.approx([0.0, LR / 3, 2 * LR / 3, LR])


def test_lr_scheduler_kwargs_as_json_string():
    assert scheduler_kwargs(_args("cosine_with_restarts", '{"num_cycles": "3"}')) == {"num_cycles": 3}
    opt_a, opt_b = _optimizer(), _optimizer()
    a = build_scheduler(opt_a, _args("cosine_with_restarts", '{"num_cycles": 3}'), TOTAL)
    b = build_scheduler(opt_b, _args("cosine_with_restarts", {"num_cycles": 3}), TOTAL)
    assert _sequence(a, opt_a) == _sequence(b, opt_b)


def test_warmup_steps_follow_the_installed_transformers(tmp_path):
    from transformers import TrainingArguments

    for given in (7, 0.25, 0):
        try:
            hf = TrainingArguments(output_dir=str(tmp_path), warmup_steps=given, report_to="none", use_cpu=True)
        except ValueError:  # transformers 4.x: warmup_steps must be an int (a ratio is warmup_ratio there)
            continue
        assert warmup_steps(SimpleNamespace(warmup_steps=given), 40) == hf.get_warmup_steps(40)
        assert warmup_steps(hf, 40) == hf.get_warmup_steps(40)
    assert warmup_steps(SimpleNamespace(warmup_steps=0, warmup_ratio=0.1), 40) == 4


@pytest.mark.parametrize(
    "name,kwargs",
    [("linear", None), ("cosine_with_min_lr", {"min_lr_rate": 0.1}), ("warmup_stable_decay", {"num_decay_steps": 6})],
)
def test_state_dict_round_trips_through_scheduler_pt(tmp_path, name, kwargs):
    if name not in scheduler_names():
        pytest.skip(f"{name} is not in this transformers")
    opt = _optimizer()
    sched = build_scheduler(opt, _args(name, kwargs), TOTAL)
    _sequence(sched, opt, steps=7)
    torch.save(sched.state_dict(), tmp_path / "scheduler.pt")
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    expected = _sequence(sched, opt, steps=10)

    resumed_opt = _optimizer()
    resumed = build_scheduler(resumed_opt, _args(name, kwargs), TOTAL)
    resumed_opt.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    resumed.load_state_dict(torch.load(tmp_path / "scheduler.pt", weights_only=True))
    assert resumed.last_epoch == 7
    assert _sequence(resumed, resumed_opt, steps=10) == expected


def test_reduce_lr_on_plateau_steps_on_the_metric():
    kwargs = {"patience": 0, "factor": 0.5}
    (ours, ours_opt), (theirs, theirs_opt) = _pair("reduce_lr_on_plateau", kwargs)
    assert is_plateau(ours) and not is_plateau(build_scheduler(_optimizer(), _args("linear"), TOTAL))
    for metric in (1.0, 1.0, 0.5, 0.7, 0.7):
        ours.step(metric)
        theirs.step(metric)
        assert current_lr(ours) == theirs_opt.param_groups[0]["lr"]
    assert current_lr(ours) == pytest.approx(LR / 8)  # halved after each of the three non-improving evals


def test_greedy_is_metric_driven_where_it_exists():
    if "greedy" not in scheduler_names():
        pytest.skip("no greedy schedule in this transformers")
    opt = _optimizer()
    sched = build_scheduler(opt, _args("greedy"), TOTAL)
    assert is_plateau(sched) and current_lr(sched) == LR


def test_unknown_type_and_bad_kwargs_are_config_errors():
    with pytest.raises(ConfigError, match="cosine_with_restarts"):
        build_scheduler(_optimizer(), _args("cosinus"), TOTAL)
    with pytest.raises(ConfigError, match="lr_scheduler_kwargs"):
        build_scheduler(_optimizer(), _args("linear", {"num_cycles": 2}), TOTAL)
    with pytest.raises(ConfigError, match="JSON"):
        build_scheduler(_optimizer(), _args("cosine", "{num_cycles: 2"), TOTAL)
