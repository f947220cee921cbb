"""Find input files and stream their documents as strings.

Supported: ``.txt`` (one file = one document), ``.jsonl`` / ``.json`` (JSON
lines, or a ``.json`` array of objects), ``.csv`` (with a header), the ``.gz``
variants of these, and ``.parquet`` (needs pyarrow). Every user-caused problem
is a :class:`~lmtrain.errors.DataError` with a one-line message that names the
file and the fix.

One module per concern: :mod:`.files` (which files), :mod:`.text` (bytes to
text, gzip, ``.txt``, and streaming a ``.txt`` in bounded pieces),
:mod:`.records` (JSON and CSV), :mod:`.parquet`.
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
from lmtrain.data.readers.parquet import iter_parquet
from lmtrain.data.readers.records import iter_csv, iter_json
from lmtrain.data.readers.text import (
    ENCODING_ERRORS,
    PIECE_BOUNDARY,
    PIECE_CHARS,
    check_encoding_errors,
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
    compressed = ext.endswith(".gz")
    base = ext[:-3] if compressed else ext
    raw = open_bytes(path, compressed)
    with read_errors(path, compressed), raw:
        if base == ".txt":
            yield from iter_txt(path, raw, errors)
        elif base == ".csv":
            yield from iter_csv(path, raw, text_column, errors)
        else:  # .jsonl / .json
            yield from iter_json(path, raw, base, text_column, errors)
