"""lmtrain.hf_fields: transformers' TrainingArguments fields, read from its source without importing it.

Compared here with what the installed transformers declares (dataclasses.fields of its TrainingArguments).
"""

from __future__ import annotations

import dataclasses
import types
import typing

import pytest

from lmtrain.hf_fields import hf_enums, hf_training_fields, hf_version

transformers = pytest.importorskip("transformers")

# (none left: a default bound to a class-level name and help next to non-literal metadata are read too)
NOT_LITERAL_DEFAULTS: set = set()
NOT_LITERAL_HELP: set = set()


def theirs() -> typing.List[dataclasses.Field]:
    return [f for f in dataclasses.fields(transformers.TrainingArguments) if f.init]


def declared_default(f: dataclasses.Field):
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return getattr(value, "value", value)  # an enum member: its string


def test_names_in_declaration_order():
    assert list(hf_training_fields()) == [f.name for f in theirs()]
    assert all(field.name == name for name, field in hf_training_fields().items())


def test_defaults_are_transformers_own():
    ours = hf_training_fields()
    wrong = {
        f.name: (ours[f.name].default, declared_default(f))
        for f in theirs()
        if f.name not in NOT_LITERAL_DEFAULTS and ours[f.name].default != declared_default(f)
    }
    assert wrong == {}
    # the kinds of default the reader evaluates: literals, enum members, default_factory
    assert ours["learning_rate"].default == 5e-05 and ours["eval_strategy"].default == "no"
    assert ours["lr_scheduler_type"].default == "linear" and ours["logging_strategy"].default == "steps"


def test_a_default_bound_to_a_name_is_transformers_own():
    (optim,) = [f for f in theirs() if f.name == "optim"]
    assert hf_training_fields()["optim"].default == declared_default(optim)


def test_help_texts_are_transformers_own():
    ours = hf_training_fields()
    wrong = [
        f.name
        for f in theirs()
        if f.name not in NOT_LITERAL_HELP and ours[f.name].help != " ".join(str(f.metadata.get("help", "")).split())
    ]
    assert wrong == []


def test_help_next_to_other_metadata_is_kept():
    (log_level,) = [f for f in theirs() if f.name == "log_level"]
    assert hf_training_fields()["log_level"].help == " ".join(log_level.metadata["help"].split())


def test_scalar_types_follow_the_annotation():
    none = type(None)
    for f in theirs():
        union = isinstance(f.type, types.UnionType) if hasattr(types, "UnionType") else False
        args = typing.get_args(f.type) if union or typing.get_origin(f.type) is typing.Union else (f.type,)
        base = [a for a in args if a is not none]
        if len(base) == 1 and base[0] in (bool, int, float, str):
            expected = typing.Optional[base[0]] if none in args else base[0]
            assert hf_training_fields()[f.name].type == expected, f.name


def test_enums_are_transformers_members_in_order():
    enums = hf_enums()
    for name in ("IntervalStrategy", "SaveStrategy", "SchedulerType", "OptimizerNames", "HubStrategy"):
        cls = getattr(transformers.trainer_utils, name, None) or getattr(transformers.training_args, name)
        assert enums[name] == [member.value for member in cls], name


def test_version_is_the_installed_one():
    assert hf_version() == transformers.__version__
