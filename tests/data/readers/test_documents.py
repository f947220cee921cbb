"""Tests for lmtrain.data.readers.iter_documents / count_bytes: streaming documents, whatever the format."""

from __future__ import annotations

import pytest

from lmtrain.data.readers import count_bytes, iter_documents
from lmtrain.errors import ConfigError, DataError
from tests.data.readers.helpers import doc_error, docs, write


def test_count_bytes(tmp_path):
    f = write(tmp_path / "a.txt", "héllo")  # é is 2 bytes
    g = write(tmp_path / "b.jsonl", '{"text": "ab"}\n')
    assert count_bytes([f, g]) == 6 + 2


def test_documents_are_streamed(tmp_path):
    files = [write(tmp_path / f"{i}.txt", f"doc {i}") for i in range(3)]
    files.append(tmp_path / "missing.txt")
    it = iter_documents(files)
    assert [next(it) for _ in range(3)] == ["doc 0", "doc 1", "doc 2"]  # lazily, before the error
    with pytest.raises(DataError):
        next(it)


def test_empty_file(tmp_path):
    f = write(tmp_path / "e.txt", "")
    assert doc_error(f) == f"{f} is empty; remove it or add text"


def test_invalid_encoding_errors_value(tmp_path):
    f = write(tmp_path / "a.txt", "a")
    with pytest.raises(ConfigError):
        docs(f, encoding_errors="bogus")
