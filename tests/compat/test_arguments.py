"""TrainingArguments accepts every field of the installed transformers, with its defaults; fields lmtrain
does not act on are named at start-up, never silently ignored."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from lmtrain import HfArgumentParser, TrainingArguments
from lmtrain.args import IMPLEMENTED_HF_FIELDS, no_effect_reason, undeclared_fields
from lmtrain.errors import ConfigError
from lmtrain.hf_fields import hf_training_fields
from lmtrain.training.plan import describe_run

# lmtrain's deliberate default differences (documented in the README)
DIFFERENT_DEFAULTS = {
    "optim": "adamw_torch is fused automatically on CUDA; transformers 5 picks adamw_torch_fused everywhere",
    "gradient_checkpointing": "False instead of None (same meaning)",
    "disable_tqdm": "False instead of None (lmtrain prints plain lines when not on a terminal)",
    "fsdp": "a bool: lmtrain has one FSDP mode (FSDP2 under torchrun)",
    "report_to": "transformers 4.x: None meant every installed integration; lmtrain: none, as transformers 5",
}
SAME = {False: "no"}  # include_num_input_tokens_seen: 4.x spells "no" as False


def _default(f: dataclasses.Field):
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    value = getattr(value, "value", value)
    return SAME.get(value, value) if f.name == "include_num_input_tokens_seen" else value


def test_every_transformers_field_is_accepted_with_its_default():
    import transformers

    theirs = {f.name: _default(f) for f in dataclasses.fields(transformers.TrainingArguments) if f.init}
    ours = {f.name: _default(f) for f in dataclasses.fields(TrainingArguments)}
    assert set(theirs) <= set(ours)
    assert set(hf_training_fields()) == set(theirs)  # read from the source, without importing it
    different = {k for k in theirs if theirs[k] != ours[k]}
    assert different <= set(DIFFERENT_DEFAULTS), different


def _sample(tp, default):
    """A non-default value of a field's type."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    first = args[0]
    if first is bool or default is False:
        return not bool(default)
    if first is int:
        return 7
    if first is float:
        return 0.25
    if first in (dict, typing.Dict) or typing.get_origin(first) is dict:
        return {"key": 1}
    if typing.get_origin(first) in (list, typing.List) or first is list:
        return ["x"]
    return "something"


def test_fields_without_effect_are_named_at_start_up(tmp_path):
    import torch

    from lmtrain.distributed import Runtime
    from lmtrain.training.plan import RunPlan

    warned = undeclared_fields(hf_training_fields())
    assert warned, "the installed transformers has fields lmtrain does not act on"
    values = {name: _sample(hf_training_fields()[name].type, hf_training_fields()[name].default) for name in warned}
    args = TrainingArguments(output_dir=str(tmp_path), **values)
    plan = RunPlan(
        batches_per_epoch=4,
        steps_per_epoch=4,
        total_steps=4,
        num_epochs=1,
        effective_batch=2,
        seq_len=8,
        logging_steps=1,
        eval_steps=None,
        save_steps=4,
        strategies={"logging": "steps", "eval": "no", "save": "steps"},
    )
    text = describe_run(plan, args, torch.nn.Linear(2, 2), Runtime(device=torch.device("cpu")), None, [])
    for name in warned:
        assert f"{name} ({no_effect_reason(name)})" in text
    assert "push_to_hub (no network" in text and "deepspeed (DeepSpeed is not used" in text


def test_implemented_and_warned_partition_the_transformers_fields():
    fields = set(hf_training_fields())
    warned = set(undeclared_fields(fields))
    assert IMPLEMENTED_HF_FIELDS | warned == fields and not IMPLEMENTED_HF_FIELDS & warned
    # what the README and the note say, for this transformers
    print(
        f"\ntransformers fields: {len(fields)} accepted, {len(IMPLEMENTED_HF_FIELDS)} implemented, {len(warned)} warned"
    )


def test_every_lmtrain_field_has_help_text():
    parser = HfArgumentParser(TrainingArguments)
    text = parser.format_help()
    for f in dataclasses.fields(TrainingArguments):
        assert f"--{f.name}" in text


def test_transformers_spellings_are_normalised(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        lr_scheduler_kwargs='{"min_lr_rate": 0.1}',
        include_num_input_tokens_seen=True,
        activation_checkpointing=True,
        torch_compile_mode="reduce-overhead",
        group_by_length=True,
        warmup_steps=0.1,
    )
    assert args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert args.include_num_input_tokens_seen == "all"
    assert args.gradient_checkpointing and args.torch_compile
    assert args.train_sampling_strategy == "group_by_length"
    assert args.get_warmup_steps(100) == 10  # a float below 1 is a fraction, as in transformers 5
    with pytest.raises(ConfigError, match="save_strategy='best' needs metric_for_best_model"):
        TrainingArguments(output_dir=str(tmp_path), save_strategy="best")
    with pytest.raises(ConfigError, match="train_sampling_strategy"):
        TrainingArguments(output_dir=str(tmp_path), train_sampling_strategy="shuffled")


def test_every_installed_scheduler_and_optimizer_name_is_accepted(tmp_path):
    from lmtrain.hf_fields import hf_enums

    for name in hf_enums()["SchedulerType"]:
        assert TrainingArguments(output_dir=str(tmp_path), lr_scheduler_type=name).lr_scheduler_type == name
    for name in hf_enums()["OptimizerNames"]:
        assert TrainingArguments(output_dir=str(tmp_path), optim=name).optim == name


def test_push_to_hub_is_named_not_fatal(tmp_path, capsys):
    """A script with push_to_hub=True trains, and its final trainer.push_to_hub() says what happened."""
    from lmtrain import Trainer
    from tests.conftest import tiny_gpt2

    trainer = Trainer(
        model=tiny_gpt2(),
        args=TrainingArguments(output_dir=str(tmp_path), push_to_hub=True, hub_model_id="me/model", use_cpu=True),
    )
    trainer.push_to_hub(commit_message="end of training")
    assert "not pushed (lmtrain runs without network)" in capsys.readouterr().err


def test_transformers_4_spellings_map_to_the_newer_fields(tmp_path):
    """Only on a transformers that still has them (4.x): per_gpu_*, no_cuda, adafactor, torchdynamo..."""
    fields = hf_training_fields()
    if "per_gpu_train_batch_size" not in fields:
        pytest.skip("this transformers no longer has the 4.x spellings")
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_gpu_train_batch_size=3,
        no_cuda=True,
        adafactor=True,
        include_inputs_for_metrics=True,
        torchdynamo="eager",
    )
    assert args.per_device_train_batch_size == 3 and args.use_cpu and args.optim == "adafactor"
    assert args.include_for_metrics == ["inputs"] and args.torch_compile and args.torch_compile_backend == "eager"
