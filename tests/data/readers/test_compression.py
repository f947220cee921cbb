"""Tests for lmtrain.data.readers.compression: every text format read through gzip, zstd, bzip2 and xz."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import random

import pytest

import lmtrain.data.readers.text as text_reader
from lmtrain.data.readers import (
    SUPPORTED_EXTENSIONS,
    compression_of,
    is_text_file,
    iter_documents,
    iter_text_pieces,
    open_bytes,
    read_errors,
    resolve_files,
)
from tests.data.readers.helpers import doc_error, docs, error_of, write

zstandard = pytest.importorskip("zstandard")

CODECS = ("gz", "zst", "bz2", "xz")
FORMAT = {"gz": "gzip", "zst": "zstd", "bz2": "bzip2", "xz": "xz"}


def compress(data: bytes, codec: str) -> bytes:
    if codec == "gz":
        return gzip.compress(data)
    if codec == "zst":
        return zstandard.ZstdCompressor(write_checksum=True).compress(data)
    if codec == "bz2":
        return bz2.compress(data)
    return lzma.compress(data)  # .xz


RECORDS = ["first document", "naïve café — 漢字 🙂", 'quote " and, comma\nand a second line', "last"]
CONTENT = {
    ".txt": "\ufeffOne text file,\nnaïve café — 漢字 🙂\n\n  is one document.\n",
    ".jsonl": "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(RECORDS)),
    ".json": json.dumps([{"text": t} for t in RECORDS], indent=1),
    ".csv": "id,text\n" + "".join(f'{i},"{t.replace(chr(34), 2 * chr(34))}"\n' for i, t in enumerate(RECORDS)),
}


def some_text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat.", "naïve", "漢字", "🙂", "word\n", "end.\n\n"]
    return " ".join(rng.choice(words) for _ in range(n_words))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("base", [".txt", ".jsonl", ".json", ".csv"])
def test_every_format_and_codec_gives_the_plain_files_documents(tmp_path, base, codec):
    data = CONTENT[base].encode()
    plain = write(tmp_path / f"a{base}", data)
    packed = write(tmp_path / f"b{base}.{codec}", compress(data, codec))
    expected = docs(plain)
    assert expected == (RECORDS if base != ".txt" else [CONTENT[".txt"][1:]])
    assert compression_of(packed) == codec and compression_of(plain) is None
    assert docs(packed) == expected
    assert resolve_files([tmp_path]) == [plain, packed]


def test_names():
    for codec in CODECS:
        for base in (".txt", ".jsonl", ".json", ".csv"):
            assert base + "." + codec in SUPPORTED_EXTENSIONS
        assert is_text_file(f"dir/A.TXT.{codec.upper()}") and not is_text_file(f"a.jsonl.{codec}")
        assert compression_of(f"x/a.JSONL.{codec.upper()}") == codec
    assert compression_of("a.parquet") is None and compression_of("a.txt") is None


def test_unsupported_file_lists_the_codecs(tmp_path):
    f = write(tmp_path / "a.jsonl.lz4", "x")
    msg = error_of(resolve_files, [f])
    assert "unsupported" in msg and ".gz, .zst, .bz2, .xz" in msg


@pytest.fixture
def small_pieces(monkeypatch):
    """Tiny read chunks and pieces, so a small file is read in many chunks and cut in many pieces."""
    monkeypatch.setattr(text_reader, "_CHUNK", 100)
    monkeypatch.setattr(text_reader, "PIECE_CHARS", 50)


@pytest.mark.parametrize("codec", CODECS)
def test_text_pieces_of_compressed_txt(tmp_path, small_pieces, codec):
    text = some_text(3000)
    f = write(tmp_path / f"a.txt.{codec}", compress(text.encode(), codec))
    read: list[int] = []
    pieces = list(iter_text_pieces(f, on_read=read.append))
    assert "".join(pieces) == docs(f)[0] == text and len(pieces) > 20
    assert read == sorted(read) and read[-1] == f.stat().st_size  # compressed bytes read so far


def test_open_bytes_is_the_decompressed_stream(tmp_path):
    data = some_text(500).encode()
    for codec in CODECS:
        f = write(tmp_path / f"a.jsonl.{codec}", compress(data, codec))
        with read_errors(f, compression_of(f)), open_bytes(f, compression_of(f)) as raw:
            assert raw.read() == data


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("codec", CODECS)
def test_truncated_and_corrupt_files(tmp_path, codec):
    data = compress("".join(json.dumps({"text": t}) + "\n" for t in some_text(20_000).split()).encode(), codec)
    cut = write(tmp_path / f"cut.jsonl.{codec}", data[: len(data) // 2])
    data = compress(some_text(20_000).encode(), codec)
    flipped = bytearray(data)
    middle = len(data) // 2
    flipped[middle : middle + 8] = bytes(b ^ 0x55 for b in flipped[middle : middle + 8])
    # a .txt: gzip and bzip2 check their CRCs only after handing out the (garbled) data
    bad = write(tmp_path / f"bad.txt.{codec}", bytes(flipped))
    for f in (cut, bad):
        msg = doc_error(f)
        assert msg.startswith(f"{f} is a corrupt or truncated {FORMAT[codec]} file (") and msg.endswith(
            "; re-create it"
        )
    assert error_of(lambda: list(iter_text_pieces(bad))) == doc_error(bad)
    cut_txt = write(tmp_path / f"cut.txt.{codec}", data[: len(data) // 2])
    assert error_of(lambda: list(iter_text_pieces(cut_txt))) == doc_error(cut_txt)


@pytest.mark.parametrize("codec", CODECS)
def test_misnamed_compression(tmp_path, codec):
    data = compress(b"some text", codec)
    hidden = write(tmp_path / "a.txt", data)
    assert doc_error(hidden) == f"{hidden} is {FORMAT[codec]}-compressed; name it a.txt.{codec}"
    plain = write(tmp_path / f"b.jsonl.{codec}", '{"text": "x"}\n')
    assert doc_error(plain) == f"{plain} is not {FORMAT[codec]}-compressed; remove the .{codec} from its name"
    other = "xz" if codec != "xz" else "gz"
    wrong = write(tmp_path / f"c.csv.{other}", data)
    assert doc_error(wrong) == f"{wrong} is {FORMAT[codec]}-compressed, not {FORMAT[other]}; name it c.csv.{codec}"
    assert error_of(lambda: list(iter_text_pieces(hidden))) == doc_error(hidden)


def test_text_that_starts_like_a_bzip2_header_is_text(tmp_path):
    f = write(tmp_path / "a.txt", "BZh9 is how a bzip2 file starts")
    assert docs(f) == ["BZh9 is how a bzip2 file starts"]


@pytest.mark.parametrize("codec", CODECS)
def test_invalid_utf8_inside_compressed_file_reports_the_offset(tmp_path, codec):
    f = write(tmp_path / f"bad.txt.{codec}", compress(b"hello\nwor\xffld", codec))
    expected = f"{f} is not valid UTF-8 at byte 9 (line 2); convert it, or pass --encoding_errors replace"
    assert doc_error(f) == expected
    assert error_of(lambda: list(iter_text_pieces(f))) == expected
    g = write(tmp_path / f"bad.jsonl.{codec}", compress(b'{"text": "ok"}\n{"text": "\xe9\xe9"}\n', codec))
    assert "at byte 25 (line 2)" in doc_error(g)


def test_empty_compressed_file(tmp_path):
    for codec in CODECS:
        f = write(tmp_path / f"e.txt.{codec}", compress(b"", codec))
        assert doc_error(f) == f"{f} is empty; remove it or add text"


def test_zstandard_missing(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "zstandard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    f = write(tmp_path / "a.jsonl.zst", compress(b'{"text": "x"}\n', "zst"))
    assert doc_error(f) == f"reading {f} needs zstandard; pip install zstandard"


# --------------------------------------------------------------------------- zstd frames


def test_multi_frame_zstd(tmp_path, small_pieces):
    parts = [some_text(400, seed=i) for i in range(4)]
    cctx = zstandard.ZstdCompressor()
    skippable = b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"12345"  # as pzstd writes
    data = skippable + cctx.compress(parts[0].encode()) + cctx.compress(parts[1].encode())
    streamed = zstandard.ZstdCompressor(write_checksum=True).compressobj()  # no content size in the header
    data += streamed.compress(parts[2].encode()) + streamed.flush() + skippable + cctx.compress(parts[3].encode())
    f = write(tmp_path / "multi.txt.zst", data)
    assert docs(f) == ["".join(parts)]
    assert "".join(iter_text_pieces(f)) == "".join(parts)
    cut = write(tmp_path / "cut.txt.zst", data[:-3])  # the last frame loses its end: zstd itself says nothing
    assert doc_error(cut).startswith(f"{cut} is a corrupt or truncated zstd file (the file ends inside a frame")
    junk = write(tmp_path / "junk.txt.zst", data + b"trailing junk")
    assert doc_error(junk).startswith(f"{junk} is a corrupt or truncated zstd file (no zstd frame at byte")


# --------------------------------------------------------------------------- folders and globs


def test_folder_of_mixed_shards(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    d = tmp_path / "corpus"
    a = write(d / "a.jsonl.zst", compress(b'{"text": "a1"}\n{"text": "a2"}\n', "zst"))
    b = write(d / "b" / "b.txt.xz", compress("b, one text".encode(), "xz"))
    c = d / "c.parquet"
    pq.write_table(pa.table({"text": ["c1", "c2", "c3"]}), c, row_group_size=2)
    write(d / ".hidden.jsonl.zst", compress(b'{"text": "hidden"}\n', "zst"))
    write(d / ".cache" / "x.txt.bz2", compress(b"hidden", "bz2"))
    write(d / "notes.md", "not data")
    files = resolve_files([d])
    assert files == [a, b, c]
    assert list(iter_documents(files)) == ["a1", "a2", "b, one text", "c1", "c2", "c3"]


def test_glob_of_shards(tmp_path):
    shards = []
    for i in range(3):
        data = "".join(json.dumps({"text": f"doc {i}.{j}"}) + "\n" for j in range(2)).encode()
        shards.append(write(tmp_path / f"train-{i:05d}-of-00003.jsonl.zst", compress(data, "zst")))
    write(tmp_path / "valid-00000-of-00001.jsonl.zst", compress(b'{"text": "v"}\n', "zst"))
    files = resolve_files([str(tmp_path / "train-*.jsonl.zst")])
    assert files == shards
    assert docs(*files) == [f"doc {i}.{j}" for i in range(3) for j in range(2)]


# --------------------------------------------------------------------------- the token cache


def test_token_cache_of_compressed_files_is_the_plain_ones(tmp_path, monkeypatch):
    from lmtrain.data.bpe import train_bpe_tokenizer
    from lmtrain.data.readers import sample_corpus_files
    from lmtrain.data.token_cache import build_token_cache

    monkeypatch.setattr(text_reader, "_CHUNK", 1000)  # the .txt is streamed in many pieces
    monkeypatch.setattr(text_reader, "PIECE_CHARS", 300)
    tokenizer = train_bpe_tokenizer(sample_corpus_files(), vocab_size=512)
    text = some_text(4000)
    records = "".join(json.dumps({"text": t}) + "\n" for t in text.split("\n\n")).encode()
    for name, data, codec in (
        ("a.jsonl", records, "zst"),
        ("b.txt", text.encode(), "zst"),
        ("c.txt", text.encode(), "xz"),
    ):
        plain = write(tmp_path / "plain" / name, data)
        packed = write(tmp_path / "packed" / f"{name}.{codec}", compress(data, codec))
        want = build_token_cache([plain], tokenizer, cache_dir=tmp_path / "cache")
        got = build_token_cache([packed], tokenizer, cache_dir=tmp_path / "cache")
        assert got.path != want.path  # not the same cache entry: both were really built
        assert got.tokens.tolist() == want.tokens.tolist() and got.num_tokens > 1000
        assert got.num_documents == want.num_documents and got.num_bytes == want.num_bytes


def test_a_corrupt_file_is_not_blamed_on_its_encoding(tmp_path):
    data = bytearray(gzip.compress(b"fine \xff text"))
    data[-8] ^= 0xFF  # the CRC: gzip hands out the bytes before it checks them
    f = write(tmp_path / "a.txt.gz", bytes(data))
    assert doc_error(f).startswith(f"{f} is a corrupt or truncated gzip file (CRC check failed")
    assert error_of(lambda: list(iter_text_pieces(f))) == doc_error(f)
