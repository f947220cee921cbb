"""Collators: padding, label creation and MLM masking statistics, on tiny in-memory tokenizers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from lmtrain.data.collators import (
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    default_data_collator,
)
from lmtrain.errors import LmtrainError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
N_WORDS = 1000


def _word_level(tokens: list) -> Tokenizer:
    tok = Tokenizer(WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[1]))
    tok.pre_tokenizer = Whitespace()
    return tok


@pytest.fixture(scope="module")
def bert_like() -> PreTrainedTokenizerFast:
    """Pad 0, unk 1, cls 2, sep 3, mask 4, then N_WORDS ordinary words."""
    tok = _word_level(SPECIALS + [f"w{i}" for i in range(N_WORDS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@pytest.fixture()
def gpt_like() -> PreTrainedTokenizerFast:
    """No pad and no mask token; eos is id 0 (as GPT-2 has none of its own pad)."""
    tok = _word_level(["<eos>", "<unk>"] + [f"w{i}" for i in range(50)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


def _mlm_batch(rows: int = 64, width: int = 512, seed: int = 0) -> list:
    """[CLS] words... [SEP] with lengths between width/2 and width, so that many rows get padded."""
    g = torch.Generator().manual_seed(seed)
    feats = []
    for i in range(rows):
        n = width if i == 0 else int(torch.randint(width // 2, width + 1, (1,), generator=g))
        words = torch.randint(5, 5 + N_WORDS, (n - 2,), generator=g).tolist()
        feats.append({"input_ids": [2] + words + [3]})
    return feats


def test_mlm_masking_statistics(bert_like):
    feats = _mlm_batch()
    torch.manual_seed(1234)
    batch = DataCollatorForLanguageModeling(bert_like, mlm_probability=0.15)(feats)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape == (64, 512)
    assert ids.dtype == labels.dtype == mask.dtype == torch.long

    original = DataCollatorForLanguageModeling(bert_like, mlm=False)(feats)["input_ids"]
    special = (original < 5) | (mask == 0)
    eligible = ~special
    chosen = labels != -100
    assert not (chosen & special).any(), "special tokens and padding are never chosen"
    assert torch.equal(labels[chosen], original[chosen])
    assert (mask == 0).any(), "the batch should contain padding"
    assert torch.equal(ids[special], original[special]), "special tokens and padding are left as they are"

    frac = chosen.sum().item() / eligible.sum().item()
    assert abs(frac - 0.15) < 0.01
    n = chosen.sum().item()
    to_mask = (ids[chosen] == 4).sum().item() / n
    unchanged = (ids[chosen] == original[chosen]).sum().item() / n
    randomized = 1 - to_mask - unchanged
    assert abs(to_mask - 0.8) < 0.02
    assert abs(randomized - 0.1) < 0.02 and abs(unchanged - 0.1) < 0.02
    assert ids[chosen].max() < len(bert_like)
    assert torch.equal(ids[~chosen], original[~chosen])


def test_mlm_reproducible_with_manual_seed(bert_like):
    feats = _mlm_batch(rows=8, width=64)
    collator = DataCollatorForLanguageModeling(bert_like)
    torch.manual_seed(7)
    a = collator(feats)
    torch.manual_seed(7)
    b = collator(feats)
    c = collator(feats)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(b["labels"], c["labels"])


def test_mlm_private_seed_and_pickling(bert_like):
    feats = _mlm_batch(rows=8, width=64)
    a = DataCollatorForLanguageModeling(bert_like, seed=3)(feats)
    collator = DataCollatorForLanguageModeling(bert_like, seed=3)
    clone = pickle.loads(pickle.dumps(collator))  # as a DataLoader worker would get it
    assert torch.equal(a["labels"], collator(feats)["labels"])
    assert torch.equal(a["labels"], clone(feats)["labels"])


def test_mlm_special_tokens_mask_feature_is_honoured_and_removed(bert_like):
    ids = list(range(5, 45))
    stm = [1] * 20 + [0] * 20  # forbid the first half
    batch = DataCollatorForLanguageModeling(bert_like, mlm_probability=1.0)(
        [{"input_ids": ids, "special_tokens_mask": stm}]
    )
    assert "special_tokens_mask" not in batch
    assert (batch["labels"][0, :20] == -100).all() and (batch["labels"][0, 20:] != -100).all()


def test_clm_with_pad_equal_to_eos_keeps_real_eos_labels(gpt_like):
    gpt_like.pad_token = gpt_like.eos_token
    eos = gpt_like.eos_token_id
    feats = [
        {"input_ids": [5, 6, 7, eos]},
        {"input_ids": np.array([8, eos])},
        {"input_ids": torch.tensor([9, 10, eos])},
    ]
    batch = DataCollatorForLanguageModeling(gpt_like, mlm=False)(feats)
    assert batch["input_ids"].tolist() == [[5, 6, 7, eos], [8, eos, eos, eos], [9, 10, eos, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7, eos], [8, eos, -100, -100], [9, 10, eos, -100]]


def test_clm_left_padding_and_given_labels(gpt_like):
    gpt_like.pad_token = gpt_like.eos_token
    gpt_like.padding_side = "left"
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    batch = DataCollatorForLanguageModeling(gpt_like, mlm=False)(feats)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]


def test_pad_to_multiple_of(bert_like):
    feats = [{"input_ids": [2, 10, 11, 3]}, {"input_ids": [2, 12, 3]}]
    batch = DataCollatorForLanguageModeling(bert_like, mlm=False, pad_to_multiple_of=8)(feats)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].sum().item() == 7
    assert (batch["labels"][:, 4:] == -100).all() and batch["labels"][0, :4].tolist() == [2, 10, 11, 3]
    assert DataCollatorWithPadding(bert_like, pad_to_multiple_of=8)(feats)["input_ids"].shape == (2, 8)


def test_missing_mask_or_pad_token(gpt_like):
    with pytest.raises(LmtrainError, match="no mask token.*mlm=False"):
        DataCollatorForLanguageModeling(gpt_like)
    collator = DataCollatorForLanguageModeling(gpt_like, mlm=False)
    # Equal lengths need no padding, hence no pad token.
    assert collator([{"input_ids": [5, 6]}, {"input_ids": [7, 8]}])["labels"].tolist() == [[5, 6], [7, 8]]
    with pytest.raises(LmtrainError, match="no pad token; set tokenizer.pad_token = tokenizer.eos_token"):
        collator([{"input_ids": [5, 6]}, {"input_ids": [7]}])
    with pytest.raises(LmtrainError, match="no pad token"):
        DataCollatorWithPadding(gpt_like)([{"input_ids": [5, 6]}, {"input_ids": [7]}])


def test_data_collator_with_padding(bert_like):
    enc = [bert_like("w1 w2 w3"), bert_like("w4"), bert_like("w5 w6")]
    feats = [{**dict(e), "label": i % 2} for i, e in enumerate(enc)]
    batch = DataCollatorWithPadding(bert_like)(feats)
    assert set(batch) >= {"input_ids", "attention_mask", "labels"} and "label" not in batch
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 3)
    assert batch["input_ids"][1].tolist() == [bert_like.convert_tokens_to_ids("w4"), 0, 0]
    assert batch["attention_mask"].sum(1).tolist() == [3, 1, 2]
    assert batch["labels"].tolist() == [0, 1, 0] and batch["labels"].dtype == torch.long
    if "token_type_ids" in batch:
        assert batch["token_type_ids"].shape == (3, 3)
    fixed = DataCollatorWithPadding(bert_like, padding="max_length", max_length=6)(feats)
    assert fixed["input_ids"].shape == (3, 6)


def test_padding_features_without_a_mask_adds_the_mask_transformers_adds(bert_like):
    import transformers

    feats = [{"input_ids": [2, 10, 11, 3]}, {"input_ids": [2, 12, 3]}]
    theirs = transformers.DataCollatorWithPadding(bert_like)([dict(f) for f in feats])
    ours = DataCollatorWithPadding(bert_like)([dict(f) for f in feats])
    assert theirs["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_default_data_collator_label_renaming():
    feats = [{"input_ids": [1, 2, 3], "label": 1, "text": "skipped", "extra": None} for _ in range(4)]
    batch = default_data_collator(feats)
    assert set(batch) == {"input_ids", "labels"}
    assert batch["labels"].dtype == torch.long and batch["input_ids"].shape == (4, 3)
    batch = default_data_collator([{"x": np.ones(2, dtype=np.float32), "label": 0.5}] * 2)
    assert batch["labels"].dtype == torch.float32 and batch["x"].dtype == torch.float32
    batch = default_data_collator([{"input_ids": torch.arange(3), "label_ids": [1, 2, 3]}] * 2)
    assert batch["labels"].tolist() == [[1, 2, 3]] * 2 and batch["labels"].dtype == torch.long
    batch = default_data_collator([{"input_ids": torch.arange(3), "labels": torch.arange(3)}] * 2)
    assert torch.equal(batch["labels"], torch.arange(3).repeat(2, 1))


def test_default_data_collator_ragged_is_a_data_error():
    from lmtrain.errors import DataError

    with pytest.raises(DataError, match="input_ids.*equal"):
        default_data_collator([{"input_ids": [1, 2]}, {"input_ids": [1]}])
