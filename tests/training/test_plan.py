"""The run plan: steps, epochs and intervals from the arguments; what is due when; the start-up summary."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lmtrain import TrainingArguments
from lmtrain.distributed import Runtime
from lmtrain.errors import ConfigError
from lmtrain.training.plan import RunPlan, describe_run, ineffective_settings, set_seed

CPU = Runtime(device=torch.device("cpu"))


def args_for(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to="none")
    base.update(kw)
    return TrainingArguments(**base)


def blocks(n: int, length: int = 12):
    return [{"input_ids": list(range(length)), "labels": list(range(length))} for _ in range(n)]


class Unsized:
    """A loader without a length, as a DataLoader over an IterableDataset."""

    def __iter__(self):
        return iter(())

    def __len__(self):
        raise TypeError("no len")


# ---- RunPlan.make ---------------------------------------------------------------------------------


def test_epochs_give_steps_rounded_up_per_epoch_and_overall(tmp_path):
    # 10 micro-batches, accumulation 3: steps of 3, 3, 3 and a tail of 1 -> 4 steps per epoch
    args = args_for(tmp_path, gradient_accumulation_steps=3, per_device_train_batch_size=2, num_train_epochs=2.5)
    plan = RunPlan.make(args, loader=list(range(10)), dataset=blocks(20), world_size=3)
    assert plan.batches_per_epoch == 10
    assert plan.steps_per_epoch == 4
    assert plan.total_steps == 10  # ceil(2.5 * 4)
    assert plan.num_epochs == 3  # epochs 1 and 2 whole, the third started
    assert plan.effective_batch == 2 * 3 * 3  # micro-batch x accumulation x processes
    assert plan.seq_len == 12
    assert plan.tokens_per_step == 18 * 12


def test_max_steps_overrides_epochs(tmp_path):
    args = args_for(tmp_path, gradient_accumulation_steps=2, num_train_epochs=100, max_steps=7)
    plan = RunPlan.make(args, loader=list(range(8)), dataset=blocks(8))
    assert plan.steps_per_epoch == 4
    assert plan.total_steps == 7
    assert plan.num_epochs == 2


def test_fewer_batches_than_accumulation_still_make_one_step(tmp_path):
    args = args_for(tmp_path, gradient_accumulation_steps=8, num_train_epochs=3)
    plan = RunPlan.make(args, loader=list(range(3)), dataset=blocks(3))
    assert (plan.steps_per_epoch, plan.total_steps, plan.num_epochs) == (1, 3, 3)


def test_unsized_loader_needs_max_steps(tmp_path):
    with pytest.raises(ConfigError, match="set max_steps"):
        RunPlan.make(args_for(tmp_path), loader=Unsized(), dataset=None)
    args = args_for(tmp_path, max_steps=5, gradient_accumulation_steps=2)
    plan = RunPlan.make(args, loader=Unsized(), dataset=None)
    # without a length one "epoch" is the whole run
    assert (plan.steps_per_epoch, plan.total_steps, plan.num_epochs) == (5, 5, 1)
    assert plan.batches_per_epoch == 10
    assert plan.seq_len is None and plan.tokens_per_step is None


def test_micro_batch_and_accumulation_override_the_arguments(tmp_path):
    """auto_find_batch_size's halving re-plans with its own sizes; the user's args stay as given."""
    args = args_for(tmp_path, per_device_train_batch_size=8, gradient_accumulation_steps=1, num_train_epochs=1)
    plan = RunPlan.make(args, loader=list(range(12)), dataset=blocks(4), world_size=2, micro_batch=4, grad_accum=2)
    assert (plan.micro_batch, plan.grad_accum) == (4, 2)
    assert plan.effective_batch == 4 * 2 * 2
    assert plan.steps_per_epoch == 6
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 1)


@pytest.mark.parametrize("dataset", [[], [{"text": "no ids"}], None, [{"input_ids": None}]])
def test_seq_len_is_none_when_unknown(tmp_path, dataset):
    plan = RunPlan.make(args_for(tmp_path, max_steps=2), loader=list(range(4)), dataset=dataset)
    assert plan.seq_len is None and plan.tokens_per_step is None


@pytest.mark.parametrize(
    "value, total, expected",
    [
        (5, 40, 5),  # an integer is a step count
        (5.0, 40, 5),
        (0.25, 40, 10),  # below 1: a fraction of the total steps
        (0.1, 25, 3),  # rounded up: ceil(2.5)
        (0.001, 40, 1),  # never below one step
    ],
)
def test_intervals_follow_transformers_fraction_rule(tmp_path, value, total, expected):
    args = args_for(
        tmp_path, max_steps=total, logging_steps=value, save_steps=value, eval_strategy="steps", eval_steps=value
    )
    plan = RunPlan.make(args, loader=list(range(total)), dataset=blocks(1))
    assert plan.logging_steps == plan.save_steps == plan.eval_steps == expected


def test_eval_steps_unset_with_step_evaluation_uses_logging_steps(tmp_path):
    args = args_for(tmp_path, max_steps=20, logging_steps=4, eval_strategy="steps")
    plan = RunPlan.make(args, loader=list(range(20)), dataset=blocks(1))
    assert plan.eval_steps == 4


# ---- due ------------------------------------------------------------------------------------------


def test_due_by_steps_epochs_and_never(tmp_path):
    args = args_for(tmp_path, max_steps=12, logging_steps=3, eval_strategy="epoch", save_strategy="no")
    plan = RunPlan.make(args, loader=list(range(4)), dataset=blocks(1))
    logged = [s for s in range(1, 13) if plan.due("logging", s, epoch_end=s % 4 == 0)]
    evaluated = [s for s in range(1, 13) if plan.due("eval", s, epoch_end=s % 4 == 0)]
    saved = [s for s in range(1, 13) if plan.due("save", s, epoch_end=True)]
    assert logged == [3, 6, 9, 12]
    assert evaluated == [4, 8, 12]
    assert saved == []


def test_due_by_steps_without_an_interval_is_never():
    plan = RunPlan(
        batches_per_epoch=4,
        steps_per_epoch=4,
        total_steps=4,
        num_epochs=1,
        effective_batch=1,
        seq_len=None,
        logging_steps=1,
        eval_steps=None,
        save_steps=None,
        strategies={"logging": "steps", "eval": "steps", "save": "steps"},
    )
    assert [plan.due("logging", s, False) for s in (1, 2)] == [True, True]
    assert not any(plan.due(kind, s, True) for kind in ("eval", "save") for s in range(1, 5))


# ---- set_seed -------------------------------------------------------------------------------------


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_set_seed_seeds_python_numpy_and_torch():
    set_seed(1234)
    ours = _draws()
    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)
    assert ours == _draws()
    set_seed(1235)
    assert _draws() != ours


def test_set_seed_takes_seeds_beyond_numpys_range():
    seed = 2**32 + 7  # numpy accepts only seeds below 2**32; it gets the seed modulo 2**32
    set_seed(seed)
    ours = _draws()
    np.random.seed(7)
    assert ours[1] == float(np.random.rand())
    torch.manual_seed(seed)
    assert ours[2] == float(torch.rand(()))


def test_set_seed_deterministic_turns_on_deterministic_algorithms(monkeypatch):
    calls = []
    # recorded, not applied: the real switch is global to the process (and slow to turn on)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode, **kw: calls.append(mode))
    set_seed(0)
    assert calls == []
    set_seed(0, deterministic=True)
    assert calls == [True]


# ---- ineffective settings and the summary ---------------------------------------------------------


def _plan(args, batches=10):
    return RunPlan.make(args, loader=list(range(batches)), dataset=blocks(4, length=16))


def test_defaults_have_no_ineffective_settings(tmp_path):
    args = args_for(tmp_path)
    assert ineffective_settings(args, _plan(args), CPU) == []


def test_settings_overridden_by_others_are_named(tmp_path):
    args = args_for(
        tmp_path,
        max_steps=5,
        num_train_epochs=2,
        warmup_steps=3,
        warmup_ratio=0.1,
        eval_steps=7,
        save_strategy="no",
        save_total_limit=2,
        save_steps=9,
        logging_strategy="epoch",
        logging_steps=3,
        dataloader_prefetch_factor=4,
        tf32=True,
        do_eval=True,
    )
    notes = ineffective_settings(args, _plan(args), CPU)
    assert set(notes) == {
        "num_train_epochs (max_steps is set)",
        "warmup_ratio (warmup_steps is set)",
        "eval_steps (eval_strategy is 'no')",
        "save_steps (save_strategy is 'no')",
        "save_total_limit (save_strategy is 'no')",
        "logging_steps (logging_strategy is 'epoch')",
        "dataloader_prefetch_factor (dataloader_num_workers is 0)",
        "tf32 (not on CUDA)",
        "do_eval (read by scripts, not by the Trainer)",
    }


def test_settings_that_take_effect_are_not_named(tmp_path):
    # the same fields, each where it does change something
    args = args_for(
        tmp_path,
        num_train_epochs=2,
        warmup_ratio=0.1,
        eval_strategy="steps",
        eval_steps=7,
        save_total_limit=2,
        save_steps=9,
        logging_steps=3,
        dataloader_num_workers=1,
        dataloader_prefetch_factor=4,
    )
    assert ineffective_settings(args, _plan(args), CPU) == []
    cuda = Runtime(device=torch.device("cuda", 0))
    args = args_for(tmp_path, tf32=False, dataloader_pin_memory=False)
    assert ineffective_settings(args, _plan(args), cuda) == []
    assert ineffective_settings(args, _plan(args), CPU) == ["dataloader_pin_memory (not on CUDA)", "tf32 (not on CUDA)"]


def test_describe_run_states_batch_tokens_steps_and_parameters(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(100, 100), torch.nn.Linear(100, 50))  # 10,100 + 5,050
    model[1].weight.requires_grad_(False)  # 5,000 frozen
    args = args_for(
        tmp_path,
        per_device_train_batch_size=5,
        gradient_accumulation_steps=4,
        num_train_epochs=2,
        warmup_ratio=0.1,
        learning_rate=3e-4,
        lr_scheduler_type="cosine",
    )
    rt = Runtime(device=torch.device("cpu"), amp_dtype=torch.bfloat16, world_size=3, notes=["a runtime note"])
    plan = RunPlan.make(args, loader=list(range(50)), dataset=blocks(2, length=100), world_size=3)
    text = describe_run(plan, args, model, rt, resume="out/checkpoint-7", ignored_kwargs=["tokenizer_extra"])
    lines = text.splitlines()
    assert lines[0] == "lmtrain: Sequential with 0.02M parameters (0.01M trainable) on cpu x3 processes, bf16"
    # 5 x 4 x 3 = 60 sequences of 100 tokens
    assert (
        lines[1] == "  effective batch 60 = 5 per device x 4 accumulation x 3 process(es); "
        "6,000 tokens per optimizer step"
    )
    # 50 batches / 4 = 13 steps per epoch, 26 in all, warmup ceil(2.6) = 3
    assert lines[2] == (
        "  26 optimizer steps (13 per epoch, 2 epoch(s)), warmup 3 steps, cosine schedule, peak lr 0.0003"
    )
    assert lines[3] == "  resuming from out/checkpoint-7"
    assert lines[4] == "  set but without effect here: tokenizer_extra (not used by lmtrain); a runtime note"
    assert len(lines) == 5


def test_describe_run_without_resume_notes_or_known_length(tmp_path):
    args = args_for(tmp_path, max_steps=4)
    plan = RunPlan.make(args, loader=list(range(4)), dataset=None)
    text = describe_run(plan, args, torch.nn.Linear(2, 2), CPU, None, [])
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("on cpu, float32")
    assert "tokens per optimizer step" not in lines[1]
    assert lines[2].startswith("  4 optimizer steps (4 per epoch, 1 epoch(s)), warmup 0 steps")
