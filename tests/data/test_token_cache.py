"""Tests for lmtrain.data.token_cache: tokenizing a corpus into a memory-mapped cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import lmtrain.data.token_cache as tokmod
from lmtrain.data.bpe import train_bpe_tokenizer
from lmtrain.data.readers import iter_documents, iter_text_pieces, sample_corpus_files
from lmtrain.data.readers import text as text_reader
from lmtrain.data.token_cache import TokenCache, build_token_cache, default_cache_root
from lmtrain.errors import DataError


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(sample_corpus_files(), vocab_size=512)


@pytest.fixture
def corpus(tmp_path) -> list[Path]:
    (tmp_path / "data").mkdir()
    a = tmp_path / "data" / "a.txt"
    a.write_text("To be, or not to be, that is the question.\nWhether 'tis nobler in the mind\n")
    b = tmp_path / "data" / "b.jsonl"
    b.write_text('{"text": "Hello world"}\n{"text": "naïve café — 漢字"}\n')
    return [a, b]


def expected_ids(tokenizer, files) -> list[int]:
    ids: list[int] = []
    for doc in iter_documents(files):
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids


# --------------------------------------------------------------------------- cache


def test_cache_contents(tokenizer, corpus, tmp_path):
    cache = build_token_cache(corpus, tokenizer, cache_dir=tmp_path / "cache")
    exp = expected_ids(tokenizer, corpus)
    assert isinstance(cache.tokens, np.memmap) and cache.tokens.dtype == np.uint16
    assert cache.tokens.tolist() == exp
    assert cache.num_tokens == len(exp) and cache.num_documents == 3
    assert cache.vocab_size == 512
    assert cache.num_bytes == sum(len(d.encode()) for d in iter_documents(corpus))
    offs = cache.doc_offsets
    assert offs.dtype == np.int64 and len(offs) == 4 and offs[0] == 0 and offs[-1] == len(exp)
    eos = tokenizer.eos_token_id
    assert all(cache.tokens[e - 1] == eos for e in offs[1:])
    assert cache.path.parent == tmp_path / "cache" and cache.path.name.startswith("tokens-")
    meta = json.loads((cache.path / "meta.json").read_text())
    assert meta["num_tokens"] == len(exp) and meta["dtype"] == "uint16"


def test_cache_matches_per_document_encoding_of_sample(tokenizer, tmp_path):
    # Sample documents are longer than one encoding piece: checks piecewise encoding is exact.
    files = sample_corpus_files()
    cache = build_token_cache(files, tokenizer, cache_dir=tmp_path)
    assert np.array_equal(np.asarray(cache.tokens), np.array(expected_ids(tokenizer, files)))
    for i, doc in enumerate(iter_documents(files)):
        a, b = cache.doc_offsets[i], cache.doc_offsets[i + 1]
        assert tokenizer.decode(cache.tokens[a : b - 1].tolist()) == doc


def test_cache_without_eos(tokenizer, corpus, tmp_path):
    cache = build_token_cache(corpus, tokenizer, cache_dir=tmp_path, append_eos=False)
    exp = [i for d in iter_documents(corpus) for i in tokenizer(d, add_special_tokens=False)["input_ids"]]
    assert cache.tokens.tolist() == exp


def test_cache_reused_not_rebuilt(tokenizer, corpus, tmp_path, monkeypatch):
    first = build_token_cache(corpus, tokenizer, cache_dir=tmp_path)
    mtime = (first.path / "tokens.bin").stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(tokmod, "_write_cache", lambda *a, **k: calls.append(a))
    start = time.perf_counter()
    second = build_token_cache(corpus, tokenizer, cache_dir=tmp_path)
    assert time.perf_counter() - start < 1.0
    assert not calls
    assert second.path == first.path
    assert np.array_equal(second.tokens, first.tokens)
    assert np.array_equal(second.doc_offsets, first.doc_offsets)
    assert (second.path / "tokens.bin").stat().st_mtime_ns == mtime


def test_cache_overwrite_rebuilds(tokenizer, corpus, tmp_path):
    root = tmp_path / "cache"
    first = build_token_cache(corpus, tokenizer, cache_dir=root)
    (first.path / "marker").write_text("old")
    second = build_token_cache(corpus, tokenizer, cache_dir=root, overwrite=True)
    assert second.path == first.path and not (second.path / "marker").exists()
    assert second.tokens.tolist() == expected_ids(tokenizer, corpus)
    assert [p.name for p in root.iterdir()] == [first.path.name]  # no leftovers


def test_changed_file_changes_fingerprint(tokenizer, corpus, tmp_path):
    first = build_token_cache(corpus, tokenizer, cache_dir=tmp_path)
    corpus[0].write_text("Something else entirely.")
    second = build_token_cache(corpus, tokenizer, cache_dir=tmp_path)
    assert second.path != first.path
    assert second.tokens.tolist() == expected_ids(tokenizer, corpus)


def test_options_change_fingerprint(tokenizer, corpus, tmp_path):
    paths = {
        build_token_cache(corpus, tokenizer, cache_dir=tmp_path).path,
        build_token_cache(corpus, tokenizer, cache_dir=tmp_path, append_eos=False).path,
        build_token_cache(corpus, tokenizer, cache_dir=tmp_path, encoding_errors="replace").path,
    }
    assert len(paths) == 3


def test_leftover_tmp_dir_is_not_a_cache(tokenizer, corpus, tmp_path, monkeypatch):
    # Simulate a build killed half way: it leaves only the temporary directory.
    def crash(out, *args, **kwargs):
        (out / "tokens.bin").write_bytes(b"\0\0")
        raise KeyboardInterrupt

    root = tmp_path / "cache"
    monkeypatch.setattr(tokmod, "_write_cache", crash)
    with pytest.raises(KeyboardInterrupt):
        build_token_cache(corpus, tokenizer, cache_dir=root)
    assert list(root.iterdir()) == []  # temp dir removed on error
    monkeypatch.undo()

    # A stale temp dir from another (dead) process, even one that looks complete.
    good = build_token_cache(corpus, tokenizer, cache_dir=tmp_path / "ref")
    stale = root / f"{good.path.name}.tmp-99999999"
    stale.mkdir()
    for f in good.path.iterdir():
        (stale / f.name).write_bytes(f.read_bytes())
    (stale / "tokens.bin").write_bytes(b"\1\0" * good.num_tokens)
    cache = build_token_cache(corpus, tokenizer, cache_dir=root)
    assert cache.path == root / good.path.name
    assert not stale.exists()  # its process is gone: cleaned up
    assert cache.tokens.tolist() == expected_ids(tokenizer, corpus)


def test_incomplete_final_dir_is_rebuilt(tokenizer, corpus, tmp_path):
    first = build_token_cache(corpus, tokenizer, cache_dir=tmp_path)
    (first.path / "meta.json").unlink()
    with pytest.raises(DataError, match="not a complete token cache"):
        TokenCache.load(first.path)
    again = build_token_cache(corpus, tokenizer, cache_dir=tmp_path)
    assert again.tokens.tolist() == expected_ids(tokenizer, corpus)


def test_load_classmethod(tokenizer, corpus, tmp_path):
    built = build_token_cache(corpus, tokenizer, cache_dir=tmp_path)
    loaded = TokenCache.load(built.path)
    assert loaded.num_tokens == built.num_tokens and loaded.fingerprint == built.fingerprint
    assert loaded.bytes_per_token == pytest.approx(built.num_bytes / built.num_tokens)


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("LMTRAIN_CACHE", str(tmp_path / "x"))
    assert default_cache_root() == tmp_path / "x"
    monkeypatch.delenv("LMTRAIN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "lmtrain"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_root() == Path.home() / ".cache" / "lmtrain"


def test_default_cache_dir_used(tokenizer, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("LMTRAIN_CACHE", str(tmp_path / "env-cache"))
    cache = build_token_cache(corpus, tokenizer)
    assert cache.path.parent == tmp_path / "env-cache"


def test_token_id_outside_vocab(tokenizer, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(tokmod, "best_encoder", lambda tok: lambda texts: [[600] for _ in texts])
    with pytest.raises(DataError, match="token id 600, outside its vocabulary of 512"):
        build_token_cache(corpus, tokenizer, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_no_tokens(tokenizer, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(tokmod, "best_encoder", lambda tok: lambda texts: [[] for _ in texts])
    with pytest.raises(DataError, match="produced no tokens"):
        build_token_cache(corpus, tokenizer, cache_dir=tmp_path, append_eos=False)


def test_uint32_for_large_vocab(tokenizer, corpus, tmp_path, monkeypatch):
    class Big:
        """A tokenizer claiming a vocabulary too large for uint16."""

        eos_token_id = 0
        backend_tokenizer = tokenizer.backend_tokenizer

        def __len__(self):
            return 70_000

    cache = build_token_cache(corpus, Big(), cache_dir=tmp_path)
    assert cache.tokens.dtype == np.uint32
    assert cache.tokens.tolist() == expected_ids(tokenizer, corpus)


def test_missing_input_file(tokenizer, tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        build_token_cache([tmp_path / "nope.txt"], tokenizer, cache_dir=tmp_path)


# --------------------------------------------------------------------------- chunked .txt reading


@pytest.fixture
def small_chunks(monkeypatch):
    """Tiny read chunks and pieces, so a small file exercises the chunked reader."""
    monkeypatch.setattr(text_reader, "_CHUNK", 1000)
    monkeypatch.setattr(text_reader, "PIECE_CHARS", 300)
    monkeypatch.setattr(tokmod, "_BATCH_CHARS", 2000)


def whole_file_ids(tokenizer, path) -> list[int]:
    (doc,) = list(iter_documents([path]))
    return tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "tokenizers"])
def test_txt_read_in_chunks_gives_whole_document_ids(tokenizer, tmp_path, small_chunks, monkeypatch, fast):
    if not fast:
        monkeypatch.setenv("LMTRAIN_NO_FAST_BPE", "1")
    text = "".join(d[:6000] for d in iter_documents(sample_corpus_files()))
    text = "\ufeff" + text.replace("\n", "\r\n", 40) + "  tail\n\n  \n" + "x" * 2500 + " end é漢🙂\n"
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    pieces = list(iter_text_pieces(path, "strict"))
    assert "".join(pieces) == text[1:]  # the BOM is dropped, as the reader does
    assert len(pieces) > 10 and max(map(len, pieces)) < 4000  # bounded, whatever the file size
    cache = build_token_cache([path], tokenizer, cache_dir=tmp_path / "c")
    assert cache.tokens.tolist() == whole_file_ids(tokenizer, path)
    assert cache.num_documents == 1 and cache.num_bytes == len(text[1:].encode())


def test_txt_gz_read_in_chunks(tokenizer, tmp_path, small_chunks):
    import gzip

    text = next(iter(iter_documents(sample_corpus_files())))[:20_000]
    path = tmp_path / "a.txt.gz"
    path.write_bytes(gzip.compress(text.encode()))
    cache = build_token_cache([path], tokenizer, cache_dir=tmp_path / "c")
    assert cache.tokens.tolist() == whole_file_ids(tokenizer, path)


def test_txt_errors_are_the_readers(tokenizer, tmp_path, small_chunks):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n" * 300 + b"\xff\xfe oops\n")
    with pytest.raises(DataError, match=r"bad.txt is not valid UTF-8 at byte 3000 \(line 301\)"):
        build_token_cache([bad], tokenizer, cache_dir=tmp_path / "c")
    cache = build_token_cache([bad], tokenizer, cache_dir=tmp_path / "c", encoding_errors="replace")
    (doc,) = list(iter_documents([bad], encoding_errors="replace"))
    assert cache.tokens.tolist() == tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.txt is empty"):
        build_token_cache([empty], tokenizer, cache_dir=tmp_path / "c")
    bom_only = tmp_path / "bom.txt"
    bom_only.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(DataError, match="bom.txt is empty"):
        build_token_cache([bom_only], tokenizer, cache_dir=tmp_path / "c")
    gz = tmp_path / "plain.txt.gz"
    gz.write_text("not compressed")
    with pytest.raises(DataError, match="is not gzip-compressed"):
        build_token_cache([gz], tokenizer, cache_dir=tmp_path / "c")
    assert [p.name for p in (tmp_path / "c").iterdir()] == [cache.path.name]  # no leftovers


def test_progress_bar_in_bytes(tokenizer, corpus, tmp_path, capsys):
    build_token_cache(corpus, tokenizer, cache_dir=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "tokenizing" in err and "B" in err
    build_token_cache(corpus, tokenizer, cache_dir=tmp_path / "quiet", overwrite=True)
    assert capsys.readouterr().err == ""  # not a terminal: quiet
