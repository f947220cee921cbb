"""lmtrain.data.shard_cache: shards written apart and assembled make the very cache build_token_cache makes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import lmtrain.data.token_cache as tokmod
from lmtrain.data.bpe import train_bpe_tokenizer
from lmtrain.data.encoders import best_encoder
from lmtrain.data.readers import sample_corpus_files
from lmtrain.data.readers import text as text_reader
from lmtrain.data.shard_cache import (
    ShardWriter,
    assemble,
    assemble_if_complete,
    cache_dir_of,
    missing_shards,
    staging_dir,
    write_shard,
)
from lmtrain.data.shard_reader import iter_units
from lmtrain.data.shards import plan_shards
from lmtrain.data.token_cache import build_token_cache
from lmtrain.errors import DataError
from tests.data.test_shards import make_corpus


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(sample_corpus_files(), vocab_size=512)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), seed=5)


def same_files(a: Path, b: Path) -> None:
    for name in ("tokens.bin", "doc_offsets.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    meta_a, meta_b = json.loads((a / "meta.json").read_text()), json.loads((b / "meta.json").read_text())
    assert meta_a == meta_b


def write_all(shards, tokenizer, staging):
    encode = best_encoder(tokenizer)  # one for all shards, as each rank has
    for s in shards:
        write_shard(s, tokenizer, staging, encode=encode)
    encode.close()


@pytest.mark.parametrize("append_eos", [True, False])
def test_assembled_cache_is_build_token_cache_s_byte_for_byte(tokenizer, corpus, tmp_path, monkeypatch, append_eos):
    monkeypatch.setattr(text_reader, "PIECE_CHARS", 900)
    root = tmp_path / "cache"
    staging = staging_dir(corpus, tokenizer, root, append_eos=append_eos)
    shards = plan_shards(corpus, target_bytes=5000)
    assert len(shards) > 20
    write_all(shards, tokenizer, staging)
    cache = assemble(staging, shards, tokenizer, append_eos=append_eos)
    assert not staging.exists() and [p.name for p in root.iterdir()] == [cache.path.name]
    fresh = build_token_cache(corpus, tokenizer, cache_dir=tmp_path / "fresh", append_eos=append_eos)
    assert cache.path.name == fresh.path.name and cache.fingerprint == fresh.fingerprint
    same_files(cache.path, fresh.path)

    # build_token_cache finds it warm: nothing is tokenized again
    monkeypatch.setattr(tokmod, "_write_cache", lambda *a, **k: pytest.fail("re-tokenized a warm cache"))
    warm = build_token_cache(corpus, tokenizer, cache_dir=root, append_eos=append_eos)
    assert warm.path == cache.path
    monkeypatch.undo()
    monkeypatch.setattr(text_reader, "PIECE_CHARS", 900)
    rebuilt = build_token_cache(corpus, tokenizer, cache_dir=root, append_eos=append_eos, overwrite=True)
    assert np.array_equal(warm.tokens, rebuilt.tokens) and np.array_equal(warm.doc_offsets, rebuilt.doc_offsets)


def test_assemble_if_complete_waits_for_every_shard(tokenizer, corpus, tmp_path):
    files = corpus[:3]
    staging = staging_dir(files, tokenizer, tmp_path)
    shards = plan_shards(files, target_bytes=20000)
    assert missing_shards(staging, shards) == [s.index for s in shards]
    write_all(shards[1:], tokenizer, staging)
    assert missing_shards(staging, shards) == [0]
    assert assemble_if_complete(staging, shards, tokenizer) is None
    write_shard(shards[0], tokenizer, staging)
    cache = assemble_if_complete(staging, shards, tokenizer)
    assert cache is not None and cache.path == cache_dir_of(staging) and not staging.exists()
    # a later writer (a streaming worker that read a shard again) leaves a staging dir; the next call tidies up
    write_shard(shards[0], tokenizer, staging)
    again = assemble_if_complete(staging, shards, tokenizer)
    assert again is not None and again.path == cache.path and not staging.exists()
    same_files(cache.path, build_token_cache(files, tokenizer, cache_dir=tmp_path / "fresh").path)


def test_a_shard_from_another_plan_is_not_taken(tokenizer, corpus, tmp_path):
    files = corpus[1:2]  # b.jsonl
    staging = staging_dir(files, tokenizer, tmp_path)
    write_all(plan_shards(files, target_bytes=7000), tokenizer, staging)
    other = plan_shards(files, target_bytes=9000)
    assert len(missing_shards(staging, other)) >= len(other) - 1  # same index, other bytes: not the same shard
    write_all(other, tokenizer, staging)
    same_files(assemble(staging, other, tokenizer).path, build_token_cache(files, tokenizer, tmp_path / "f").path)


def test_writer_is_atomic_and_takes_units_as_streaming_reads_them(tokenizer, corpus, tmp_path):
    shard = plan_shards(corpus[:1], target_bytes=10**9)[0]
    staging = tmp_path / "tokens-x.shards"
    ids = tokenizer("a b c", add_special_tokens=False)["input_ids"]
    writer = ShardWriter(staging, shard, np.uint16)
    writer.add(np.array(ids), False, "a b c")
    assert missing_shards(staging, [shard]) == [0]  # nothing visible before close
    writer.abort()
    assert list(staging.iterdir()) == []
    with pytest.raises(RuntimeError):
        with ShardWriter(staging, shard, np.uint16) as w:
            w.add(np.array(ids), True, "a b c")
            raise RuntimeError
    assert list(staging.iterdir()) == []
    writer = ShardWriter(staging, shard, np.uint16)
    writer.add(np.array(ids), True, "a b c")
    assert writer.close() == staging / ShardWriter.file_name(shard)
    assert missing_shards(staging, [shard]) == []
    late = ShardWriter(staging, shard, np.uint16)
    late.add(np.array(ids), True, "a b c")
    for p in staging.iterdir():
        p.unlink()
    staging.rmdir()  # assembled and removed by another process meanwhile
    assert late.close() is None


def test_bad_ids_and_files_without_text_raise_the_cache_errors(tokenizer, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n' * 2000, encoding="utf-8")
    shards = plan_shards([empty], target_bytes=4000)
    assert len(shards) > 1
    staging = staging_dir([empty], tokenizer, tmp_path)
    write_all(shards, tokenizer, staging)  # no shard holds the whole file: the assembly notices
    with pytest.raises(DataError, match="empty.jsonl has no text in column 'text'"):
        assemble(staging, shards, tokenizer)

    text = tmp_path / "t.txt"
    text.write_text("some words", encoding="utf-8")
    (shard,) = plan_shards([text])
    staging = staging_dir([text], tokenizer, tmp_path)
    with ShardWriter(staging, shard, np.uint16) as w:
        w.add(np.array([5, len(tokenizer) + 3]), True, "some words")
        w.close()
    with pytest.raises(DataError, match=f"token id {len(tokenizer) + 3}, outside its vocabulary"):
        assemble(staging, [shard], tokenizer)


def test_units_resumed_by_a_writer_match(tokenizer, corpus, tmp_path):
    """What a streaming reader does: encode units as they come and hand them to the writer."""
    shards = plan_shards(corpus, target_bytes=8000)
    staging = staging_dir(corpus, tokenizer, tmp_path)
    for s in shards:
        with ShardWriter(staging, s, np.uint16) as w:
            for u in iter_units(s):
                w.add(np.array(tokenizer(u.text, add_special_tokens=False)["input_ids"]), u.doc_end, u.text)
            w.close()
    cache = assemble_if_complete(staging, shards, tokenizer)
    assert cache is not None
    same_files(cache.path, build_token_cache(corpus, tokenizer, cache_dir=tmp_path / "fresh").path)


def test_racing_assemblers_both_get_the_one_cache(tokenizer, corpus, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    files = corpus[:2]
    staging = staging_dir(files, tokenizer, tmp_path)
    shards = plan_shards(files, target_bytes=10000)
    write_all(shards, tokenizer, staging)
    with ThreadPoolExecutor(2) as pool:
        caches = list(pool.map(lambda _: assemble_if_complete(staging, shards, tokenizer), range(2)))
    fresh = build_token_cache(files, tokenizer, cache_dir=tmp_path / "fresh")
    for cache in caches:
        assert cache is not None and cache.path == fresh.path.parent.parent / cache.path.name
        assert np.array_equal(cache.tokens, fresh.tokens)
    assert [p.name for p in tmp_path.iterdir() if p.name != "fresh"] == [fresh.path.name]


@pytest.mark.parametrize("errors", ["replace", "ignore"])
def test_invalid_utf8_decoded_alike(tokenizer, tmp_path, errors, monkeypatch):
    monkeypatch.setattr(text_reader, "PIECE_CHARS", 300)
    junk = [b"\xff", b"\xc3", b"\xe6\xbc", b"\xed\xa0\x80", b"\xf0\x9f\x99"]  # bad, cut off, surrogate
    words = [b"word", b"caf\xc3\xa9", b" ", b"\n", b"  "] + junk
    rng = np.random.default_rng(0)
    text = b"".join(words[i] for i in rng.integers(0, len(words), 20000))
    (tmp_path / "t.txt").write_bytes(text)
    chunks = [text[i : i + 200].replace(b"\n", b"\\n") for i in range(0, 40000, 200)]  # JSON-escaped newlines
    (tmp_path / "t.jsonl").write_bytes(b"".join(b'{"text": "' + c + b'"}\n' for c in chunks))
    files = [tmp_path / "t.txt", tmp_path / "t.jsonl"]
    staging = staging_dir(files, tokenizer, tmp_path / "c", encoding_errors=errors)
    shards = plan_shards(files, target_bytes=3000)
    encode = best_encoder(tokenizer)
    for s in shards:
        write_shard(s, tokenizer, staging, encoding_errors=errors, encode=encode)
    cache = assemble(staging, shards, tokenizer)
    same_files(cache.path, build_token_cache(files, tokenizer, tmp_path / "fresh", encoding_errors=errors).path)
