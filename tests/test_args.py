"""TrainingArguments: transformers defaults, old names, contradictions rejected in one sentence."""

import pytest

from lmtrain import TrainingArguments
from lmtrain.errors import ConfigError


def test_defaults_match_transformers():
    a = TrainingArguments(output_dir="o")
    assert (a.learning_rate, a.num_train_epochs, a.max_steps, a.per_device_train_batch_size) == (5e-5, 3.0, -1, 8)
    assert (a.lr_scheduler_type, a.eval_strategy, a.save_strategy, a.seed) == ("linear", "no", "steps", 42)
    assert a.report_to == [] and a.data_seed == 42


def test_old_evaluation_strategy_name_is_accepted():
    a = TrainingArguments(output_dir="o", evaluation_strategy="steps", eval_steps=10)
    assert a.eval_strategy == "steps"


def test_eval_steps_default_to_logging_steps():
    assert TrainingArguments(output_dir="o", eval_strategy="steps", logging_steps=7).eval_steps == 7


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bf16=True, fp16=True), "bf16 and fp16"),
        (dict(load_best_model_at_end=True), "needs evaluation"),
        (dict(load_best_model_at_end=True, eval_strategy="epoch", save_strategy="steps"), "match eval_strategy"),
        (dict(load_best_model_at_end=True, eval_strategy="steps", eval_steps=3, save_steps=10), "multiple of"),
        (dict(lr_scheduler_type="triangle"), "lr_scheduler_type='triangle' is not one of"),
        (dict(per_device_train_batch_size=0), "at least 1"),
        (dict(report_to="neptune"), "unknown targets"),
        (dict(max_steps=-1, num_train_epochs=0), "Nothing to train"),
    ],
)
def test_contradictions_fail_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        TrainingArguments(output_dir="o", **kwargs)
    assert "\n" not in str(info.value)


def test_report_to_forms():
    assert TrainingArguments(output_dir="o", report_to=["none"]).report_to == []
    assert TrainingArguments(output_dir="o", report_to="tensorboard").report_to == ["tensorboard"]


def test_warmup_ratio_and_steps():
    assert TrainingArguments(output_dir="o", warmup_ratio=0.1).get_warmup_steps(95) == 10
    assert TrainingArguments(output_dir="o", warmup_steps=3, warmup_ratio=0.5).get_warmup_steps(100) == 3
