"""``.parquet`` files (needs pyarrow, an optional dependency): each row's ``text_column`` is a document."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from lmtrain.data.readers.text import one_line
from lmtrain.errors import DataError


def iter_parquet(path: Path, column: str) -> Iterator[str]:
    """The non-empty texts of ``column``, read a batch of rows at a time."""
    try:
        import pyarrow.parquet as pq  # optional dependency
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow; pip install pyarrow, or convert it to .jsonl") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid & co. for non-parquet data
        raise DataError(f"{path} is not a valid parquet file ({one_line(e)}); re-create it") from None
    names = pf.schema_arrow.names
    if column not in names:
        raise DataError(f"{path} has no column '{column}'; columns found: {', '.join(names)}; pass --text_column NAME")
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
