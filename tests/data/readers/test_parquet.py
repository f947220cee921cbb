"""Tests for lmtrain.data.readers.parquet."""

from __future__ import annotations

import pytest

from lmtrain.data.readers import iter_parquet, parquet_row_groups, resolve_files
from tests.data.readers.helpers import doc_error, docs, error_of, write


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
    assert "pyarrow" in msg and str(f) in msg and "pip install 'lmtrain[parquet]'" in msg


def test_not_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    f = write(tmp_path / "a.parquet", b"this is not parquet at all\n")
    msg = doc_error(f)
    assert msg.startswith(f"{f} is not a valid parquet file")


def write_parquet(path, texts, row_group_size, **kw):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path, row_group_size=row_group_size, **kw)
    return path


@pytest.mark.parametrize("codec", ["none", "snappy", "zstd", "gzip"])
def test_parquet_compression_codecs(tmp_path, codec):
    texts = [f"row {i} naïve 漢字" for i in range(7)]
    f = write_parquet(tmp_path / "a.parquet", texts, 3, compression=codec)
    assert docs(f) == texts


def test_parquet_row_groups_subset(tmp_path):
    texts = [f"row {i}" for i in range(10)]
    texts[3] = ""  # empty and missing texts are skipped, as in every format
    f = write_parquet(tmp_path / "a.parquet", texts, 2)
    assert parquet_row_groups(f) == 5
    assert list(iter_parquet(f, "text", range(1, 3))) == ["row 2", "row 4", "row 5"]
    assert list(iter_parquet(f, "text", range(4, 5))) == ["row 8", "row 9"]
    assert list(iter_parquet(f, "text", range(0))) == []
    every = [t for r in range(5) for t in iter_parquet(f, "text", range(r, r + 1))]
    assert every == list(iter_parquet(f, "text")) == docs(f)
    with pytest.raises(ValueError, match="out of range"):
        list(iter_parquet(f, "text", range(4, 6)))


def test_parquet_memory_stays_about_one_row_group(tmp_path):
    pa = pytest.importorskip("pyarrow")
    texts = [f"{i} " + "many words of text " * 2000 for i in range(64)]  # ~40 KB a row, 2.5 MB in all
    f = write_parquet(tmp_path / "a.parquet", texts, 2)
    before, peak, n = pa.total_allocated_bytes(), 0, 0
    for _doc in iter_parquet(f, "text"):
        peak = max(peak, pa.total_allocated_bytes() - before)
        n += 1
    # a row group is 1/32 of the text; reading one takes a few times its size (page, column, batch)
    assert n == 64 and 0 < peak < sum(map(len, texts)) / 4


def test_parquet_row_groups_errors(tmp_path):
    pytest.importorskip("pyarrow")
    f = write(tmp_path / "a.parquet", b"this is not parquet at all\n")
    assert error_of(parquet_row_groups, f).startswith(f"{f} is not a valid parquet file")
    missing = tmp_path / "missing.parquet"
    assert error_of(parquet_row_groups, missing) == f"no such file or directory: {missing}; check the path"


def test_corrupt_parquet_shard_in_a_folder_is_named(tmp_path):
    texts = [f"row {i} " * 50 for i in range(40)]
    good = write_parquet(tmp_path / "d" / "a.parquet", texts, 10, compression="none", use_dictionary=False)
    data = good.read_bytes()
    cut = write(tmp_path / "d" / "b.parquet", data[: len(data) // 2])  # the footer is gone
    assert doc_error(*resolve_files([tmp_path / "d"])).startswith(f"{cut} is not a valid parquet file (")
    cut.unlink()
    # a valid footer but a garbled page in the second row group
    meta = __import__("pyarrow.parquet", fromlist=["x"]).ParquetFile(good).metadata
    start = meta.row_group(1).column(1).data_page_offset
    garbled = bytearray(data)
    garbled[start : start + 16] = b"\xff" * 16
    bad = write(tmp_path / "d" / "c.parquet", bytes(garbled))
    msg = doc_error(*resolve_files([tmp_path / "d"]))
    assert msg.startswith(f"{bad} is a corrupt parquet file (row group 1: ") and msg.endswith("; re-create it")
    assert list(iter_parquet(bad, "text", range(1))) == texts[:10]  # the row groups before it are fine


def test_parquet_missing_column_lists_the_columns(tmp_path):
    f = write_parquet(tmp_path / "a.parquet", ["x"], 1)
    assert doc_error(f, text_column="body") == (
        f"{f} has no column 'body'; columns found: id, text; pass --text_column NAME"
    )
