"""lmtrain.data.shard_reader: units of the planned shards give the token cache's ids and resume exactly."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from lmtrain.data.bpe import train_bpe_tokenizer
from lmtrain.data.encoders import hf_encoder
from lmtrain.data.readers import iter_documents, sample_corpus_files
from lmtrain.data.readers import text as text_reader
from lmtrain.data.shard_reader import iter_units
from lmtrain.data.shards import Shard, plan_shards
from lmtrain.data.token_cache import build_token_cache
from lmtrain.errors import DataError
from tests.data.test_shards import make_corpus


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(sample_corpus_files(), vocab_size=512)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def units_of(shards, split_text=True, **kw):
    return [list(iter_units(s, split_text=split_text, **kw)) for s in shards]


def cache_of_units(tokenizer, units_per_shard):
    """Encode every unit, EOS after each document's last: (tokens, doc_offsets, bytes)."""
    encode = hf_encoder(tokenizer)
    flat = [u for units in units_per_shard for u in units]
    ids: list[int] = []
    offsets = [0]
    for u, piece in zip(flat, encode([u.text for u in flat])):
        ids += piece
        if u.doc_end:
            ids.append(tokenizer.eos_token_id)
            offsets.append(len(ids))
    return ids, offsets, sum(len(u.text.encode()) for u in flat)


@pytest.mark.parametrize("piece_chars", [700, None])
def test_units_of_all_shards_give_the_token_cache(tokenizer, corpus, tmp_path, monkeypatch, piece_chars):
    if piece_chars:  # many pieces per shard; None: the real piece size
        monkeypatch.setattr(text_reader, "PIECE_CHARS", piece_chars)
    shards = plan_shards(corpus, target_bytes=6000)
    kinds = {(s.path.name, s.kind) for s in shards}
    assert {("a.txt", "bytes"), ("b.jsonl", "bytes"), ("g.json", "bytes"), ("e.parquet", "row_groups")} <= kinds
    assert {("c.jsonl.gz", "file"), ("d.csv", "file"), ("f.json", "file"), ("h.txt.gz", "file")} <= kinds
    assert sum(s.path.name == "a.txt" for s in shards) >= 8 and sum(s.path.name == "b.jsonl" for s in shards) >= 8
    assert [s.index for s in shards] == list(range(len(shards)))
    ids, offsets, num_bytes = cache_of_units(tokenizer, units_of(shards))
    cache = build_token_cache(corpus, tokenizer, cache_dir=tmp_path)
    assert cache.tokens.tolist() == ids
    assert cache.doc_offsets.tolist() == offsets
    assert cache.num_bytes == num_bytes


def test_without_split_text_every_document_is_one_unit(tokenizer, corpus, tmp_path, monkeypatch):
    shards = plan_shards(corpus, target_bytes=6000, split_text=False)
    assert [s.kind for s in shards if s.path.name == "a.txt"] == ["file"]  # a .txt is not cut
    units = units_of(shards, split_text=False)
    docs = list(iter_documents(corpus))
    assert [u.text for us in units for u in us] == docs and all(u.doc_end for us in units for u in us)
    import lmtrain.data.token_cache as tokmod

    monkeypatch.setattr(tokmod, "splitting_is_exact", lambda *a: False)  # the cache reads whole documents too
    ids, offsets, _ = cache_of_units(tokenizer, units)
    cache = build_token_cache(corpus, tokenizer, cache_dir=tmp_path)
    assert cache.tokens.tolist() == ids and cache.doc_offsets.tolist() == offsets


@pytest.mark.parametrize("seed", [1, 2])
def test_resuming_from_any_cursor_gives_the_remaining_units(corpus, monkeypatch, seed):
    monkeypatch.setattr(text_reader, "PIECE_CHARS", 500)
    rng = random.Random(seed)
    shards = plan_shards(corpus, target_bytes=rng.randrange(3000, 20000))
    b0 = next(s for s in shards if s.path == corpus[1])  # b.jsonl: its first record ends with a lone '\r'
    first = next(iter_units(b0))
    assert next(iter_units(b0, cursor=first.cursor)).cursor[0] == corpus[1].read_bytes().index(b"\r") + 1
    for shard in shards:
        units = list(iter_units(shard))
        assert units, shard
        json.dumps([u.cursor for u in units])  # JSON-able
        picks = range(len(units)) if len(units) <= 40 else sorted(rng.sample(range(len(units)), 40))
        for i in picks:
            again = list(iter_units(shard, cursor=units[i].cursor))
            assert again == units[i + 1 :], (shard, i)


def test_arbitrary_byte_ranges_own_each_line_once(corpus):
    """Ranges need not start at a line: each owns the lines that start in it (Hadoop-style)."""
    path = corpus[1]  # b.jsonl
    size = path.stat().st_size
    rng = random.Random(3)
    cuts = sorted({0, size, *rng.sample(range(1, size), 40)})
    shards = [Shard(i, path, "bytes", a, b, b - a) for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]
    texts = [u.text for s in shards for u in iter_units(s, split_text=False)]
    assert texts == list(iter_documents([path]))


def test_errors_are_the_readers_one_line_errors(tmp_path):
    good = "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(200))
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "{not json\n" + good, encoding="utf-8")
    with pytest.raises(DataError) as expected:
        list(iter_documents([path]))
    shards = plan_shards([path], target_bytes=500)
    with pytest.raises(DataError) as got:
        for s in shards:
            list(iter_units(s))
    assert str(got.value) == str(expected.value) and ":201 is not valid JSON" in str(got.value)

    path.write_bytes(good.encode() + b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataError) as expected:
        list(iter_documents([path]))
    with pytest.raises(DataError) as got:
        for s in plan_shards([path], target_bytes=500):
            list(iter_units(s))
    assert str(got.value) == str(expected.value) and "not valid UTF-8" in str(got.value)

    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n\n{"text": null}\n', encoding="utf-8")
    with pytest.raises(DataError, match="has no text in column 'text'"):
        list(iter_units(plan_shards([empty])[0]))
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(DataError, match="bom.txt is empty"):
        list(iter_units(plan_shards([bom])[0]))
    with pytest.raises(DataError, match="no such file"):
        plan_shards([tmp_path / "missing.jsonl"])
    named = tmp_path / "packed.jsonl"
    named.write_bytes(gzip.compress(good.encode()))
    with pytest.raises(DataError, match="gzip-compressed; name it packed.jsonl.gz"):
        plan_shards([named])


def test_parquet_shards_take_several_row_groups_and_resume_in_their_own(corpus):
    path = corpus[4]  # e.parquet: 60 rows, 7 per group
    shards = plan_shards([path], target_bytes=path.stat().st_size // 3)
    assert len(shards) >= 2 and all(s.end - s.start >= 2 for s in shards[:-1])
    assert (shards[0].start, shards[-1].end) == (0, 9)
    units = [u for s in shards for u in iter_units(s)]
    assert [u.text for u in units] == list(iter_documents([path]))
    assert np.all(np.diff([u.cursor[0] for u in units]) >= 0)
