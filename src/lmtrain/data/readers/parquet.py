"""``.parquet`` files (needs pyarrow, an optional dependency): each row's ``text_column`` is a document.

A file is read one row group at a time, a bounded batch of rows at a time, and
only the text column: memory stays about one batch of documents whatever the
file size. :func:`parquet_row_groups` and the ``row_groups`` argument of
:func:`iter_parquet` let a caller split the work of one file by row groups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

from lmtrain.data.readers.text import one_line
from lmtrain.errors import DataError

# Rows decoded at a time: documents can be long (a book per row), so fewer than pyarrow's 64Ki.
_BATCH_ROWS = 256


def parquet_row_groups(path: str | Path) -> int:
    """The number of row groups of the parquet file ``path``."""
    with _open(Path(path)) as pf:
        return int(pf.num_row_groups)


def iter_parquet(path: str | Path, column: str, row_groups: Optional[range] = None) -> Iterator[str]:
    """The non-empty texts of ``column``, in order, from ``row_groups`` (default: all of them)."""
    path = Path(path)
    with _open(path) as pf:
        yield from _texts(path, pf, column, row_groups)


def _texts(path: Path, pf: Any, column: str, row_groups: Optional[range]) -> Iterator[str]:
    names = pf.schema_arrow.names
    if column not in names:
        raise DataError(f"{path} has no column '{column}'; columns found: {', '.join(names)}; pass --text_column NAME")
    n = pf.num_row_groups
    if row_groups is None:
        row_groups = range(n)
    elif len(row_groups) and not (0 <= min(row_groups) and max(row_groups) < n):
        raise ValueError(f"row groups {row_groups} are out of range: {path} has {n}")
    for group in row_groups:
        # one row group at a time: pyarrow's reader would otherwise fill a batch from several
        batches = pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=[group], columns=[column], use_threads=False)
        while True:
            try:
                batch = next(batches, None)
            except Exception as e:  # a corrupt page: ArrowInvalid, OSError ... from pyarrow
                raise DataError(
                    f"{path} is a corrupt parquet file (row group {group}: {one_line(e)}); re-create it"
                ) from None
            if batch is None:
                break
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


def _open(path: Path) -> Any:
    """``pyarrow.parquet.ParquetFile(path)``, with the readers' one-line errors."""
    try:
        import pyarrow.parquet as pq  # optional dependency
    except ImportError:
        raise DataError(
            f"reading {path} needs pyarrow; pip install 'lmtrain[parquet]' (or pyarrow), or convert it to .jsonl"
        ) from None
    if not path.is_file():
        raise DataError(f"no such file or directory: {path}; check the path")
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid & co. for non-parquet data
        raise DataError(f"{path} is not a valid parquet file ({one_line(e)}); re-create it") from None
