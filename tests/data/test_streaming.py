"""Tests for lmtrain.data.streaming: blocks encoded on the fly, lanes, exact positions, the cache side effect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmtrain.data.bpe import train_bpe_tokenizer
from lmtrain.data.collators import DataCollatorForLanguageModeling, default_data_collator
from lmtrain.data.lanes import LaneReader, assign_shards
from lmtrain.data.readers import sample_corpus_files
from lmtrain.data.streaming import STREAM_KEY, StreamingDataset
from lmtrain.data.token_cache import build_token_cache
from lmtrain.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(sample_corpus_files(), vocab_size=400)


@pytest.fixture
def corpus(tmp_path) -> list[Path]:
    """A .txt, a .jsonl and a .jsonl.gz: text of several shards at shard_bytes=2048."""
    import gzip

    lines = (sample_corpus_files()[0]).read_text(encoding="utf-8").splitlines()
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.txt").write_text("\n".join(lines[:150]) + "\n", encoding="utf-8")
    records = [json.dumps({"text": " ".join(lines[i : i + 3])}) for i in range(150, 420, 3)]
    (d / "b.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    with gzip.open(d / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(records[:40]) + "\n")
    return [d / "a.txt", d / "b.jsonl", d / "c.jsonl.gz"]


def stream(corpus, tokenizer, tmp_path, **kw) -> StreamingDataset:
    opts = dict(seed=3, shard_bytes=2048, cache_dir=tmp_path / "cache")
    opts.update(kw)
    return StreamingDataset(corpus, tokenizer, 32, **opts)


def take(loader, n: int, ds: StreamingDataset | None = None) -> list[dict]:
    """n batches, recording positions as the training loop does."""
    out = []
    for batch in loader:
        state = batch.pop(STREAM_KEY)
        if ds is not None:
            ds.record(state)
        out.append(batch)
        if len(out) == n:
            break
    return out


# ---- shard assignment ---------------------------------------------------------------------------


def test_assign_shards_whole_and_balanced():
    sizes = [90, 10, 50, 50, 40, 30, 20, 10]
    lanes = assign_shards(sizes, 3)
    owned = sorted(s for lane in lanes for s, _, _ in lane)
    assert owned == list(range(len(sizes)))  # every shard once: disjoint lanes
    assert all(stride == 1 and off == 0 for lane in lanes for _, stride, off in lane)
    loads = [sum(sizes[s] for s, _, _ in lane) for lane in lanes]
    assert max(loads) - min(loads) <= max(sizes) // 3 + 10
    assert assign_shards(sizes, 3) == lanes  # deterministic


def test_assign_shards_shared_when_fewer_shards_than_lanes():
    lanes = assign_shards([5, 7], 5)
    assert lanes == [[(0, 3, 0)], [(1, 2, 0)], [(0, 3, 1)], [(1, 2, 1)], [(0, 3, 2)]]
    # every (shard, offset) pair is one lane's: the units of a shared shard are split, not repeated
    assert len({(s, off) for lane in lanes for s, _, off in lane}) == 5


# ---- what a stream yields ----------------------------------------------------------------------


def test_one_lane_in_order_equals_the_token_cache(corpus, tokenizer, tmp_path):
    ds = stream(corpus, tokenizer, tmp_path, shuffle=False, write_cache=False)
    cache = build_token_cache(corpus, tokenizer, cache_dir=tmp_path / "ref")
    n_blocks = cache.num_tokens // 32
    loader = ds.stream_loader(default_data_collator, 4, data_seed=0)
    rows = torch.cat([b["input_ids"] for b in take(loader, n_blocks // 4)]).numpy()
    expected = np.asarray(cache.tokens[: len(rows) * 32], dtype=np.int64).reshape(-1, 32)
    assert np.array_equal(rows, expected)


@pytest.mark.parametrize("extra_lanes", [-100, -3, 3])
def test_lanes_read_disjoint_parts_that_cover_the_corpus(corpus, tokenizer, tmp_path, extra_lanes):
    """Each lane's first pass: no unit of text is read by two lanes, and together they read every unit
    (with 3 lanes more than shards, lanes share shards unit by unit)."""
    from lmtrain.data.shard_reader import iter_units

    # shared shards need several units each: records (a .txt range of 2 kB is one unit)
    ds = stream(corpus if extra_lanes < 0 else corpus[1:], tokenizer, tmp_path, write_cache=False)
    everything = [(s.index, u.text) for s in ds.shards[0] for u in iter_units(s, split_text=ds.split_text)]
    lanes = max(2, len(ds.shards[0]) + extra_lanes)
    read = []
    for lane in range(lanes):
        state = ds._new_lane_state(lane)["sources"][0]
        reader = LaneReader(ds, 0, lane, lanes, state)
        while True:
            unit, _writer = reader._next_unit()
            if state["pass"] > 0:
                break
            read.append(unit.text)
    assert sorted(read) == sorted(t for _, t in everything)


@pytest.mark.parametrize("packing", ["concat", "bos_aligned"])
def test_positions_resume_exactly(corpus, tokenizer, tmp_path, packing):
    ds = stream(corpus, tokenizer, tmp_path, write_cache=False, packing=packing)
    whole = take(ds.stream_loader(default_data_collator, 3, data_seed=1), 40)
    first = stream(corpus, tokenizer, tmp_path, write_cache=False, packing=packing)
    take(first.stream_loader(default_data_collator, 3, data_seed=1), 17, first)
    saved = first.state_dict()
    resumed = stream(corpus, tokenizer, tmp_path, write_cache=False, packing=packing)
    loader = resumed.stream_loader(default_data_collator, 3, data_seed=1)
    resumed.load_state_dict(saved)
    rest = take(loader, 23, resumed)
    for a, b in zip(whole[17:], rest):
        assert torch.equal(a["input_ids"], b["input_ids"])


@pytest.mark.parametrize("workers", [2])
def test_positions_resume_exactly_with_workers(corpus, tokenizer, tmp_path, workers):
    kw = dict(data_seed=1, num_workers=workers, multiprocessing_context="fork")
    ds = stream(corpus, tokenizer, tmp_path, write_cache=False)
    whole = take(ds.stream_loader(default_data_collator, 2, **kw), 21)
    first = stream(corpus, tokenizer, tmp_path, write_cache=False)
    take(first.stream_loader(default_data_collator, 2, **kw), 9, first)  # odd: resume mid-round of workers
    resumed = stream(corpus, tokenizer, tmp_path, write_cache=False)
    loader = resumed.stream_loader(default_data_collator, 2, **kw)
    resumed.load_state_dict(first.state_dict())
    rest = take(loader, 12, resumed)
    for a, b in zip(whole[9:], rest):
        assert torch.equal(a["input_ids"], b["input_ids"])


def test_resume_with_another_layout_is_refused(corpus, tokenizer, tmp_path):
    first = stream(corpus, tokenizer, tmp_path, write_cache=False)
    take(first.stream_loader(default_data_collator, 2, data_seed=1), 3, first)
    other = stream(corpus, tokenizer, tmp_path, write_cache=False)
    other.stream_loader(default_data_collator, 2, data_seed=1, num_workers=2)
    with pytest.raises(ConfigError, match="dataloader_num_workers"):
        other.load_state_dict(first.state_dict())


def test_mlm_batches_are_masked_by_their_place_in_the_stream(corpus, tokenizer, tmp_path):
    mlm_tokenizer = tokenizer  # its bos token opens masked-LM blocks (no cls token)
    collator = DataCollatorForLanguageModeling(mlm_tokenizer, mlm=True)
    a = take(stream(corpus, mlm_tokenizer, tmp_path, mlm=True).stream_loader(collator, 2, data_seed=5), 4)
    b = take(stream(corpus, mlm_tokenizer, tmp_path, mlm=True).stream_loader(collator, 2, data_seed=5), 4)
    assert a[0]["input_ids"].shape == (2, 32)
    assert (a[0]["input_ids"][:, 0] == mlm_tokenizer.bos_token_id).all()
    for x, y in zip(a, b):
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
    assert (a[0]["labels"] != -100).any()


def test_plain_iteration_yields_single_blocks(corpus, tokenizer, tmp_path):
    ds = stream(corpus, tokenizer, tmp_path, write_cache=False)
    first = next(iter(ds))
    assert set(first) == {"input_ids", "labels"} and first["input_ids"].shape == (32,)


def test_two_sources_mixed_by_weight(corpus, tokenizer, tmp_path):
    ds = StreamingDataset(
        [corpus[:1], corpus[1:]], tokenizer, 32, weights=[0.25, 0.75], names=["plays", "records"], shard_bytes=2048
    )
    take(ds.stream_loader(default_data_collator, 4, data_seed=0), 50, ds)
    seen = ds.tokens_per_source()
    assert seen["plays"] + seen["records"] == 50 * 4 * 32
    assert abs(seen["plays"] / (50 * 4 * 32) - 0.25) < 0.01


def test_a_lane_without_text_is_one_line_error(corpus, tokenizer, tmp_path):
    ds = stream(corpus[:1], tokenizer, tmp_path, shard_bytes=1 << 30, write_cache=False)  # one shard
    units = sum(1 for _ in __import__("lmtrain.data.shard_reader").data.shard_reader.iter_units(ds.shards[0][0]))
    ds.workers = units + 1
    with pytest.raises(DataError, match="fewer --dataloader_num_workers"):
        list(zip(range(2), ds._lane_blocks(units)))


def test_empty_source_is_one_line_error(tmp_path, tokenizer):
    (tmp_path / "e.jsonl").write_text('{"text": ""}\n')
    ds = StreamingDataset([tmp_path / "e.jsonl"], tokenizer, 32, write_cache=False)
    with pytest.raises(DataError):
        next(iter(ds))


# ---- the token cache as a side effect ------------------------------------------------------------


def test_a_full_pass_leaves_the_token_cache_warm(corpus, tokenizer, tmp_path, monkeypatch):
    ds = stream(corpus, tokenizer, tmp_path, shuffle=False)
    cache_ref = build_token_cache(corpus, tokenizer, cache_dir=tmp_path / "ref")
    n = cache_ref.num_tokens // 32 + 8  # past the end of the first pass
    take(ds.stream_loader(default_data_collator, 1, data_seed=0), n)
    import lmtrain.data.token_cache as tc

    def no_tokenizing(*a, **k):
        raise AssertionError("the cache should be warm")

    monkeypatch.setattr(tc, "_write_cache", no_tokenizing)
    warm = build_token_cache(corpus, tokenizer, cache_dir=tmp_path / "cache")
    assert np.array_equal(np.asarray(warm.tokens), np.asarray(cache_ref.tokens))
    assert np.array_equal(np.asarray(warm.doc_offsets), np.asarray(cache_ref.doc_offsets))
    assert warm.num_bytes == cache_ref.num_bytes


def test_bos_aligned_rows_equal_the_cache_packers(corpus, tokenizer, tmp_path, monkeypatch):
    import lmtrain.data.packing as packing

    monkeypatch.setattr(packing, "DEFAULT_BUFFER", 8)  # a small buffer: the corpus has ~130 documents
    corpus = corpus[1:]  # records (a whole .txt is a document of thousands of tokens: the stream's buffer is
    # also bounded in tokens, which the cache's packer, holding every document already, need not be)
    cache = build_token_cache(corpus, tokenizer, cache_dir=tmp_path / "ref")
    eos = tokenizer.eos_token_id
    rows = packing.bos_aligned_rows(cache.doc_offsets, 32, eos, eos, buffer=8)
    offline = packing.PackedRowDataset(cache.tokens, rows, block_size=32)
    n = rows.num_rows // 2  # the cache's packer empties its buffer at the corpus end; the stream reads on
    ds = stream(corpus, tokenizer, tmp_path, shuffle=False, write_cache=False, packing="bos_aligned")
    loader = ds.stream_loader(default_data_collator, 1, data_seed=0)
    got = [b["input_ids"][0] for b in take(loader, n, ds)]
    for i in range(n):
        assert torch.equal(got[i], offline[i]["input_ids"]), i
        assert got[i][0] == eos  # every block starts a document
    dropped = ds.tokens_dropped()
    assert 0 < dropped
