"""Tests for lmtrain.data.fast_bpe: the tiktoken encoder must give the tokenizer's own ids."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

pytest.importorskip("tiktoken")

import lmtrain.data.fast_bpe as fb  # noqa: E402
from lmtrain.data.bpe import train_bpe_tokenizer  # noqa: E402
from lmtrain.data.fast_bpe import make_fast_encoder  # noqa: E402
from lmtrain.data.readers import iter_documents, sample_corpus_files  # noqa: E402
from lmtrain.data.token_cache import build_token_cache  # noqa: E402


@pytest.fixture(scope="module", params=[512, 2048])
def tokenizer(request):
    return train_bpe_tokenizer(sample_corpus_files(), vocab_size=request.param)


@pytest.fixture(scope="module")
def tok512():
    return train_bpe_tokenizer(sample_corpus_files(), vocab_size=512)


def hf_ids(tokenizer, texts):
    backend = tokenizer.backend_tokenizer
    return [backend.encode(t, add_special_tokens=False).ids for t in texts]


def variant(tokenizer, edit):
    """A copy of ``tokenizer`` with its serialized state changed by ``edit(state)``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    edit(state)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        mask_token="<mask>",
        clean_up_tokenization_spaces=False,
    )


# --------------------------------------------------------------------------- exact ids


def test_fast_ids_equal_tokenizer_ids_on_every_sample_document(tokenizer):
    fast = make_fast_encoder(tokenizer)
    assert fast is not None and fast.rank_to_id is None  # trained ids follow merge order
    docs = list(iter_documents(sample_corpus_files()))
    lines = [line for d in docs for line in d.splitlines(keepends=True)][::4]
    assert fast(docs) == hf_ids(tokenizer, docs)
    assert fast(lines) == hf_ids(tokenizer, lines)
    assert fast(docs[:1])[0] == tokenizer(docs[0], add_special_tokens=False)["input_ids"]
    arrays = fast.encode_arrays(docs)
    assert all(a.dtype == np.uint32 for a in arrays)
    assert [a.tolist() for a in arrays] == fast(docs)


def test_fast_ids_on_every_bmp_character(tok512):
    fast = make_fast_encoder(tok512)
    chars = [chr(c) for c in range(0x10000) if not 0xD800 <= c < 0xE000]
    texts = [
        "".join(chars),
        " ".join(chars[::2]),
        "a".join(chars[::7]) + "\n".join(chars[::13]) + "  ",
        "1".join(chars[::11]) + "  ".join(chars[::17]),
    ]
    assert fast(texts) == hf_ids(tok512, texts)


def test_fast_ids_on_random_whitespace_and_punctuation(tok512):
    fast = make_fast_encoder(tok512)
    rng = random.Random(0)
    alphabet = [
        "a",
        "bc",
        "The",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\t",
        "\r\n",
        "1",
        "23",
        ".",
        "'s",
        "'",
        "'ll",
        "é",
        "漢",
        "🙂",
        "\u00a0",
        "\u3000",
        "<|endoftext|>",
        "<pad>",
        "-",
        "?!",
        "\x00",
    ]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(400)]
    assert fast(texts) == hf_ids(tok512, texts)


def test_special_token_strings_become_their_ids(tok512):
    # Like the tokenizer, the fast path turns special-token text into the special id.
    fast = make_fast_encoder(tok512)
    text = "a<|endoftext|>b <pad>\n<mask><|endoftext|> <|endo"
    ids = fast([text])[0]
    assert ids == hf_ids(tok512, [text])[0]
    assert ids.count(tok512.eos_token_id) == 2 and tok512.pad_token_id in ids
    assert fast(["<|endoftext|>"]) == [[tok512.eos_token_id]]


def test_added_tokens_are_matched_like_the_tokenizer(tok512):
    tok = variant(tok512, lambda s: None)
    tok.add_tokens(["<custom>", "zz top", "zz"])
    fast = make_fast_encoder(tok)
    assert fast is not None
    texts = ["a<custom>b zz top zz topzz <custom><|endoftext|>", "zzz top", "<custom"]
    assert fast(texts) == hf_ids(tok, texts)


def test_ranks_translated_when_ids_do_not_follow_merge_order(tok512):
    def shuffle_ids(state):
        vocab = state["model"]["vocab"]
        order = sorted(vocab, key=vocab.get)
        keep, rest = order[:3], order[3:]  # special tokens stay 0, 1, 2
        random.Random(1).shuffle(rest)
        state["model"]["vocab"] = {t: i for i, t in enumerate(keep + rest)}

    tok = variant(tok512, shuffle_ids)
    fast = make_fast_encoder(tok)
    assert fast is not None and fast.rank_to_id is not None
    docs = [d[:20_000] for d in iter_documents(sample_corpus_files())] + ["x <|endoftext|>y"]
    assert fast(docs) == hf_ids(tok, docs)


# --------------------------------------------------------------------------- fallback


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda s: s.update(normalizer={"type": "NFKC"}), id="normalizer"),
        pytest.param(lambda s: s["pre_tokenizer"].update(add_prefix_space=True), id="add_prefix_space"),
        pytest.param(lambda s: s["pre_tokenizer"].update(use_regex=False), id="no_regex"),
        pytest.param(lambda s: s.update(pre_tokenizer={"type": "Whitespace"}), id="whitespace_pre_tokenizer"),
        pytest.param(lambda s: s["model"].update(dropout=0.1), id="dropout"),
        pytest.param(lambda s: s["model"].update(byte_fallback=True), id="byte_fallback"),
        pytest.param(lambda s: s["added_tokens"][1].update(lstrip=True), id="lstrip_added_token"),
    ],
)
def test_ineligible_tokenizers_get_none(tok512, edit):
    assert make_fast_encoder(variant(tok512, edit)) is None


def test_not_a_bpe_model_gets_none():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert make_fast_encoder(PreTrainedTokenizerFast(tokenizer_object=tok)) is None
    assert make_fast_encoder(object()) is None


def test_self_check_catches_a_wrong_pattern(tok512, monkeypatch):
    # Without the contraction rules the probe text encodes differently: no fast path.
    monkeypatch.setattr(fb, "GPT2_PATTERN", fb.GPT2_PATTERN.replace("'s|'t|'re|'ve|'m|'ll|'d|", ""))
    assert make_fast_encoder(tok512) is None


def test_env_var_disables(tok512, monkeypatch):
    monkeypatch.setenv("LMTRAIN_NO_FAST_BPE", "1")
    assert make_fast_encoder(tok512) is None
    monkeypatch.setenv("LMTRAIN_NO_FAST_BPE", "0")
    assert make_fast_encoder(tok512) is not None


# --------------------------------------------------------------------------- token cache


def cache_ids(tokenizer, files):
    eos = tokenizer.eos_token_id
    return [i for d in iter_documents(files) for i in hf_ids(tokenizer, [d])[0] + [eos]]


def test_cache_same_with_and_without_fast_path(tokenizer, tmp_path, monkeypatch):
    files = sample_corpus_files()
    fast = build_token_cache(files, tokenizer, cache_dir=tmp_path / "fast")
    monkeypatch.setenv("LMTRAIN_NO_FAST_BPE", "1")
    slow = build_token_cache(files, tokenizer, cache_dir=tmp_path / "slow")
    meta = lambda c: json.loads((c.path / "meta.json").read_text())  # noqa: E731
    assert meta(fast)["encoder"] == "tiktoken" and meta(slow)["encoder"] == "tokenizers"
    assert fast.path.name == slow.path.name  # same fingerprint: same ids either way
    assert np.array_equal(fast.tokens, slow.tokens)
    assert np.array_equal(fast.doc_offsets, slow.doc_offsets)
    assert fast.tokens.tolist() == cache_ids(tokenizer, files)
    assert fast.num_bytes == slow.num_bytes


def test_cache_with_ineligible_tokenizer_falls_back(tok512, tmp_path):
    tok = variant(tok512, lambda s: s.update(normalizer={"type": "NFKC"}))
    text = "ﬁne ﬂowers ① naïve\n" * 50
    (tmp_path / "a.txt").write_text(text)
    cache = build_token_cache([tmp_path / "a.txt"], tok, cache_dir=tmp_path / "c")
    assert json.loads((cache.path / "meta.json").read_text())["encoder"] == "tokenizers"
    assert cache.tokens.tolist() == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_no_encoding_threads_left_after_a_build(tok512, tmp_path):
    import threading

    (tmp_path / "a.txt").write_text("Some text to encode.\n" * 20_000)
    cache = build_token_cache([tmp_path / "a.txt"], tok512, cache_dir=tmp_path / "c")
    assert json.loads((cache.path / "meta.json").read_text())["encoder"] == "tiktoken"
    assert not [t for t in threading.enumerate() if t.name.startswith("lmtrain-bpe")]
