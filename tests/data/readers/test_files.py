"""Tests for lmtrain.data.readers.files: the sample corpus and resolving paths, directories and globs."""

from __future__ import annotations

import gzip

from lmtrain.data.readers import resolve_files, sample_corpus_files
from tests.data.readers.helpers import error_of, write


def test_sample_corpus_files():
    files = sample_corpus_files()
    assert len(files) == 3 and all(f.suffix == ".txt" and f.is_file() for f in files)
    assert files == sorted(files)


def test_resolve_directory_recursive_sorted_supported_only(tmp_path):
    write(tmp_path / "b.txt", "b")
    write(tmp_path / "a.jsonl", '{"text": "a"}')
    write(tmp_path / "sub" / "c.csv.gz", gzip.compress(b"text\nc\n"))
    write(tmp_path / "notes.md", "ignored")
    write(tmp_path / ".hidden.txt", "ignored")
    got = resolve_files([tmp_path])
    assert got == [tmp_path / "a.jsonl", tmp_path / "b.txt", tmp_path / "sub" / "c.csv.gz"]


def test_resolve_glob_and_dedup(tmp_path):
    a = write(tmp_path / "a.txt", "a")
    b = write(tmp_path / "b.txt", "b")
    write(tmp_path / "c.jsonl", '{"text": "c"}')
    assert resolve_files([str(tmp_path / "*.txt")]) == [a, b]
    assert resolve_files([b, str(tmp_path / "*.txt")]) == [b, a]
    assert resolve_files(str(a)) == [a]


def test_resolve_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    msg = error_of(resolve_files, [missing])
    assert msg == f"no such file or directory: {missing}; check the path"


def test_resolve_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    msg = error_of(resolve_files, [tmp_path / "empty"])
    assert "empty" in msg and str(tmp_path / "empty") in msg


def test_resolve_directory_without_supported_files(tmp_path):
    write(tmp_path / "d" / "x.md", "md")
    msg = error_of(resolve_files, [tmp_path / "d"])
    assert "no supported files" in msg and ".txt" in msg


def test_resolve_glob_without_match(tmp_path):
    msg = error_of(resolve_files, [str(tmp_path / "*.txt")])
    assert "no files match" in msg and "*.txt" in msg


def test_resolve_unsupported_file(tmp_path):
    f = write(tmp_path / "x.docx", "x")
    msg = error_of(resolve_files, [f])
    assert str(f) in msg and "unsupported" in msg
