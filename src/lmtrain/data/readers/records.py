"""Record formats: ``.jsonl`` / ``.json`` (JSON lines, or a ``.json`` array of objects) and ``.csv``.

Each record is one document, its ``text_column``; empty texts are skipped. The
readers here take an already opened byte stream (see :func:`.text.open_bytes`).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import IO, Iterator

from lmtrain.data.readers.text import one_line
from lmtrain.errors import DataError


def _text_stream(raw: IO[bytes], errors: str) -> io.TextIOWrapper:
    # utf-8-sig drops a BOM (common in CSVs from spreadsheets) instead of
    # gluing it to the first column name.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors=errors, newline="")


def column_value(path: Path, where: str, record: object, column: str) -> str | None:
    """``record``'s text in ``column`` (None if null); a one-line DataError naming ``where`` otherwise."""
    if not isinstance(record, dict):
        raise DataError(f'{where} is not a JSON object; each record must look like {{"{column}": "..."}}')
    if column not in record:
        found = ", ".join(map(str, record)) or "(none)"
        raise DataError(f"{where} has no column '{column}'; columns found: {found}; pass --text_column NAME")
    value = record[column]
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(
            f"{where} column '{column}' holds {type(value).__name__}, not text; "
            "pass --text_column NAME of a text column"
        )
    return value


def iter_json(path: Path, raw: IO[bytes], base: str, column: str, errors: str) -> Iterator[str]:
    """The texts of a ``.jsonl`` (``base``) or ``.json`` file."""
    stream = _text_stream(raw, errors)
    lines: Iterator[str] = stream
    if base == ".json":
        # A .json file is either one JSON array of objects or JSON lines.
        first = ""
        while True:
            ch = stream.read(1)
            if not ch or not ch.isspace():
                first = ch
                break
        if first == "[":
            rest = stream.read()
            try:
                records = json.loads(first + rest)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{e.lineno} is not valid JSON: {e.msg} (column {e.colno}); fix the file"
                ) from None
            del rest
            for i, rec in enumerate(records):
                value = column_value(path, f"{path}[{i}]", rec, column)
                if value:
                    yield value
            return
        lines = _prefixed(first, stream)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{lineno} is not valid JSON: {e.msg} (column {e.colno}); each line must be one JSON object"
            ) from None
        value = column_value(path, f"{path}:{lineno}", rec, column)
        if value:
            yield value


def _prefixed(first: str, stream: io.TextIOWrapper) -> Iterator[str]:
    """Lines of ``stream`` with the already-read character put back in front."""
    lines = iter(stream)
    head = next(lines, "")
    yield first + head
    yield from lines


def iter_csv(path: Path, raw: IO[bytes], column: str, errors: str) -> Iterator[str]:
    """The texts of a ``.csv`` file with a header row."""
    # Documents can be far longer than csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(_text_stream(raw, errors))
    try:
        header = next(reader, None)
        if header is None:
            return
        if column not in header:
            found = ", ".join(header) or "(none)"
            raise DataError(f"{path}:1 has no column '{column}'; columns found: {found}; pass --text_column NAME")
        idx = header.index(column)
        for row in reader:
            if len(row) <= idx:
                if not row:
                    continue
                raise DataError(
                    f"{path}:{reader.line_num} has {len(row)} fields, fewer than the header's "
                    f"{len(header)}; fix the row"
                )
            if row[idx]:
                yield row[idx]
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num} is not valid CSV: {one_line(e)}; fix the file") from None
