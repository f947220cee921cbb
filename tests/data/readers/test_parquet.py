"""Tests for lmtrain.data.readers.parquet."""

from __future__ import annotations

import pytest

from tests.data.readers.helpers import doc_error, docs, write


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    f = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["p", None, "q"], "n": [1, 2, 3]}), f)
    assert docs(f) == ["p", "q"]
    assert "columns found: text, n" in doc_error(f, text_column="body")


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    f = write(tmp_path / "a.parquet", b"PAR1 not really")
    msg = doc_error(f)
    assert "pyarrow" in msg and str(f) in msg


def test_not_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    f = write(tmp_path / "a.parquet", b"this is not parquet at all\n")
    msg = doc_error(f)
    assert msg.startswith(f"{f} is not a valid parquet file")
