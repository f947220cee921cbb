"""A corpus cut into shards: the plan, and the cut points it is made of.

:func:`plan_shards` cuts the input files, in order, into :class:`Shard` s of about
``target_bytes``: byte ranges of plain ``.txt`` / ``.jsonl`` files (and ``.json``
files holding JSON lines), row-group ranges of parquet files, and whole files for
the rest (compressed files, ``.json`` arrays, ``.csv``). Cut points are found by
reading a small window around each one, never by scanning the file. A shard's
text is read by :func:`lmtrain.data.shard_reader.iter_units`.

Ownership: a ``.jsonl`` range [start, end) owns the lines that start inside it
(a reader skips to the first line start >= start, unless start is 0, and reads
every line starting before end). A ``.txt`` file (one document) is cut only at
piece boundaries (``PIECE_BOUNDARY``: just before a lone ASCII space or newline
between two non-space characters), so encoding the ranges apart is exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional, Sequence

from lmtrain.data.readers.compression import check_compressed
from lmtrain.data.readers.files import check_readable, extension
from lmtrain.data.readers.parquet import parquet_row_groups
from lmtrain.data.readers.text import compression_of

__all__ = ["Shard", "plan_shards", "find_boundary", "next_line_start", "shard_files"]

_WINDOW = 1 << 12  # bytes read at a time when looking for a cut point (usually a few bytes away)
_CANDIDATE = re.compile(rb"[ \n]")


@dataclass(frozen=True)
class Shard:
    """A part of one input file.

    ``kind`` is ``'bytes'`` (bytes [start, end) of a plain .txt/.jsonl file),
    ``'row_groups'`` (row groups [start, end) of a parquet file) or ``'file'``
    (the whole file; start=0, end=its size). ``size`` is its bytes on disk, for balancing.
    """

    index: int
    path: Path
    kind: str
    start: int
    end: int
    size: int


def plan_shards(files: Sequence[Path], target_bytes: int = 64 << 20, split_text: bool = True) -> list[Shard]:
    """Cut ``files`` into shards of about ``target_bytes``, in order (deterministic for the same files).

    ``split_text``: whether a ``.txt`` file may be cut (only when encoding text in
    pieces is exact for the tokenizer; see :func:`~lmtrain.data.encoders.splitting_is_exact`).
    Every file gets at least one shard.
    """
    if target_bytes < 1:
        raise ValueError(f"target_bytes must be positive; got {target_bytes}")
    shards: list[Shard] = []

    def add(path: Path, kind: str, start: int, end: int, size: int) -> None:
        shards.append(Shard(len(shards), path, kind, start, end, size))

    for f in files:
        path = Path(f)
        check_readable(path)
        ext, compression = extension(path), compression_of(path)
        size = path.stat().st_size
        if ext == ".parquet":
            groups = parquet_row_groups(path)
            per = max(1, round(target_bytes * groups / size))  # row groups per shard, by their mean size
            if groups == 0:
                add(path, "row_groups", 0, 0, size)
            for g in range(0, groups, per):
                h = min(groups, g + per)
                add(path, "row_groups", g, h, size * h // groups - size * g // groups)
            continue
        kind = _byte_kind(path, ext, compression, split_text)
        if kind is None:
            add(path, "file", 0, size, size)
            continue
        check_compressed(path, None)  # a compressed file named as plain text is refused, not cut
        cuts = _cuts(path, size, target_bytes, next_line_start if kind == "lines" else _next_boundary_in_file)
        for a, b in zip(cuts, cuts[1:]):
            add(path, "bytes", a, b, b - a)
    return shards


def _byte_kind(path: Path, ext: str, compression: Optional[str], split_text: bool) -> Optional[str]:
    """'lines' or 'text' if ``path`` can be read by byte ranges, else None."""
    if compression is not None:
        return None
    if ext == ".jsonl" or (ext == ".json" and _holds_json_lines(path)):
        return "lines"
    if ext == ".txt" and split_text:
        return "text"
    return None


def _holds_json_lines(path: Path) -> bool:
    """Whether a plain ``.json`` file holds JSON lines (its first non-space character is not '[')."""
    with open(path, "rb") as f:
        head = f.read(1 << 16).decode("utf-8-sig", "replace").lstrip()
    return bool(head) and not head.startswith("[")


def _cuts(path: Path, size: int, target: int, find: Any) -> list[int]:
    """0, the cut points found near every ``target`` bytes, and ``size``."""
    cuts = [0]
    with open(path, "rb") as f:
        p = target
        while p < size:
            c = find(f, p, min(size, p + target))
            if c is not None and c < size:
                cuts.append(c)
                p = c + target
            else:  # no cut point in this stretch: the shard takes it whole
                p += target
    cuts.append(size)
    return cuts


def next_line_start(f: IO[bytes], p: int, limit: int) -> Optional[int]:
    """The first line start in [p, limit): just after the first b'\\n' at or after ``p - 1``."""
    at = p - 1
    while at < limit - 1:
        f.seek(at)
        window = f.read(min(_WINDOW, limit - 1 - at))
        if not window:
            return None
        i = window.find(b"\n")
        if i >= 0:
            return at + i + 1
        at += len(window)
    return None


def _next_boundary_in_file(f: IO[bytes], p: int, limit: int) -> Optional[int]:
    """The first piece boundary in [p, limit), reading windows with 4 bytes of context before and 5 after."""
    at = p
    while at < limit:
        lo = max(0, at - 4)
        f.seek(lo)
        want = (at - lo) + _WINDOW + 5
        window = f.read(want)
        b = find_boundary(window, at - lo, min(len(window), limit - lo), lo)
        if b >= 0:
            return lo + b
        if len(window) < want:  # the end of the file
            return None
        at += _WINDOW  # the candidates cut off at this window's end are looked at again in the next
    return None


def find_boundary(buf: bytes, i: int, j: int, base: int = 0) -> int:
    """The first index b in [i, j) of ``buf`` that is a piece boundary in the decoded text, or -1.

    ``buf[b]`` is a space or newline whose neighbours are valid UTF-8 characters
    that are not whitespace (Python's Unicode-aware ``\\S``, as ``PIECE_BOUNDARY``
    tests); a neighbour cut off by the buffer's end does not count. ``base`` is the
    file offset of ``buf[0]`` (a byte-order mark at offset 0 is dropped in decoding,
    so it is no neighbour).
    """
    for m in _CANDIDATE.finditer(buf, i, j):
        b = m.start()
        # decoding 4 bytes on each side gives the neighbour whole when it is valid (else U+FFFD)
        before = buf[max(0, b - 4) : b].decode("utf-8", "replace")[-1:]
        after = buf[b + 1 : b + 5].decode("utf-8", "replace")[:1]
        if before and after and "\ufffd" not in (before, after) and not before.isspace() and not after.isspace():
            if not (before == "\ufeff" and base + b == 3):
                return b
    return -1


def shard_files(shards: Sequence[Shard]) -> list[Path]:
    """The files of ``shards``, once each, in order."""
    return list(dict.fromkeys(s.path for s in shards))
