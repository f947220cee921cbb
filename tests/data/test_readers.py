"""Tests for lmtrain.data.readers: file discovery and document streaming."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lmtrain.data.readers import count_bytes, iter_documents, resolve_files, sample_corpus_files
from lmtrain.errors import ConfigError, DataError


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def docs(*files: Path, **kw: str) -> list[str]:
    return list(iter_documents(list(files), **kw))


def error_of(fn, *args, **kwargs) -> str:
    """The DataError message; asserts it is a single line."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def doc_error(*files: Path, **kw: str) -> str:
    return error_of(docs, *files, **kw)


# --------------------------------------------------------------------------- formats


def test_sample_corpus_files():
    files = sample_corpus_files()
    assert len(files) == 3 and all(f.suffix == ".txt" and f.is_file() for f in files)
    assert files == sorted(files)


def test_txt_is_one_document(tmp_path):
    f = write(tmp_path / "a.txt", "line one\nline two\n\nline three")
    assert docs(f) == ["line one\nline two\n\nline three"]


def test_txt_strips_bom_and_handles_multibyte_across_chunks(tmp_path, monkeypatch):
    import lmtrain.data.readers as readers

    monkeypatch.setattr(readers, "_CHUNK", 3)  # split multi-byte characters between reads
    text = "naïve café 漢字 ünïcödé"
    f = write(tmp_path / "a.txt", b"\xef\xbb\xbf" + text.encode())
    assert docs(f) == [text]


def test_jsonl(tmp_path):
    f = write(
        tmp_path / "a.jsonl",
        '{"text": "first", "id": 1}\n\n{"text": "second"}\n{"text": ""}\n{"text": null}\n',
    )
    assert docs(f) == ["first", "second"]


def test_jsonl_other_column(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"body": "x"}\n{"body": "y"}\n')
    assert docs(f, text_column="body") == ["x", "y"]


def test_json_array_and_json_lines(tmp_path):
    arr = write(tmp_path / "arr.json", json.dumps([{"text": "a"}, {"text": "b"}], indent=2))
    lines = write(tmp_path / "lines.json", '{"text": "c"}\n{"text": "d"}\n')
    assert docs(arr, lines) == ["a", "b", "c", "d"]


def test_csv(tmp_path):
    f = write(tmp_path / "a.csv", 'id,text\n1,hello\n2,"multi\nline, with comma"\n3,\n')
    assert docs(f) == ["hello", "multi\nline, with comma"]


def test_csv_long_field(tmp_path):
    long = "x" * 300_000  # over csv's default field size limit
    f = write(tmp_path / "a.csv", f"text\n{long}\n")
    assert docs(f) == [long]


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


# --------------------------------------------------------------------------- resolve_files


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


# --------------------------------------------------------------------------- errors


def test_empty_file(tmp_path):
    f = write(tmp_path / "e.txt", "")
    assert doc_error(f) == f"{f} is empty; remove it or add text"


def test_empty_gz_file(tmp_path):
    f = write(tmp_path / "e.txt.gz", gzip.compress(b""))
    assert doc_error(f) == f"{f} is empty; remove it or add text"


def test_jsonl_without_any_text(tmp_path):
    f = write(tmp_path / "e.jsonl", '{"text": ""}\n\n')
    msg = doc_error(f)
    assert str(f) in msg and "no text" in msg


def test_invalid_utf8_reports_offset(tmp_path):
    f = write(tmp_path / "bad.txt", b"hello\nwor\xffld")
    msg = doc_error(f)
    assert msg == (
        f"{f} is not valid UTF-8 at byte 9 (line 2); convert it, or pass --encoding_errors replace"
    )


def test_invalid_utf8_offset_across_chunks(tmp_path, monkeypatch):
    import lmtrain.data.readers as readers

    monkeypatch.setattr(readers, "_CHUNK", 4)
    f = write(tmp_path / "bad.jsonl", b'{"text": "ok"}\n{"text": "\xe9\xe9"}\n')
    msg = doc_error(f)
    assert "at byte 25 (line 2)" in msg and str(f) in msg


def test_invalid_utf8_replace_goes_on(tmp_path):
    f = write(tmp_path / "bad.txt", b"wor\xffld")
    assert docs(f, encoding_errors="replace") == ["wor\ufffdld"]
    g = write(tmp_path / "bad.csv", b"text\nwor\xffld\n")
    assert docs(g, encoding_errors="replace") == ["wor\ufffdld"]


def test_invalid_encoding_errors_value(tmp_path):
    f = write(tmp_path / "a.txt", "a")
    with pytest.raises(ConfigError):
        docs(f, encoding_errors="bogus")


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


def test_jsonl_bad_line(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"text": oops}\n')
    msg = doc_error(f)
    assert msg.startswith(f"{f}:2 is not valid JSON: ")


def test_jsonl_missing_column(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"a": 1, "b": 2}\n')
    assert doc_error(f) == (
        f"{f}:2 has no column 'text'; columns found: a, b; pass --text_column NAME"
    )


def test_jsonl_non_object_and_non_text(tmp_path):
    f = write(tmp_path / "a.jsonl", "[1, 2]\n")
    assert f"{f}:1 is not a JSON object" in doc_error(f)
    g = write(tmp_path / "b.jsonl", '{"text": 5}\n')
    assert f"{g}:1 column 'text' holds int" in doc_error(g)


def test_json_array_errors(tmp_path):
    f = write(tmp_path / "a.json", '[{"text": "a"}, {"body": "b"}]')
    assert doc_error(f) == f"{f}[1] has no column 'text'; columns found: body; pass --text_column NAME"
    g = write(tmp_path / "b.json", '[{"text": "a"},\n oops]')
    assert doc_error(g).startswith(f"{g}:2 is not valid JSON")


def test_csv_missing_column(tmp_path):
    f = write(tmp_path / "a.csv", "a,b\n1,2\n")
    assert doc_error(f) == (
        f"{f}:1 has no column 'text'; columns found: a, b; pass --text_column NAME"
    )


def test_csv_short_row(tmp_path):
    f = write(tmp_path / "a.csv", "id,text\n1,ok\n2\n")
    msg = doc_error(f)
    assert msg.startswith(f"{f}:3 has 1 fields")


def test_not_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    f = write(tmp_path / "a.parquet", b"this is not parquet at all\n")
    msg = doc_error(f)
    assert msg.startswith(f"{f} is not a valid parquet file")
