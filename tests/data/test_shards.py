"""lmtrain.data.shards: a shard plan, and a shard reader whose units give the token cache's ids and resume exactly."""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from lmtrain.data import shards as shards_mod
from lmtrain.data.bpe import train_bpe_tokenizer
from lmtrain.data.encoders import hf_encoder
from lmtrain.data.readers import PIECE_BOUNDARY, iter_documents, sample_corpus_files
from lmtrain.data.readers import text as text_reader
from lmtrain.data.shards import Shard, find_boundary, iter_units, plan_shards
from lmtrain.data.token_cache import build_token_cache
from lmtrain.errors import DataError

# words and separators chosen to test the cut points: multi-byte characters, and whitespace that is
# not ASCII (no cut beside it) or not single (no cut inside it)
WORDS = ["the", "quick", "naïve", "café", "漢字", "🙂", "e\u0301", "x", "it's", "42", "—", "Ünïcödé", "z"]
SEPARATORS = [" "] * 12 + ["\n"] * 3 + ["  ", "\n\n", "\t", "\u00a0", " \n", "\u3000", "\x85", "\r\n", "\x1c"]


def prose(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    n = 0
    while n < chars:
        w = rng.choice(WORDS) + rng.choice(SEPARATORS)
        out.append(w)
        n += len(w)
    return "".join(out)


def make_corpus(root: Path, seed: int = 0, scale: int = 1) -> list[Path]:
    """Every format the shards treat differently, with the cases their readers must get right."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    files = []

    def add(name: str) -> Path:
        files.append(root / name)
        return files[-1]

    add("a.txt").write_bytes(b"\xef\xbb\xbf" + prose(rng, 60_000 * scale).encode())  # a byte-order mark first
    records = []
    for i in range(300 * scale):
        r = rng.random()
        text = prose(rng, rng.choice([5, 40, 300])) if r > 0.1 else prose(rng, 5000) if r > 0.05 else ""
        records.append({"text": text if r > 0.02 else None, "id": i})
    lines = [json.dumps(rec, ensure_ascii=rng.random() < 0.5) for rec in records]
    body = "".join(line + rng.choice(["\n", "\n", "\r\n", "\n\n", "\n  \n"]) for line in lines)
    body = body.replace("\n", "\r", 1)  # one lone '\r' line end (a text stream splits lines there too)
    add("b.jsonl").write_bytes(b"\xef\xbb\xbf" + body.encode())
    with gzip.open(add("c.jsonl.gz"), "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps({"text": prose(rng, 200)}) + "\n" for _ in range(40 * scale)))
    with open(add("d.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i in range(30):
            w.writerow([i, prose(rng, 100) if i % 7 else ""])
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [prose(rng, 150) if i % 9 else (None if i % 2 else "") for i in range(60 * scale)]
    pq.write_table(pa.table({"text": texts}), add("e.parquet"), row_group_size=7)
    add("f.json").write_text(json.dumps([{"text": prose(rng, 80)} for _ in range(10)]), encoding="utf-8")
    add("g.json").write_text(
        "\n  \n" + "".join(json.dumps({"text": prose(rng, 120)}) + "\n" for _ in range(50)), encoding="utf-8"
    )
    with gzip.open(add("h.txt.gz"), "wt", encoding="utf-8") as f:
        f.write(prose(rng, 20_000))
    add("i.txt").write_text("short and no newline at the end", encoding="utf-8")
    import bz2
    import lzma

    import zstandard

    jsonl = "".join(json.dumps({"text": prose(rng, 90)}) + "\n" for _ in range(20)).encode()
    add("j.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl))
    add("k.txt.xz").write_bytes(lzma.compress(prose(rng, 3000).encode()))
    add("l.jsonl.bz2").write_bytes(bz2.compress(jsonl))
    return files


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


def test_text_cuts_are_piece_boundaries_found_without_reading_the_file(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    text = prose(random.Random(4), 2_000_000)
    path.write_text(text, encoding="utf-8")
    data = path.read_bytes()
    read = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def seek(self, n):
            return self.f.seek(n)

        def read(self, n=-1):
            out = self.f.read(n)
            read.append(len(out))
            return out

    monkeypatch.setattr(shards_mod, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    shards = plan_shards([path], target_bytes=100_000)
    monkeypatch.undo()
    assert len(shards) >= 15 and sum(read) < len(data) // 10  # a window per cut
    for s in shards[1:]:
        before, after = data[: s.start].decode(), data[s.start :].decode()
        whole = before + after
        assert PIECE_BOUNDARY.match(whole, len(before)), s  # the cut is a piece boundary of the text
    assert b"".join(data[s.start : s.end] for s in shards) == data


def test_find_boundary_looks_at_unicode_neighbours():
    assert find_boundary("a b".encode(), 0, 3) == 1
    assert find_boundary("a\u00a0 b c".encode(), 0, 8) == 5  # not beside a no-break space (at 3)
    assert find_boundary("漢 字".encode(), 0, 7) == 3
    assert find_boundary("a\x85 b".encode(), 0, 5) == -1  # NEL is whitespace to Python's \s
    assert find_boundary(b"\xff b", 0, 3) == -1  # invalid UTF-8 beside it: no cut
    assert find_boundary(b"\xef\xbb\xbf x", 0, 5) == -1  # the byte-order mark is dropped when decoding
    assert find_boundary("a 漢".encode()[:3], 0, 3) == -1  # its next character is cut off


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
