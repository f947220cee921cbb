"""Tests for lmtrain.data.readers.records: JSON lines, JSON arrays and CSV."""

from __future__ import annotations

import json

from tests.data.readers.helpers import doc_error, docs, write


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


def test_jsonl_without_any_text(tmp_path):
    f = write(tmp_path / "e.jsonl", '{"text": ""}\n\n')
    msg = doc_error(f)
    assert str(f) in msg and "no text" in msg


def test_jsonl_bad_line(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"text": oops}\n')
    msg = doc_error(f)
    assert msg.startswith(f"{f}:2 is not valid JSON: ")


def test_jsonl_missing_column(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"a": 1, "b": 2}\n')
    assert doc_error(f) == (f"{f}:2 has no column 'text'; columns found: a, b; pass --text_column NAME")


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
    assert doc_error(f) == (f"{f}:1 has no column 'text'; columns found: a, b; pass --text_column NAME")


def test_csv_short_row(tmp_path):
    f = write(tmp_path / "a.csv", "id,text\n1,ok\n2\n")
    msg = doc_error(f)
    assert msg.startswith(f"{f}:3 has 1 fields")
