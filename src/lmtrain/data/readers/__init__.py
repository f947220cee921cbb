"""Find input files and stream their documents as strings.

Supported: ``.txt`` (one file = one document), ``.jsonl`` / ``.json`` (JSON
lines, or a ``.json`` array of objects), ``.csv`` (with a header), each of these
compressed as ``.gz``, ``.zst`` (needs zstandard), ``.bz2`` or ``.xz``
(``x.jsonl.zst``), and ``.parquet`` (needs pyarrow). Every user-caused problem
is a :class:`~lmtrain.errors.DataError` with a one-line message that names the
file and the fix.

One module per concern: :mod:`.files` (which files), :mod:`.compression` (the
codecs and their magic numbers), :mod:`.text` (bytes to text, ``.txt``, and
streaming a ``.txt`` in bounded pieces), :mod:`.records` (JSON and CSV),
:mod:`.parquet`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from lmtrain.data.readers.files import (
    SUPPORTED_EXTENSIONS,
    check_readable,
    extension,
    is_text_file,
    resolve_files,
    sample_corpus_files,
)
from lmtrain.data.readers.parquet import iter_parquet, parquet_row_groups
from lmtrain.data.readers.records import iter_csv, iter_json
from lmtrain.data.readers.text import (
    ENCODING_ERRORS,
    PIECE_BOUNDARY,
    PIECE_CHARS,
    check_encoding_errors,
    compression_of,
    iter_text_pieces,
    iter_txt,
    open_bytes,
    read_errors,
    split_pieces,
)
from lmtrain.errors import DataError

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "ENCODING_ERRORS",
    "compression_of",
    "open_bytes",
    "read_errors",
    "iter_parquet",
    "parquet_row_groups",
    "PIECE_BOUNDARY",
    "PIECE_CHARS",
    "sample_corpus_files",
    "resolve_files",
    "iter_documents",
    "iter_text_pieces",
    "is_text_file",
    "split_pieces",
    "count_bytes",
    "check_encoding_errors",
]


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
        ext = extension(path)
        check_readable(path)
        yielded = 0
        for doc in _iter_file(path, ext, text_column, encoding_errors):
            yielded += 1
            yield doc
        if yielded == 0:
            if ext.startswith(".txt") or not ext:
                raise DataError(f"{path} is empty; remove it or add text")
            raise DataError(f"{path} has no text in column '{text_column}'; remove it or add text")


def count_bytes(files: Sequence[Path], text_column: str = "text", encoding_errors: str = "strict") -> int:
    """Total UTF-8 bytes of all documents (the denominator of bits-per-byte)."""
    return sum(len(doc.encode("utf-8")) for doc in iter_documents(files, text_column, encoding_errors))


def _iter_file(path: Path, ext: str, text_column: str, errors: str) -> Iterator[str]:
    if ext == ".parquet":
        yield from iter_parquet(path, text_column)
        return
    compression = compression_of(path)
    base = ext[: -len(compression) - 1] if compression else ext
    raw = open_bytes(path, compression)
    with read_errors(path, compression), raw:
        if base == ".txt":
            yield from iter_txt(path, raw, errors)
        elif base == ".csv":
            yield from iter_csv(path, raw, text_column, errors)
        else:  # .jsonl / .json
            yield from iter_json(path, raw, base, text_column, errors)
