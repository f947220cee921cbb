"""Tests for lmtrain.data.pack: blocks, splits and prepare_datasets."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lmtrain.data.bpe import train_bpe_tokenizer
from lmtrain.data.pack import BlockDataset, num_blocks, prepare_datasets, split_blocks
from lmtrain.data.readers import sample_corpus_files
from lmtrain.data.token_cache import build_token_cache
from lmtrain.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(sample_corpus_files(), vocab_size=512)


@pytest.fixture
def stream() -> np.ndarray:
    return np.arange(103, dtype=np.uint16)


@pytest.fixture
def memmapped(tmp_path) -> np.memmap:
    path = tmp_path / "tokens.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    return np.memmap(path, dtype=np.uint16, mode="r")


# --------------------------------------------------------------------------- BlockDataset


def test_clm_blocks_are_stream_slices(stream):
    ds = BlockDataset(stream, block_size=10)
    assert len(ds) == 10 == num_blocks(103, 10, False) and ds.num_tokens == 100
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"input_ids", "labels"}
        assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (10,)
        assert item["input_ids"].tolist() == stream[i * 10 : (i + 1) * 10].tolist()
        assert torch.equal(item["labels"], item["input_ids"])
        assert item["labels"].data_ptr() != item["input_ids"].data_ptr()
    assert ds[-1]["input_ids"].tolist() == list(range(90, 100))  # remainder 100..102 dropped
    with pytest.raises(IndexError):
        ds[10]


def test_mlm_blocks_have_cls_and_sep(stream):
    ds = BlockDataset(stream, block_size=10, mlm=True, cls_token_id=7001, sep_token_id=7002)
    assert len(ds) == 103 // 8 == num_blocks(103, 10, True) and ds.num_tokens == 12 * 8
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"input_ids", "attention_mask"}
        ids = item["input_ids"].tolist()
        assert len(ids) == 10 and ids[0] == 7001 and ids[-1] == 7002
        assert ids[1:-1] == stream[i * 8 : (i + 1) * 8].tolist()
        assert item["attention_mask"].tolist() == [1] * 10


def test_mlm_needs_special_ids(stream):
    with pytest.raises(DataError):
        BlockDataset(stream, block_size=10, mlm=True)


@pytest.mark.parametrize("mlm", [False, True])
def test_getitems_equals_stacked_getitem(memmapped, mlm):
    ds = BlockDataset(memmapped, 16, block_indices=np.array([0, 3, 5, 9, 40]), mlm=mlm, cls_token_id=1, sep_token_id=2)
    idx = [4, 0, 2, 2, -1]
    batch = ds.__getitems__(idx)
    assert len(batch) == len(idx)
    for key in batch[0]:
        assert torch.equal(torch.stack([b[key] for b in batch]), torch.stack([ds[i][key] for i in idx]))
    # one stacked tensor underneath
    assert batch[1]["input_ids"].untyped_storage().data_ptr() == batch[0]["input_ids"].untyped_storage().data_ptr()


def test_block_indices_select_windows(stream):
    ds = BlockDataset(stream, 10, block_indices=np.array([2, 7]), bytes_per_token=3.5)
    assert len(ds) == 2 and ds.num_tokens == 20 and ds.bytes_per_token == 3.5
    assert ds[1]["input_ids"].tolist() == list(range(70, 80))
    with pytest.raises(ValueError):
        BlockDataset(stream, 10, block_indices=np.array([10]))


def test_pickle_reopens_memmap_by_path(memmapped):
    ds = BlockDataset(memmapped, 16, block_indices=np.arange(10))
    blob = pickle.dumps(ds)
    assert len(blob) < memmapped.nbytes  # the corpus itself is not in the pickle
    again = pickle.loads(blob)
    assert isinstance(again.tokens, np.memmap)
    assert torch.equal(again[3]["input_ids"], ds[3]["input_ids"])


def test_pickle_plain_array_and_slice(memmapped, stream):
    for tokens in (stream, memmapped[100:500]):
        ds = BlockDataset(tokens, 8)
        again = pickle.loads(pickle.dumps(ds))
        assert torch.equal(again[2]["input_ids"], ds[2]["input_ids"])
        assert again[0]["input_ids"].tolist() == np.asarray(tokens[:8]).tolist()


def test_dataloader_with_workers(memmapped):
    ds = BlockDataset(memmapped, 16, block_indices=np.arange(0, 60, 2))
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    ids = torch.cat([b["input_ids"] for b in batches])
    assert ids.shape == (30, 16)
    assert torch.equal(ids, torch.stack([ds[i]["input_ids"] for i in range(len(ds))]))
    assert torch.equal(torch.cat([b["labels"] for b in batches]), ids)


# --------------------------------------------------------------------------- split_blocks


def test_split_deterministic_disjoint_sorted():
    train, val = split_blocks(100, 10, seed=1)
    train2, val2 = split_blocks(100, 10, seed=1)
    assert np.array_equal(train, train2) and np.array_equal(val, val2)
    assert len(val) == 10 and len(train) == 90
    assert not set(train) & set(val) and set(train) | set(val) == set(range(100))
    assert list(val) == sorted(val) and list(train) == sorted(train)
    assert not np.array_equal(val, split_blocks(100, 10, seed=2)[1])


def test_split_edge_cases():
    assert len(split_blocks(2, 1)[1]) == 1 and len(split_blocks(2, 1)[0]) == 1
    assert len(split_blocks(10, 99)[0]) >= 1
    train, val = split_blocks(5, 0)
    assert train.tolist() == [0, 1, 2, 3, 4] and val.size == 0
    with pytest.raises(ConfigError):
        split_blocks(10, 100)


# --------------------------------------------------------------------------- prepare_datasets


@pytest.fixture
def text_file(tmp_path) -> Path:
    f = tmp_path / "corpus.txt"
    f.write_text(sample_corpus_files()[0].read_text())
    return f


def test_prepare_split(tokenizer, text_file, tmp_path):
    train, val, info = prepare_datasets([text_file], tokenizer, block_size=64, cache_dir=tmp_path / "c")
    cache = build_token_cache([text_file], tokenizer, cache_dir=tmp_path / "c")
    total = cache.num_tokens // 64
    assert len(train) + len(val) == total and len(val) == round(total * 0.05)
    assert not set(train.block_indices) & set(val.block_indices)
    assert info["train_blocks"] == len(train) and info["eval_blocks"] == len(val)
    assert info["train_tokens"] == len(train) * 64 and info["eval_tokens"] == len(val) * 64
    assert info["train_documents"] == 1 and info["cache_dirs"] == [str(cache.path)]
    assert info["bytes_per_token"] == pytest.approx(cache.num_bytes / cache.num_tokens)
    assert train.bytes_per_token == val.bytes_per_token == info["bytes_per_token"]
    j = int(val.block_indices[0])
    assert val[0]["input_ids"].tolist() == cache.tokens[j * 64 : (j + 1) * 64].tolist()
    # same split again
    _, val2, _ = prepare_datasets(str(text_file), tokenizer, block_size=64, cache_dir=tmp_path / "c")
    assert np.array_equal(val.block_indices, val2.block_indices)


def test_prepare_no_validation(tokenizer, text_file, tmp_path):
    train, val, info = prepare_datasets([text_file], tokenizer, 64, validation_split_percentage=0, cache_dir=tmp_path)
    assert val is None and info["eval_blocks"] == 0 and info["eval_tokens"] == 0


def test_prepare_validation_files_and_mlm(tokenizer, text_file, tmp_path):
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "Shall I compare thee to a summer\'s day? Thou art more lovely."}\n' * 4)
    train, val, info = prepare_datasets(
        [text_file], tokenizer, 16, validation_files=[valid], mlm=True, cache_dir=tmp_path / "c"
    )
    assert len(info["cache_dirs"]) == 2 and info["eval_blocks"] == len(val) > 0
    eos = tokenizer.eos_token_id  # the BPE tokenizer has no cls/sep: bos/eos stand in
    for ds in (train, val):
        ids = ds[0]["input_ids"].tolist()
        assert len(ids) == 16 and ids[0] == eos and ids[-1] == eos
        assert "labels" not in ds[0]


def test_prepare_corpus_too_small(tokenizer, tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("Hello there, world.")
    n = build_token_cache([f], tokenizer, cache_dir=tmp_path / "c").num_tokens
    with pytest.raises(DataError) as info:
        prepare_datasets([f], tokenizer, 64, cache_dir=tmp_path / "c")
    assert str(info.value) == (
        f"the training data has {n} tokens, fewer than one block of 64; "
        f"use a smaller --block_size (at most {n}) or more text"
    )
    with pytest.raises(DataError, match="too few to hold out a validation split"):
        prepare_datasets([f], tokenizer, n, cache_dir=tmp_path / "c")
    train, val, _ = prepare_datasets([f], tokenizer, n, validation_split_percentage=0, cache_dir=tmp_path / "c")
    assert len(train) == 1 and val is None


def test_prepare_validation_too_small(tokenizer, text_file, tmp_path):
    valid = tmp_path / "v.txt"
    valid.write_text("Short.")
    with pytest.raises(DataError, match="the validation data has .* fewer than one block of 64"):
        prepare_datasets([text_file], tokenizer, 64, validation_files=[valid], cache_dir=tmp_path)


def test_prepare_block_longer_than_positions(tokenizer, text_file, tmp_path):
    with pytest.raises(DataError) as info:
        prepare_datasets([text_file], tokenizer, 2048, max_positions=1024, cache_dir=tmp_path)
    assert str(info.value) == (
        "block_size 2048 is longer than the model's 1024 positions; pass --block_size 1024 or less"
    )
    assert not list(tmp_path.glob("tokens-*"))  # failed before tokenizing


def test_prepare_mlm_without_special_tokens(tokenizer, text_file, tmp_path):
    class NoSpecials:
        cls_token_id = bos_token_id = None
        sep_token_id = eos_token_id = None

    with pytest.raises(DataError, match="no cls_token or bos_token"):
        prepare_datasets([text_file], NoSpecials(), 16, mlm=True, cache_dir=tmp_path)


def test_prepare_missing_file(tokenizer, tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        prepare_datasets([tmp_path / "nope.txt"], tokenizer, 16, cache_dir=tmp_path)
