"""lmtrain.data.encoders: text -> the tokenizer's own ids, by the fastest encoder that gives them."""

from __future__ import annotations

import copy
import random

import pytest

from lmtrain.data import encoders
from lmtrain.data.bpe import train_bpe_tokenizer
from lmtrain.data.readers import PIECE_BOUNDARY, iter_documents, sample_corpus_files

TEXTS = [
    "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:",
    "  naïve café — ünïcödé 漢字 🙂\r\n\tx = 1<|endoftext|>y",
    "",
    "it's 'tis don't 12 345 6.7 -- ... (a) [b] {c}",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(sample_corpus_files(), vocab_size=512)


@pytest.fixture(scope="module")
def word_level():
    """Not a byte-level BPE: no fast path, the tokenizer's batch encoder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in TEXTS for w in t.split()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]"] + words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def own_ids(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_piece_boundaries_are_exact(tokenizer):
    # Encoding pieces cut at every boundary gives the ids of the whole text.
    rng = random.Random(0)
    alphabet = ["a", "bc", " ", "  ", "\n", "\n\n", "\t", "\r\n", "1", ".", "'s", "'", "é", " \n", "\x1c"]
    encode = encoders.hf_encoder(tokenizer)
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(40))
        cuts = [m.start() for m in PIECE_BOUNDARY.finditer(text)]
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert encode([text])[0] == [i for p in encode(pieces) for i in p], repr(text)


def test_best_encoder_gives_the_tokenizers_own_ids(tokenizer, word_level, monkeypatch):
    pytest.importorskip("tiktoken")
    docs = list(iter_documents(sample_corpus_files()))[:2] + TEXTS
    fast = encoders.best_encoder(tokenizer)
    assert encoders.encoder_name(fast) == "tiktoken"  # a byte-level BPE: tiktoken with its merges
    assert [list(ids) for ids in fast(docs)] == own_ids(tokenizer, docs)

    plain = encoders.best_encoder(word_level)
    assert encoders.encoder_name(plain) == "tokenizers"
    assert plain(TEXTS) == own_ids(word_level, TEXTS)

    monkeypatch.setenv("LMTRAIN_NO_FAST_BPE", "1")
    off = encoders.best_encoder(tokenizer)
    assert encoders.encoder_name(off) == "tokenizers" and off(docs) == own_ids(tokenizer, docs)


def test_hf_encoder_ignores_the_callers_truncation_and_leaves_it_set(tokenizer):
    truncating = copy.deepcopy(tokenizer)
    truncating.backend_tokenizer.enable_truncation(4)
    (ids,) = encoders.hf_encoder(truncating)([TEXTS[0]])
    assert ids == own_ids(tokenizer, TEXTS[:1])[0] and len(ids) > 4
    assert truncating.backend_tokenizer.truncation["max_length"] == 4


def test_hf_encoder_of_a_tokenizer_without_a_backend():
    class Slow:
        def __call__(self, texts, add_special_tokens=True):
            assert add_special_tokens is False
            return {"input_ids": [[len(t)] for t in texts]}

    assert encoders.hf_encoder(Slow())(["ab", "cde"]) == [[2], [3]]
    assert encoders.encoder_name(encoders.hf_encoder(Slow())) == "tokenizers"


def test_splitting_is_exact_compares_whole_and_piecewise_ids():
    per_character = lambda texts: [[ord(c) for c in t] for t in texts]  # context-free: exact
    per_text = lambda texts: [[len(t)] for t in texts]  # one id for the whole text: not
    assert encoders.splitting_is_exact(per_character)
    assert not encoders.splitting_is_exact(per_text)


def test_splitting_is_exact_for_the_trained_tokenizer_but_not_with_an_added_token_holding_a_space(tokenizer):
    assert encoders.added_token_texts(tokenizer) == ["<|endoftext|>", "<pad>", "<mask>"]
    assert encoders.splitting_is_exact(encoders.best_encoder(tokenizer), tokenizer)
    for added, exact in (("<extra_0>", True), ("hello world", False), ("a\nb", False)):
        variant = copy.deepcopy(tokenizer)
        variant.add_tokens([added])
        assert added in encoders.added_token_texts(variant)
        # an added token with a space or newline could span the cut between two pieces
        assert encoders.splitting_is_exact(encoders.best_encoder(variant), variant) is exact, added
