"""Tests for lmtrain.data.bpe: training a byte-level BPE tokenizer."""

from __future__ import annotations

import pytest

from lmtrain.data.bpe import train_bpe_tokenizer
from lmtrain.data.readers import iter_documents, sample_corpus_files
from lmtrain.errors import ConfigError


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(sample_corpus_files(), vocab_size=512)


def test_tokenizer_special_tokens(tokenizer):
    assert len(tokenizer) == 512
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<pad>", "<mask>"]
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.unk_token == "<|endoftext|>"
    assert tokenizer.pad_token == "<pad>" and tokenizer.mask_token == "<mask>"


def test_tokenizer_byte_level_round_trip(tokenizer):
    text = "  Lo! here  the gentle lark\n\tweary of rest — ünïcödé 漢字 🙂"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    # no prefix space: a leading word is not given one
    assert tokenizer.decode(tokenizer("Lo")["input_ids"]) == "Lo"


def test_tokenizer_save_reload(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = next(iter(iter_documents(sample_corpus_files())))[:3000]
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (again.eos_token, again.pad_token, again.mask_token) == ("<|endoftext|>", "<pad>", "<mask>")
    assert len(again) == len(tokenizer)


def test_tokenizer_vocab_too_small():
    with pytest.raises(ConfigError, match="vocab_size 100 is too small"):
        train_bpe_tokenizer(sample_corpus_files(), vocab_size=100)
