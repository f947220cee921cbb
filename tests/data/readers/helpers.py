"""Helpers shared by the reader tests: write a file, read its documents, catch a one-line DataError."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtrain.data.readers import iter_documents
from lmtrain.errors import DataError


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
