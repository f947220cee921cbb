"""A resumable reader of one shard's text (a :class:`~lmtrain.data.shards.Shard` of the plan).

:func:`iter_units` yields a shard's text as :class:`Unit` s. Encoding every unit
and appending EOS after each unit that ends a document, over all shards in order,
gives exactly the ids :func:`~lmtrain.data.token_cache.build_token_cache` gives
(when ``split_text`` is what :func:`~lmtrain.data.encoders.splitting_is_exact`
says of the tokenizer). Each unit carries a JSON-able ``cursor``; reading the
shard again from it continues exactly after that unit.

A ``.jsonl`` range [start, end) gives the lines that start inside it; a ``.txt``
range is read in pieces cut at piece boundaries (see :mod:`lmtrain.data.shards`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Optional

from lmtrain.data.readers import iter_documents
from lmtrain.data.readers import text as _text
from lmtrain.data.readers.files import check_readable, extension
from lmtrain.data.readers.parquet import iter_parquet, parquet_row_groups
from lmtrain.data.readers.records import column_value  # the readers' own messages
from lmtrain.data.readers.text import check_encoding_errors, compression_of, open_bytes, read_errors, split_pieces
from lmtrain.data.shards import Shard, find_boundary, next_line_start
from lmtrain.errors import DataError

__all__ = ["Unit", "iter_units", "no_text_error"]

_CHUNK = 1 << 20  # bytes read at a time
_LONE_CR = re.compile(rb"\r(?!\n)")  # a line end too, for the JSON readers (universal newlines)


@dataclass(frozen=True)
class Unit:
    """A piece of text; ``doc_end``: the last piece of its document; ``cursor``: where the next unit starts."""

    text: str
    doc_end: bool
    cursor: Any  # int (a .txt byte offset) or a list of ints (see iter_units)


def no_text_error(path: Path, text_column: str) -> DataError:
    """The error of a file without any document (as :func:`~lmtrain.data.readers.iter_documents` says it)."""
    ext = extension(path)
    if ext.startswith(".txt") or not ext:
        return DataError(f"{path} is empty; remove it or add text")
    return DataError(f"{path} has no text in column '{text_column}'; remove it or add text")


def iter_units(
    shard: Shard,
    text_column: str = "text",
    encoding_errors: str = "strict",
    split_text: bool = True,
    cursor: Any = None,
) -> Iterator[Unit]:
    """The text of ``shard`` as units, from its start or from just after the unit whose ``cursor`` is given.

    A ``.txt`` file gives pieces of about ``PIECE_CHARS`` (``doc_end`` only on the
    file's last one); a record gives its text as one unit, or in pieces
    (:func:`~lmtrain.data.readers.split_pieces`) when ``split_text``. Empty records
    are skipped and errors are the readers' one-line DataErrors, as
    :func:`~lmtrain.data.readers.iter_documents` has them.

    Cursors: a ``.txt`` byte offset (int); ``[byte offset of the record's line,
    pieces done]`` for JSON lines; ``[row group, record in it, pieces done]`` for
    parquet; ``[record, pieces done]`` for other whole files. Resuming seeks (plain
    files) or reads only the needed row group (parquet); a compressed file is
    decompressed again up to the offset without decoding it, and a ``.csv`` or
    ``.json`` array is parsed again up to the record without encoding anything.
    """
    check_encoding_errors(encoding_errors)
    path = shard.path
    check_readable(path)
    ext, compression = extension(path), compression_of(path)
    whole = shard.kind == "file" or (shard.kind == "bytes" and shard.start == 0 and shard.end >= _size(path))
    if shard.kind == "row_groups":
        units = _parquet_units(shard, text_column, split_text, cursor)
    elif ext.startswith(".txt") and (split_text or shard.kind == "bytes"):
        if not split_text and not whole:
            raise ValueError(f"{shard} is a part of a .txt file; read it with split_text=True as it was planned")
        units = _checked(path, compression, _txt_units(shard, compression, encoding_errors, split_text, cursor))
    elif shard.kind == "bytes" or (compression and ext.startswith(".jsonl")):
        units = _checked(
            path, compression, _jsonl_units(shard, compression, text_column, encoding_errors, split_text, cursor)
        )
    elif shard.kind == "file":
        units = _record_units(shard, text_column, encoding_errors, split_text, cursor)
    else:
        raise ValueError(f"unknown shard kind {shard.kind!r}")
    yielded = False
    for unit in units:
        yielded = True
        yield unit
    if not yielded and cursor is None:
        if shard.kind == "row_groups" and shard.start == 0 and shard.end >= parquet_row_groups(path):
            list(iter_parquet(path, text_column, row_groups=range(0)))  # a missing column is the error to give
            whole = True
        if whole:
            raise no_text_error(path, text_column)


def _size(path: Path) -> int:
    return path.stat().st_size


def _checked(path: Path, compression: Optional[str], units: Iterator[Unit]) -> Iterator[Unit]:
    """``units`` with decoding and decompression errors turned into the readers' DataErrors."""
    with read_errors(path, compression):
        yield from units


def _open_at(path: Path, compression: Optional[str], offset: int) -> IO[bytes]:
    """``path``'s (decompressed) bytes from ``offset`` on: a seek, or decompressing up to it."""
    check_readable(path)
    src = open_bytes(path, compression)
    if compression is None:
        src.seek(offset)
        return src
    while offset > 0:
        skipped = len(src.read(min(_CHUNK, offset)))
        if not skipped:
            break
        offset -= skipped
    return src


def _pieces_of(text: str, split: bool) -> list[str]:
    return split_pieces(text) if split else [text]


def _txt_units(shard: Shard, compression: Optional[str], errors: str, split: bool, cursor: Any) -> Iterator[Unit]:
    """A .txt file's bytes [start, end) in pieces cut at piece boundaries found in the bytes."""
    start = shard.start if cursor is None else int(cursor)
    end: Optional[int] = shard.end if compression is None else None  # a compressed file is read to its end
    last_range = end is None or end >= _size(shard.path)
    with _open_at(shard.path, compression, start) as src:
        if not split:  # the whole file, one unit
            data = src.read()
            text = data.decode("utf-8-sig" if start == 0 else "utf-8", errors)
            if text:
                yield Unit(text, True, start + len(data))
            return
        held: Optional[Unit] = None  # one piece is held back: only the last one may end the document
        for text, after in _byte_pieces(src, start, end, errors):
            if held is not None:
                yield held
            held = Unit(text, False, after)
        if held is not None:
            yield Unit(held.text, last_range, held.cursor)


def _byte_pieces(src: IO[bytes], start: int, end: Optional[int], errors: str) -> Iterator[tuple[str, int]]:
    """(text, offset after it) of each piece of ``src``'s bytes from ``start`` to ``end`` (None: EOF)."""
    buf, base, pos, scanned = b"", start, 0, 0  # base: offset of buf[0]; pos: start of the next piece in buf

    def decode(a: int, b: int) -> str:
        return buf[a:b].decode("utf-8-sig" if base + a == 0 else "utf-8", errors)

    while True:
        want = _CHUNK if end is None else min(_CHUNK, end - base - len(buf))
        chunk = src.read(want) if want > 0 else b""
        buf, base, scanned, pos = buf[pos:] + chunk, base + pos, max(scanned - pos, 0), 0
        eof = not chunk
        stop = len(buf) if eof else len(buf) - 4  # a boundary needs its next character whole
        while len(buf) - pos > _text.PIECE_CHARS:  # looked up here, as split_pieces does
            b = find_boundary(buf, max(pos + _text.PIECE_CHARS, scanned), stop, base)
            if b < 0:
                scanned = max(scanned, stop)
                break
            text = decode(pos, b)
            pos = b
            yield text, base + b
        if eof:
            break
    if pos < len(buf):
        text = decode(pos, len(buf))
        if text:
            yield text, base + len(buf)


def _jsonl_units(
    shard: Shard, compression: Optional[str], column: str, errors: str, split: bool, cursor: Any
) -> Iterator[Unit]:
    """The records of the JSON lines that start in [start, end) (all of a compressed file)."""
    path = shard.path
    end: Optional[int] = shard.end if compression is None else None
    skip = 0
    if cursor is not None:
        pos, skip = int(cursor[0]), int(cursor[1])
    else:
        pos = shard.start
        if pos > 0:  # the line that straddles start belongs to the shard before
            with open(path, "rb") as f:
                found = next_line_start(f, pos, _size(path) + 1)
            pos = _size(path) if found is None else found
    first = cursor is not None  # the line a cursor points into is this shard's, wherever it starts
    with _open_at(path, compression, pos) as src:
        for line_start, line in _lines(src, pos):
            if not first and end is not None and line_start >= end:
                break
            first = False
            for at, sub in _sub_lines(line, line_start):
                value = _json_value(path, compression, at, sub, column, errors)
                if value:
                    pieces = _pieces_of(value, split)
                    for k in range(skip, len(pieces)):
                        yield Unit(pieces[k], k == len(pieces) - 1, [at, k + 1])
                skip = 0


def _lines(src: IO[bytes], pos: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line with its b'\\n') of every line of ``src`` (whose first byte is at offset ``pos``)."""
    partial: list[bytes] = []
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            break
        i = 0
        while True:
            j = chunk.find(b"\n", i)
            if j < 0:
                break
            line = b"".join(partial) + chunk[i : j + 1] if partial else chunk[i : j + 1]
            partial.clear()
            yield pos, line
            pos += len(line)
            i = j + 1
        if i < len(chunk):
            partial.append(chunk[i:])
    if partial:
        yield pos, b"".join(partial)


def _sub_lines(line: bytes, at: int) -> Iterator[tuple[int, bytes]]:
    """``line`` split after each lone '\\r' too, as a text stream with universal newlines splits it."""
    if b"\r" not in line:
        yield at, line
        return
    i = 0
    for m in _LONE_CR.finditer(line):
        yield at + i, line[i : m.end()]
        i = m.end()
    if i < len(line):
        yield at + i, line[i:]


def _json_value(path: Path, compression: Optional[str], at: int, raw: bytes, column: str, errors: str) -> Optional[str]:
    """The text of one JSON line (None or '' for a blank line or an empty text)."""
    text = raw.decode("utf-8-sig" if at == 0 else "utf-8", errors)
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        lineno = _line_number(path, compression, at)
        raise DataError(
            f"{path}:{lineno} is not valid JSON: {e.msg} (column {e.colno}); each line must be one JSON object"
        ) from None
    if isinstance(record, dict):
        value = record.get(column, ...)
        if value is None or isinstance(value, str):
            return value
    # the readers' message, with the line number counted only now
    return column_value(path, f"{path}:{_line_number(path, compression, at)}", record, column)


def _line_number(path: Path, compression: Optional[str], offset: int) -> int:
    """The 1-based line (as a text stream counts them) of the line starting at ``offset``, for error messages."""
    ends, last = 0, b""  # line ends ('\n', '\r\n' or a lone '\r') before offset
    with open_bytes(path, compression) as src:
        while offset > 0:
            chunk = src.read(min(_CHUNK, offset))
            if not chunk:
                break
            offset -= len(chunk)
            ends += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
            if last == b"\r" and chunk[:1] == b"\n":
                ends -= 1  # a '\r\n' across two chunks
            last = chunk[-1:]
    return ends + 1


def _record_units(shard: Shard, column: str, errors: str, split: bool, cursor: Any) -> Iterator[Unit]:
    """A whole file read by :func:`~lmtrain.data.readers.iter_documents`, record by record."""
    first, skip = (0, 0) if cursor is None else (int(cursor[0]), int(cursor[1]))
    for i, doc in enumerate(iter_documents([shard.path], text_column=column, encoding_errors=errors)):
        if i < first:
            continue
        pieces = _pieces_of(doc, split)
        for k in range(skip if i == first else 0, len(pieces)):
            yield Unit(pieces[k], k == len(pieces) - 1, [i, k + 1])


def _parquet_units(shard: Shard, column: str, split: bool, cursor: Any) -> Iterator[Unit]:
    """Row groups [start, end) of a parquet file, one at a time; a cursor's row group is the first read."""
    group0, record0, skip = shard.start, 0, 0
    if cursor is not None:
        group0, record0, skip = int(cursor[0]), int(cursor[1]), int(cursor[2])
    for group in range(group0, shard.end):
        for j, doc in enumerate(iter_parquet(shard.path, column, row_groups=range(group, group + 1))):
            if group == group0 and j < record0:
                continue
            pieces = _pieces_of(doc, split)
            for k in range(skip if (group, j) == (group0, record0) else 0, len(pieces)):
                yield Unit(pieces[k], k == len(pieces) - 1, [group, j, k + 1])
