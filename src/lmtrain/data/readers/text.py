"""Bytes to text: opening (gzip or not), UTF-8 decoding and its errors, and ``.txt`` files.

A ``.txt`` / ``.txt.gz`` file is one document. :func:`iter_text_pieces` streams
it in bounded pieces (for the token cache, so a corpus of any size is encoded
with flat memory). The JSON/CSV readers in :mod:`.records` read streams opened
by :func:`open_bytes` inside :func:`read_errors` too, so every format reports
encoding and compression problems the same way.
"""

from __future__ import annotations

import codecs
import gzip
import re
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional, cast

from lmtrain.data.readers.files import check_readable, is_text_file
from lmtrain.errors import ConfigError, DataError

ENCODING_ERRORS = ("strict", "replace", "ignore")

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # bytes read (and decoded) at a time from text files
PIECE_CHARS = 1 << 16  # long texts are cut into pieces of about this many characters

# A piece boundary: just before a single space or newline between two non-space
# characters. For GPT-2 style pre-tokenizers (and most others) such a point
# always starts a new pre-token whatever follows, and the pre-token before it
# ends there whatever precedes, so encoding the pieces separately gives the ids
# of the whole text. (A newline after other whitespace is not such a point:
# "\n\n" + "X" pre-tokenizes as "\n", "\n", "X" but "\n\n" at the end of a piece
# as one pre-token.) Python's \s covers every character the tokenizers' regexes
# treat as whitespace. The token cache checks that this holds for its tokenizer.
PIECE_BOUNDARY = re.compile(r"(?<=\S)[ \n](?=\S)")


def check_encoding_errors(encoding_errors: str) -> None:
    """Reject an ``encoding_errors`` value the readers cannot honour."""
    if encoding_errors not in ENCODING_ERRORS:
        raise ConfigError(f"encoding_errors must be one of {', '.join(ENCODING_ERRORS)}; got {encoding_errors!r}")


def split_pieces(text: str) -> list[str]:
    """Cut ``text`` at piece boundaries (see ``PIECE_BOUNDARY``), about every ``PIECE_CHARS``.

    The pieces join back to ``text``; a text no longer than ``PIECE_CHARS`` is one piece.
    """
    pieces, start, n = [], 0, len(text)
    while n - start > PIECE_CHARS:
        m = PIECE_BOUNDARY.search(text, start + PIECE_CHARS)
        if m is None:
            break
        pieces.append(text[start : m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


def check_gzip_name(path: Path, compressed: bool) -> None:
    """Refuse a file whose gzip magic number does not match its name."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if compressed and magic != _GZIP_MAGIC:
        raise DataError(f"{path} is not gzip-compressed; remove the .gz from its name")
    if not compressed and magic == _GZIP_MAGIC:
        raise DataError(f"{path} is gzip-compressed; name it {path.name}.gz")


def open_bytes(path: Path, compressed: bool) -> IO[bytes]:
    """``path`` opened for reading (decompressed bytes), after :func:`check_gzip_name`."""
    check_gzip_name(path, compressed)
    if compressed:
        # a GzipFile is a binary file object, but typeshed does not declare it an IO[bytes]
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


@contextmanager
def read_errors(path: Path, compressed: bool) -> Iterator[None]:
    """Turn decoding and decompression errors raised inside into the readers' one-line DataErrors."""
    try:
        yield
    except UnicodeDecodeError:
        raise _utf8_error(path, compressed) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path} is a corrupt or truncated gzip file ({one_line(e)}); re-create it") from None


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (library messages can span lines; ours must not)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _utf8_error(path: Path, compressed: bool) -> DataError:
    """Locate the first invalid byte (in the decompressed stream) for the message."""
    offset, line = _first_invalid_utf8(path, compressed)
    where = f"byte {offset} (line {line})" if offset >= 0 else "some byte"
    return DataError(f"{path} is not valid UTF-8 at {where}; convert it, or pass --encoding_errors replace")


def _first_invalid_utf8(path: Path, compressed: bool) -> tuple[int, int]:
    """(byte offset, 1-based line) of the first invalid UTF-8 byte, or (-1, -1)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    consumed = 0  # bytes handed to the decoder so far
    newlines = 0
    with gzip.open(path, "rb") if compressed else open(path, "rb") as f:
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


def iter_txt(path: Path, raw: IO[bytes], errors: str) -> Iterator[str]:
    """The whole text of an opened ``.txt`` file (nothing if it is empty)."""
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


def iter_text_pieces(
    path: str | Path,
    encoding_errors: str = "strict",
    on_read: Optional[Callable[[int], None]] = None,
) -> Iterator[str]:
    """The text of one ``.txt`` / ``.txt.gz`` file, read in bounded chunks and yielded in pieces.

    Pieces are cut only at piece boundaries (see ``PIECE_BOUNDARY``), about every
    ``PIECE_CHARS`` characters, so memory stays bounded whatever the file size
    while encoding the pieces separately gives the ids of the whole text. The
    pieces join to the document :func:`~lmtrain.data.readers.iter_documents`
    gives, and every problem raises the same DataError it raises. ``on_read``
    is called with the number of (compressed) bytes of the file read so far.
    """
    check_encoding_errors(encoding_errors)
    path = Path(path)
    if not is_text_file(path):
        raise ValueError(f"{path} is not a .txt or .txt.gz file; read it with iter_documents")
    compressed = path.name.lower().endswith(".gz")
    check_readable(path)
    check_gzip_name(path, compressed)
    yielded = False
    with read_errors(path, compressed):
        for piece in _txt_pieces(path, compressed, encoding_errors, on_read):
            yielded = True
            yield piece
    if not yielded:  # e.g. only a byte-order mark
        raise DataError(f"{path} is empty; remove it or add text")


def _txt_pieces(path: Path, compressed: bool, errors: str, on_read: Optional[Callable[[int], None]]) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors)  # as iter_txt decodes
    buf = ""
    scanned = 0  # no boundary starts in buf[:scanned]
    with open(path, "rb") as raw:
        src: Any = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        while True:
            chunk = src.read(_CHUNK)
            if on_read is not None:
                on_read(raw.tell())
            buf += decoder.decode(chunk, final=not chunk)
            if not chunk:
                break
            pos = 0
            while len(buf) - pos > PIECE_CHARS:
                m = PIECE_BOUNDARY.search(buf, max(pos + PIECE_CHARS, scanned))
                if m is None:
                    # The last character may yet become a boundary; the rest cannot.
                    scanned = max(len(buf) - 1, scanned)
                    break
                yield buf[pos : m.start()]
                pos = m.start()
            if pos:
                buf = buf[pos:]
                scanned = max(scanned - pos, 0)
    if buf:
        yield from split_pieces(buf)
