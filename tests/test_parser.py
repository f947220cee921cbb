"""HfArgumentParser: the transformers flag conventions, on lmtrain's TrainingArguments and a user's dataclass."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Dict, List, Literal, Optional

import pytest

from lmtrain.args import TrainingArguments
from lmtrain.errors import ConfigError
from lmtrain.parser import HfArgumentParser


@dataclass
class ModelArguments:
    """As in transformers' examples/pytorch/language-modeling/run_clm.py."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "The model checkpoint for weights initialization."}
    )
    model_type: Optional[str] = field(default=None, metadata={"help": "Model type if training from scratch."})
    config_name: Optional[str] = field(default=None, metadata={"help": "Pretrained config name or path"})
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "Pretrained tokenizer name or path"})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where to store downloaded models"})
    use_fast_tokenizer: bool = field(default=True, metadata={"help": "Whether to use a fast tokenizer."})
    model_revision: str = field(default="main", metadata={"help": "The model version to use (100% exact)."})
    torch_dtype: Optional[Literal["auto", "bfloat16", "float16", "float32"]] = field(
        default=None, metadata={"help": "Override the default torch.dtype."}
    )


@dataclass
class DataTrainingArguments:
    dataset_name: Optional[str] = None
    """Name of a dataset to train on."""
    block_size: Optional[int] = None
    """Sequence length after tokenization."""
    validation_split_percentage: Optional[int] = 5
    """Percent of the train set used as validation (when there is no validation split)."""


class Color(Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Misc:
    required_name: str
    """A field without a default."""
    color: Color = Color.RED
    tags: List[str] = field(default_factory=lambda: ["a"])
    sizes: list[int] = field(default_factory=list)
    options: Optional[Dict[str, int]] = None
    strict: Optional[bool] = None


@dataclass
class Child(DataTrainingArguments):
    extra: int = 3
    """Only the child has this one."""


def parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))


RUN_CLM = (
    "--model_name_or_path gpt2 --dataset_name wikitext --block_size 128 --per_device_train_batch_size 4 "
    "--gradient_accumulation_steps 2 --learning_rate 3e-4 --num_train_epochs 2 --do_train --do_eval "
    "--output_dir /tmp/out --overwrite_output_dir --eval_strategy steps --eval_steps 50 --save_total_limit 2 "
    "--lr_scheduler_type cosine --warmup-ratio 0.1 --seed 7"
).split()


def test_typical_run_clm_command_line():
    model_args, data_args, training_args = parser().parse_args_into_dataclasses(RUN_CLM, look_for_args_file=False)
    assert model_args.model_name_or_path == "gpt2" and model_args.use_fast_tokenizer is True
    assert model_args.model_revision == "main" and model_args.torch_dtype is None
    assert data_args.dataset_name == "wikitext" and data_args.block_size == 128
    assert data_args.validation_split_percentage == 5
    t = training_args
    assert isinstance(t, TrainingArguments)
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (4, 2)
    assert t.learning_rate == pytest.approx(3e-4) and t.num_train_epochs == 2.0
    assert t.do_train and t.do_eval and t.overwrite_output_dir and not t.do_predict
    assert t.eval_strategy == "steps" and t.eval_steps == 50 and t.lr_scheduler_type == "cosine"
    assert t.warmup_ratio == pytest.approx(0.1) and t.seed == 7 and t.save_total_limit == 2
    assert t.output_dir == "/tmp/out" and t.report_to == []


def test_bool_flags():
    p = parser()
    m, _, t = p.parse_args_into_dataclasses(["--no_use_fast_tokenizer", "--bf16"], look_for_args_file=False)
    assert m.use_fast_tokenizer is False and t.bf16 is True and t.fp16 is False
    m, _, t = p.parse_args_into_dataclasses(["--use-fast-tokenizer", "no", "--bf16", "false"], look_for_args_file=False)
    assert m.use_fast_tokenizer is False and t.bf16 is False
    _, _, t = p.parse_args_into_dataclasses(["--no-save-safetensors", "--tf32", "1"], look_for_args_file=False)
    assert t.save_safetensors is False and t.tf32 is True  # tf32 is Optional[bool]
    _, _, t = p.parse_args_into_dataclasses([], look_for_args_file=False)
    assert t.save_safetensors is True and t.tf32 is None


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], []),
        (["--report_to", "none"], []),
        (["--report_to", "tensorboard", "wandb"], ["tensorboard", "wandb"]),
        (["--report_to", "tensorboard"], ["tensorboard"]),
    ],
)
def test_report_to(argv, expected):
    (t,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(argv, look_for_args_file=False)
    assert t.report_to == expected


def test_enum_fields_and_old_evaluation_strategy_name():
    p = HfArgumentParser(TrainingArguments)
    (t,) = p.parse_args_into_dataclasses(
        ["--evaluation_strategy", "steps", "--eval_steps", "5", "--save_strategy", "epoch", "--optim", "sgd"],
        look_for_args_file=False,
    )
    assert (t.eval_strategy, t.save_strategy, t.optim) == ("steps", "epoch", "sgd")
    with pytest.raises(SystemExit):
        p.parse_args_into_dataclasses(["--eval_strategy", "sometimes"], look_for_args_file=False)


def test_literal_choices(capsys):
    p = parser()
    m, _, _ = p.parse_args_into_dataclasses(["--torch_dtype", "bfloat16"], look_for_args_file=False)
    assert m.torch_dtype == "bfloat16"
    with pytest.raises(SystemExit) as e:
        p.parse_args_into_dataclasses(["--torch_dtype", "bf16"], look_for_args_file=False)
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_unknown_argument_suggests_close_name(capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args_into_dataclasses(["--learning_rat", "1e-3"], look_for_args_file=False)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("error: unrecognized argument --learning_rat; did you mean --learning_rate?")


def test_unknown_argument_without_close_name(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args_into_dataclasses(["--zzqx"], look_for_args_file=False)
    assert "unrecognized argument --zzqx; run with --help" in capsys.readouterr().err


def test_return_remaining_strings():
    *objs, rest = parser().parse_args_into_dataclasses(
        ["--seed", "3", "--not_ours", "x"], return_remaining_strings=True, look_for_args_file=False
    )
    assert len(objs) == 3 and objs[2].seed == 3 and rest == ["--not_ours", "x"]


def test_extra_argparse_options_come_back_as_namespace():
    p = HfArgumentParser(DataTrainingArguments)
    p.add_argument("--verbose", action="store_true")
    data_args, ns = p.parse_args_into_dataclasses(["--verbose", "--block_size", "8"], look_for_args_file=False)
    assert data_args.block_size == 8 and isinstance(ns, argparse.Namespace) and ns.verbose


def test_args_file(tmp_path):
    args_file = tmp_path / "run.args"
    args_file.write_text("--seed 5 --learning_rate 0.1\n")
    (t,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        ["--seed", "9"], args_filename=str(args_file)
    )
    assert t.seed == 9 and t.learning_rate == pytest.approx(0.1)  # the command line wins over the file


def test_required_list_enum_dict_fields(capsys):
    p = HfArgumentParser(Misc)
    (m,) = p.parse_args_into_dataclasses(
        ["--required_name", "x", "--color", "blue", "--sizes", "1", "2", "--options", '{"a": 1}', "--strict"],
        look_for_args_file=False,
    )
    assert m.required_name == "x" and m.color == "blue"  # enum values come back as their value, as in transformers
    assert m.tags == ["a"] and m.sizes == [1, 2] and m.options == {"a": 1} and m.strict is True
    with pytest.raises(SystemExit):
        p.parse_args_into_dataclasses([], look_for_args_file=False)
    assert "required" in capsys.readouterr().err


def test_parse_dict_json_yaml(tmp_path):
    p = parser()
    config = {"model_name_or_path": "gpt2", "block_size": 64, "learning_rate": 1e-3, "report_to": ["tensorboard"]}
    m, d, t = p.parse_dict(config)
    assert m.model_name_or_path == "gpt2" and d.block_size == 64 and t.learning_rate == 1e-3
    assert t.report_to == ["tensorboard"]
    (tmp_path / "c.json").write_text(json.dumps(config))
    assert p.parse_json_file(tmp_path / "c.json")[1].block_size == 64
    (tmp_path / "c.yaml").write_text("model_name_or_path: gpt2\nblock_size: 32\nbf16: true\n")
    m, d, t = p.parse_yaml_file(str(tmp_path / "c.yaml"))
    assert d.block_size == 32 and t.bf16 is True
    (tmp_path / "bad.yaml").write_text("learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rat.*did you mean learning_rate"):
        p.parse_yaml_file(tmp_path / "bad.yaml")
    assert p.parse_yaml_file(tmp_path / "bad.yaml", allow_extra_keys=True)[2].learning_rate == 5e-5
    with pytest.raises(ValueError, match="blok_size"):
        p.parse_dict({"blok_size": 3})
    with pytest.raises(ConfigError, match="required_name"):
        HfArgumentParser(Misc).parse_dict({})


def test_parse_args_with_defaults_command_line_wins():
    p = parser()
    defaults = {"learning_rate": "1e-4", "seed": 1, "bf16": True, "report_to": ["wandb"], "block_size": 16}
    _, d, t = p.parse_args_with_defaults(["--seed", "2"], defaults)
    assert t.learning_rate == pytest.approx(1e-4) and t.seed == 2 and t.bf16 and t.report_to == ["wandb"]
    assert d.block_size == 16
    _, _, t = p.parse_args_with_defaults(["--no_save_safetensors"], {"save_safetensors": True})
    assert t.save_safetensors is False
    # The parser's own defaults are back afterwards.
    _, d, t = p.parse_args_into_dataclasses([], look_for_args_file=False)
    assert t.seed == 42 and d.block_size is None and not t.bf16
    with pytest.raises(ConfigError, match="did you mean seed"):
        p.parse_args_with_defaults([], {"sed": 1})
    (m,) = HfArgumentParser(Misc).parse_args_with_defaults([], {"required_name": "from-config"})
    assert m.required_name == "from-config"


def test_help_shows_docstrings_metadata_and_defaults():
    text = " ".join(parser().format_help().split())
    assert "Peak learning rate of AdamW. (default: 5e-05)" in text  # docstring under a TrainingArguments field
    assert "The model checkpoint for weights initialization." in text  # metadata help
    assert "(100% exact)" in text  # a lone % does not break argparse formatting
    assert "--no_use_fast_tokenizer" in text and "--per-device-train-batch-size" in text
    child = " ".join(HfArgumentParser(Child).format_help().split())
    assert "Only the child has this one." in child and "Name of a dataset to train on." in child


def test_local_dataclass_without_source_is_tolerated():
    ns: dict = {}
    exec("from dataclasses import dataclass\n@dataclass\nclass Tmp:\n    x: int = 1\n    'doc of x'\n", ns)
    (tmp,) = HfArgumentParser(ns["Tmp"]).parse_args_into_dataclasses(["--x", "4"], look_for_args_file=False)
    assert tmp.x == 4
