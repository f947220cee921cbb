"""lmtrain.training.extras: the default collator, whether a model normalises its own loss, NEFTune, log levels."""

from __future__ import annotations

import logging

import pytest
import torch

from lmtrain import TrainingArguments
from lmtrain.training.extras import accepts_loss_kwargs, activate_neftune, apply_log_level, default_collator
from tests.conftest import tiny_gpt2


class Plain(torch.nn.Module):
    def forward(self, input_ids, labels=None):
        return input_ids


class WithKwargs(torch.nn.Module):
    def forward(self, input_ids, labels=None, **kwargs):
        return input_ids


class WithItemCount(torch.nn.Module):
    def forward(self, input_ids, labels=None, num_items_in_batch=None):
        return input_ids


class Declares(WithKwargs):
    accepts_loss_kwargs = False  # says so itself, whatever forward takes


class Wrapper(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module


def test_accepts_loss_kwargs_reads_forward_or_the_models_own_answer():
    assert accepts_loss_kwargs(Plain()) is False
    assert accepts_loss_kwargs(WithKwargs()) is True
    assert accepts_loss_kwargs(WithItemCount()) is True
    assert accepts_loss_kwargs(Declares()) is False
    assert accepts_loss_kwargs(Wrapper(WithKwargs())) is True  # the user's model inside a DDP-like wrapper
    assert accepts_loss_kwargs(Wrapper(Plain())) is False


def test_accepts_loss_kwargs_agrees_with_transformers_trainer(tmp_path):
    import transformers

    for model in (tiny_gpt2(), Plain(), WithKwargs(), Declares()):
        args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
        theirs = transformers.Trainer(model=model, args=args).model_accepts_loss_kwargs
        assert accepts_loss_kwargs(model) == theirs, type(model).__name__


def word_tokenizer(pad: bool):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]"] + [f"w{i}" for i in range(10)])}
    kwargs = {"pad_token": "[PAD]"} if pad else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")), unk_token="[UNK]", **kwargs
    )


def test_default_collator_pads_with_a_tokenizer_that_can():
    from lmtrain.data.collators import DataCollatorWithPadding

    tokenizer = word_tokenizer(pad=True)
    collate = default_collator(tokenizer)
    assert isinstance(collate, DataCollatorWithPadding) and collate.tokenizer is tokenizer
    batch = collate([{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1]}, {"input_ids": [8], "attention_mask": [1]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]  # [PAD] is id 0
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("tokenizer", [None, "no pad token"])
def test_default_collator_stacks_without_one(tokenizer):
    from lmtrain.data.collators import default_data_collator

    collate = default_collator(word_tokenizer(pad=False) if tokenizer else None)
    assert collate is default_data_collator
    batch = collate([{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [3, 4], "labels": [3, 4]}])
    assert batch["input_ids"].tolist() == [[1, 2], [3, 4]] and batch["labels"].tolist() == [[1, 2], [3, 4]]


def test_neftune_adds_bounded_noise_in_training_only_and_is_removable():
    model = tiny_gpt2()
    embeddings = model.get_input_embeddings()
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    plain = embeddings(ids).detach()
    assert activate_neftune(model, None) is None and activate_neftune(model, 0.0) is None
    assert torch.equal(embeddings(ids), plain)

    alpha = 5.0
    handle = activate_neftune(model, alpha)
    model.train()
    noise = (embeddings(ids) - plain).detach()
    bound = alpha / (8 * 32) ** 0.5  # alpha / sqrt(sequence length x width)
    assert noise.abs().max() <= bound * (1 + 1e-5)
    assert noise.abs().max() > bound / 2 and noise.abs().mean() > bound / 4  # uniform in [-bound, bound]
    assert not torch.equal(embeddings(ids) - plain, noise)  # fresh noise each call
    model.eval()
    assert torch.equal(embeddings(ids), plain)
    model.train()
    handle.remove()
    assert torch.equal(embeddings(ids), plain)


def test_log_levels_of_the_main_process_and_the_replicas(tmp_path):
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    try:
        args = TrainingArguments(output_dir=str(tmp_path), log_level="error", log_level_replica="info")
        apply_log_level(args, is_main=True)
        assert hf_logging.get_verbosity() == logging.ERROR
        apply_log_level(args, is_main=False)
        assert hf_logging.get_verbosity() == logging.INFO
        hf_logging.set_verbosity(logging.WARNING)
        apply_log_level(TrainingArguments(output_dir=str(tmp_path), log_level="passive"), is_main=True)
        assert hf_logging.get_verbosity() == logging.WARNING  # passive: left as it is
    finally:
        hf_logging.set_verbosity(before)
