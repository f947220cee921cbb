"""Find input files and stream their documents as strings.

Supported: ``.txt`` (one file = one document), ``.jsonl`` / ``.json`` (JSON
lines, or a ``.json`` array of objects), ``.csv`` (with a header), the ``.gz``
variants of these, and ``.parquet`` (needs pyarrow). Every user-caused problem
is a :class:`~lmtrain.errors.DataError` with a one-line message that names the
file and the fix.
"""

from __future__ import annotations

import codecs
import csv
import glob
import gzip
import io
import json
import os
import sys
import zlib
from importlib import resources
from pathlib import Path
from typing import IO, Iterator, Sequence

from lmtrain.errors import ConfigError, DataError

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "sample_corpus_files",
    "resolve_files",
    "iter_documents",
    "count_bytes",
    "check_encoding_errors",
]

_BASE_EXTENSIONS = (".txt", ".jsonl", ".json", ".csv")
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    _BASE_EXTENSIONS + tuple(e + ".gz" for e in _BASE_EXTENSIONS) + (".parquet",)
)
ENCODING_ERRORS = ("strict", "replace", "ignore")

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # bytes read at a time from text files
_GLOB_CHARS = "*?["


def sample_corpus_files() -> list[Path]:
    """The small Shakespeare corpus shipped with the package (sorted)."""
    root = resources.files("lmtrain.data") / "sample"
    # The package is installed as plain files (no zip), so this is a real path.
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".txt"))


def check_encoding_errors(encoding_errors: str) -> None:
    """Reject an ``encoding_errors`` value the readers cannot honour."""
    if encoding_errors not in ENCODING_ERRORS:
        raise ConfigError(
            f"encoding_errors must be one of {', '.join(ENCODING_ERRORS)}; "
            f"got {encoding_errors!r}"
        )


def _extension(path: Path) -> str:
    """The supported extension ``path`` ends with ('' if none)."""
    name = path.name.lower()
    # Longest first so 'x.jsonl.gz' is not mistaken for '.gz' alone.
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return ""


def _supported_list() -> str:
    return ", ".join(_BASE_EXTENSIONS + (".parquet",)) + " (or .gz of the text formats)"


def resolve_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files, directories (recursively) and glob patterns to a file list.

    Order is kept as given; directory contents and glob matches are sorted so
    the token stream (and hence the cache) is deterministic. Duplicates are
    dropped.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise DataError("no input files given; pass --train_file PATH (a file, directory or glob)")
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)

    for raw in paths:
        text = os.path.expanduser(str(raw))
        path = Path(text)
        if not path.exists() and any(c in text for c in _GLOB_CHARS):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise DataError(f"no files match the pattern {raw}; check the pattern")
            files: list[Path] = []
            for m in matches:
                mp = Path(m)
                files.extend(_files_in_dir(mp) if mp.is_dir() else [mp])
            files = [f for f in files if _extension(f)]
            if not files:
                raise DataError(
                    f"the pattern {raw} matches no supported files; use {_supported_list()}"
                )
            for f in files:
                add(f)
        elif path.is_dir():
            everything = _files_in_dir(path)
            if not everything:
                raise DataError(f"directory {raw} is empty; add data files or pass another path")
            files = [f for f in everything if _extension(f)]
            if not files:
                raise DataError(
                    f"directory {raw} has no supported files; use {_supported_list()}"
                )
            for f in files:
                add(f)
        elif path.is_file():
            if not _extension(path):
                raise DataError(
                    f"{raw} has an unsupported file type; use {_supported_list()} "
                    "(rename plain text to .txt)"
                )
            add(path)
        else:
            raise DataError(f"no such file or directory: {raw}; check the path")
    return out


def _files_in_dir(directory: Path) -> list[Path]:
    """All non-hidden regular files below ``directory``, sorted by path."""
    found = []
    for p in directory.rglob("*"):
        rel = p.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts):
            continue  # editor swap files, .DS_Store, .git ...
        if p.is_file():
            found.append(p)
    return sorted(found)


def iter_documents(
    files: Sequence[Path],
    text_column: str = "text",
    encoding_errors: str = "strict",
) -> Iterator[str]:
    """Yield the documents of ``files`` one at a time, in order.

    A ``.txt`` file is one document; each record of a JSON/CSV/parquet file is
    one document (its ``text_column``). Empty record texts are skipped.
    """
    check_encoding_errors(encoding_errors)
    for f in files:
        path = Path(f)
        ext = _extension(path)
        if not path.is_file():
            raise DataError(f"no such file or directory: {path}; check the path")
        if path.stat().st_size == 0:
            raise DataError(f"{path} is empty; remove it or add text")
        yielded = 0
        for doc in _iter_file(path, ext, text_column, encoding_errors):
            yielded += 1
            yield doc
        if yielded == 0:
            if ext.startswith(".txt") or not ext:
                raise DataError(f"{path} is empty; remove it or add text")
            raise DataError(
                f"{path} has no text in column '{text_column}'; remove it or add text"
            )


def count_bytes(
    files: Sequence[Path], text_column: str = "text", encoding_errors: str = "strict"
) -> int:
    """Total UTF-8 bytes of all documents (the denominator of bits-per-byte)."""
    return sum(len(doc.encode("utf-8")) for doc in iter_documents(files, text_column, encoding_errors))


# --------------------------------------------------------------------------- internals


def _iter_file(path: Path, ext: str, text_column: str, errors: str) -> Iterator[str]:
    if ext == ".parquet":
        yield from _iter_parquet(path, text_column)
        return
    compressed = ext.endswith(".gz")
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if compressed and magic != _GZIP_MAGIC:
        raise DataError(f"{path} is not gzip-compressed; remove the .gz from its name")
    if not compressed and magic == _GZIP_MAGIC:
        raise DataError(f"{path} is gzip-compressed; name it {path.name}.gz")
    base = ext[:-3] if compressed else ext
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as raw:
            if base == ".txt":
                yield from _iter_txt(path, raw, errors)
            elif base == ".csv":
                yield from _iter_csv(path, raw, text_column, errors)
            else:  # .jsonl / .json
                yield from _iter_json(path, raw, base, text_column, errors)
    except UnicodeDecodeError:
        raise _utf8_error(path, compressed) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(
            f"{path} is a corrupt or truncated gzip file ({_one_line(e)}); re-create it"
        ) from None


def _one_line(e: BaseException) -> str:
    # Library messages can span lines; ours must stay on one.
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _utf8_error(path: Path, compressed: bool) -> DataError:
    """Locate the first invalid byte (in the decompressed stream) for the message."""
    offset, line = _first_invalid_utf8(path, compressed)
    where = f"byte {offset} (line {line})" if offset >= 0 else "some byte"
    return DataError(
        f"{path} is not valid UTF-8 at {where}; convert it, or pass --encoding_errors replace"
    )


def _first_invalid_utf8(path: Path, compressed: bool) -> tuple[int, int]:
    """(byte offset, 1-based line) of the first invalid UTF-8 byte, or (-1, -1)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    consumed = 0  # bytes handed to the decoder so far
    newlines = 0
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
        while True:
            chunk = f.read(_CHUNK)
            final = not chunk
            pending = decoder.getstate()[0]
            try:
                decoder.decode(chunk, final=final)
            except UnicodeDecodeError as e:
                # e.start indexes pending+chunk: the decoder re-feeds its buffer.
                offset = consumed - len(pending) + e.start
                data = pending + chunk
                newlines += data[: e.start].count(b"\n")
                return offset, newlines + 1
            newlines += chunk.count(b"\n")
            consumed += len(chunk)
            if final:
                return -1, -1


def _iter_txt(path: Path, raw: IO[bytes], errors: str) -> Iterator[str]:
    # Decode in bounded chunks: no second full copy of the bytes in memory.
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors)
    parts = []
    while True:
        chunk = raw.read(_CHUNK)
        parts.append(decoder.decode(chunk, final=not chunk))
        if not chunk:
            break
    text = "".join(parts)
    if text:
        yield text


def _text_stream(raw: IO[bytes], errors: str) -> io.TextIOWrapper:
    # utf-8-sig drops a BOM (common in CSVs from spreadsheets) instead of
    # gluing it to the first column name.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors=errors, newline="")


def _column_value(path: Path, where: str, record: object, column: str) -> str | None:
    if not isinstance(record, dict):
        raise DataError(
            f"{where} is not a JSON object; each record must look like {{\"{column}\": \"...\"}}"
        )
    if column not in record:
        found = ", ".join(map(str, record)) or "(none)"
        raise DataError(
            f"{where} has no column '{column}'; columns found: {found}; pass --text_column NAME"
        )
    value = record[column]
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(
            f"{where} column '{column}' holds {type(value).__name__}, not text; "
            "pass --text_column NAME of a text column"
        )
    return value


def _iter_json(
    path: Path, raw: IO[bytes], base: str, column: str, errors: str
) -> Iterator[str]:
    stream = _text_stream(raw, errors)
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
                value = _column_value(path, f"{path}[{i}]", rec, column)
                if value:
                    yield value
            return
        stream = _prefixed(first, stream)
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{lineno} is not valid JSON: {e.msg} (column {e.colno}); "
                "each line must be one JSON object"
            ) from None
        value = _column_value(path, f"{path}:{lineno}", rec, column)
        if value:
            yield value


def _prefixed(first: str, stream: io.TextIOWrapper) -> Iterator[str]:
    """Lines of ``stream`` with the already-read character put back in front."""
    lines = iter(stream)
    head = next(lines, "")
    yield first + head
    yield from lines


def _iter_csv(path: Path, raw: IO[bytes], column: str, errors: str) -> Iterator[str]:
    # Documents can be far longer than csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(_text_stream(raw, errors))
    try:
        header = next(reader, None)
        if header is None:
            return
        if column not in header:
            found = ", ".join(header) or "(none)"
            raise DataError(
                f"{path}:1 has no column '{column}'; columns found: {found}; pass --text_column NAME"
            )
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
        raise DataError(
            f"{path}:{reader.line_num} is not valid CSV: {_one_line(e)}; fix the file"
        ) from None


def _iter_parquet(path: Path, column: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq  # optional dependency
    except ImportError:
        raise DataError(
            f"reading {path} needs pyarrow; pip install pyarrow, or convert it to .jsonl"
        ) from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid & co. for non-parquet data
        raise DataError(
            f"{path} is not a valid parquet file ({_one_line(e)}); re-create it"
        ) from None
    names = pf.schema_arrow.names
    if column not in names:
        raise DataError(
            f"{path} has no column '{column}'; columns found: {', '.join(names)}; "
            "pass --text_column NAME"
        )
    for batch in pf.iter_batches(batch_size=1024, columns=[column]):
        for value in batch.column(0).to_pylist():
            if value is None:
                continue
            if not isinstance(value, str):
                raise DataError(
                    f"{path} column '{column}' holds {type(value).__name__}, not text; "
                    "pass --text_column NAME of a text column"
                )
            if value:
                yield value

