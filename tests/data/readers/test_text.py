"""Tests for lmtrain.data.readers.text: .txt files, gzip, UTF-8 errors, and streaming text in pieces."""

from __future__ import annotations

import gzip

import pytest

import lmtrain.data.readers.text as text_reader
from lmtrain.data.readers import is_text_file, iter_text_pieces, split_pieces
from lmtrain.errors import ConfigError
from tests.data.readers.helpers import doc_error, docs, error_of, write


def test_txt_is_one_document(tmp_path):
    f = write(tmp_path / "a.txt", "line one\nline two\n\nline three")
    assert docs(f) == ["line one\nline two\n\nline three"]


def test_txt_strips_bom_and_handles_multibyte_across_chunks(tmp_path, monkeypatch):
    import lmtrain.data.readers.text as text_reader

    monkeypatch.setattr(text_reader, "_CHUNK", 3)  # split multi-byte characters between reads
    text = "naïve café 漢字 ünïcödé"
    f = write(tmp_path / "a.txt", b"\xef\xbb\xbf" + text.encode())
    assert docs(f) == [text]


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("a.txt.gz", "plain text", ["plain text"]),
        ("a.jsonl.gz", '{"text": "j"}\n', ["j"]),
        ("a.json.gz", '[{"text": "k"}]', ["k"]),
        ("a.csv.gz", "text\nc\n", ["c"]),
    ],
)
def test_gzip_variants(tmp_path, name, content, expected):
    f = write(tmp_path / name, gzip.compress(content.encode()))
    assert docs(f) == expected


def test_empty_gz_file(tmp_path):
    f = write(tmp_path / "e.txt.gz", gzip.compress(b""))
    assert doc_error(f) == f"{f} is empty; remove it or add text"


def test_invalid_utf8_reports_offset(tmp_path):
    f = write(tmp_path / "bad.txt", b"hello\nwor\xffld")
    msg = doc_error(f)
    assert msg == (f"{f} is not valid UTF-8 at byte 9 (line 2); convert it, or pass --encoding_errors replace")


def test_invalid_utf8_offset_across_chunks(tmp_path, monkeypatch):
    import lmtrain.data.readers.text as text_reader

    monkeypatch.setattr(text_reader, "_CHUNK", 4)
    f = write(tmp_path / "bad.jsonl", b'{"text": "ok"}\n{"text": "\xe9\xe9"}\n')
    msg = doc_error(f)
    assert "at byte 25 (line 2)" in msg and str(f) in msg


def test_invalid_utf8_replace_goes_on(tmp_path):
    f = write(tmp_path / "bad.txt", b"wor\xffld")
    assert docs(f, encoding_errors="replace") == ["wor\ufffdld"]
    g = write(tmp_path / "bad.csv", b"text\nwor\xffld\n")
    assert docs(g, encoding_errors="replace") == ["wor\ufffdld"]


def test_gzip_data_without_gz_name(tmp_path):
    f = write(tmp_path / "a.txt", gzip.compress(b"secret"))
    assert doc_error(f) == f"{f} is gzip-compressed; name it a.txt.gz"


def test_gz_name_without_gzip_data(tmp_path):
    f = write(tmp_path / "a.txt.gz", "plain")
    msg = doc_error(f)
    assert str(f) in msg and "not gzip-compressed" in msg


def test_truncated_gzip(tmp_path):
    data = gzip.compress(b"x" * 10_000)
    f = write(tmp_path / "a.txt.gz", data[: len(data) // 2])
    msg = doc_error(f)
    assert str(f) in msg and "gzip" in msg


# --------------------------------------------------------------------------- text in pieces


def test_split_document_pieces_rejoin():
    doc = ("line of text\n" * 20_000) + "  indented\n\n" + "tail"
    pieces = split_pieces(doc)
    assert "".join(pieces) == doc and len(pieces) > 1
    # each cut is just before a single space/newline between non-space characters
    assert all(len(p) >= text_reader.PIECE_CHARS and not p[-1].isspace() for p in pieces[:-1])
    assert all(p[0] in " \n" and not p[1].isspace() for p in pieces[1:])


def test_split_short_or_uncuttable_text_is_one_piece():
    assert split_pieces("short text") == ["short text"]
    assert split_pieces("") == [""]
    long_word = "x" * (text_reader.PIECE_CHARS * 2)  # no boundary to cut at
    assert split_pieces(long_word) == [long_word]


def test_is_text_file():
    assert is_text_file("a.txt") and is_text_file("A.TXT") and is_text_file("dir/a.txt.gz")
    assert not any(map(is_text_file, ["a.jsonl", "a.json.gz", "a.csv", "a.parquet", "a.md", "a.gz"]))


@pytest.fixture
def small_pieces(monkeypatch):
    """Tiny read chunks and pieces, so a small file is read in many chunks and cut in many pieces."""
    monkeypatch.setattr(text_reader, "_CHUNK", 100)
    monkeypatch.setattr(text_reader, "PIECE_CHARS", 50)


@pytest.mark.parametrize("name", ["a.txt", "a.txt.gz"])
def test_text_pieces_join_to_the_document(tmp_path, small_pieces, name):
    text = "\ufeffFirst line\n" + "naïve café — 漢字 🙂 and more words\n" * 60 + "  tail  \n\n x" + "y" * 300
    data = text.encode()
    f = write(tmp_path / name, gzip.compress(data) if name.endswith(".gz") else data)
    read = []
    pieces = list(iter_text_pieces(f, on_read=read.append))
    assert "".join(pieces) == docs(f)[0] == text[1:]  # the BOM is dropped, as iter_documents does
    assert len(pieces) > 20 and max(map(len, pieces[:-1])) < 100  # bounded (the last has no cut point)
    assert all(p[0] in " \n" and not p[1].isspace() for p in pieces[1:])  # cut only at boundaries
    assert read == sorted(read) and read[-1] == f.stat().st_size  # bytes of the file read so far
    assert len(read) > 1


def test_text_pieces_replace_gives_the_documents_text(tmp_path, small_pieces):
    f = write(tmp_path / "bad.txt", b"fine words here\n" * 20 + b"\xff\xfe oops \xe9\n" + b"more words\n" * 20)
    assert "".join(iter_text_pieces(f, "replace")) == docs(f, encoding_errors="replace")[0]
    assert "".join(iter_text_pieces(f, "ignore")) == docs(f, encoding_errors="ignore")[0]


def _bad_files(tmp_path):
    data = gzip.compress(("x y " * 5000).encode())
    return {
        "missing": tmp_path / "missing.txt",
        "empty": write(tmp_path / "empty.txt", b""),
        "bom only": write(tmp_path / "bom.txt", b"\xef\xbb\xbf"),
        "empty gz": write(tmp_path / "empty.txt.gz", gzip.compress(b"")),
        "invalid utf-8": write(tmp_path / "bad.txt", b"fine text\n" * 300 + b"\xff\xfe oops\n"),
        "invalid utf-8 gz": write(tmp_path / "bad.txt.gz", gzip.compress(b"ok\n" * 100 + b"\xe9")),
        "gzip named txt": write(tmp_path / "zipped.txt", data),
        "plain named gz": write(tmp_path / "plain.txt.gz", "not compressed"),
        "truncated gz": write(tmp_path / "cut.txt.gz", data[: len(data) // 2]),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "bom only",
        "empty gz",
        "invalid utf-8",
        "invalid utf-8 gz",
        "gzip named txt",
        "plain named gz",
        "truncated gz",
    ],
)
def test_text_pieces_errors_are_iter_documents_errors(tmp_path, small_pieces, case):
    f = _bad_files(tmp_path)[case]
    assert error_of(lambda: list(iter_text_pieces(f))) == doc_error(f)


def test_text_pieces_checks_its_arguments(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"text": "x"}\n')
    with pytest.raises(ValueError, match="is not a .txt file"):
        list(iter_text_pieces(f))
    g = write(tmp_path / "a.txt", "x")
    with pytest.raises(ConfigError, match="encoding_errors must be one of"):
        list(iter_text_pieces(g, "bogus"))
    assert list(iter_text_pieces(g)) == ["x"]
