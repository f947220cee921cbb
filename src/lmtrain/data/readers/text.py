"""Bytes to text: opening (compressed or not), UTF-8 decoding and its errors, and ``.txt`` files.

A ``.txt`` file (plain, or ``.txt.gz`` / ``.zst`` / ``.bz2`` / ``.xz``) is one
document. :func:`iter_text_pieces` streams it in bounded pieces (for the token
cache, so a corpus of any size is encoded with flat memory). The JSON/CSV
readers in :mod:`.records` read streams opened by :func:`open_bytes` inside
:func:`read_errors` too, so every format reports encoding and compression
problems the same way. The codecs themselves live in :mod:`.compression`.
"""

from __future__ import annotations

import codecs
import re
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import IO, Callable, Iterator, Optional

from lmtrain.data.readers.compression import (
    check_compressed,
    compression_of,
    decompressing,
    decompression_error,
    one_line,
    open_decompressed,
)
from lmtrain.data.readers.files import check_readable, is_text_file
from lmtrain.errors import ConfigError, DataError

__all__ = [
    "ENCODING_ERRORS",
    "PIECE_BOUNDARY",
    "PIECE_CHARS",
    "compression_of",
    "open_bytes",
    "read_errors",
    "one_line",
    "iter_txt",
    "iter_text_pieces",
    "split_pieces",
    "check_encoding_errors",
]

ENCODING_ERRORS = ("strict", "replace", "ignore")

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


def open_bytes(path: str | Path, compression: Optional[str]) -> IO[bytes]:
    """``path`` opened for reading its decompressed bytes, after checking its magic number.

    ``compression`` is what the name says (:func:`compression_of`). Read the
    stream inside :func:`read_errors` so that decompression and UTF-8 errors
    become one-line DataErrors.
    """
    path = Path(path)
    check_compressed(path, compression)
    return open_decompressed(path, compression)


@contextmanager
def read_errors(path: str | Path, compression: Optional[str]) -> Iterator[None]:
    """Turn decoding and decompression errors raised inside into the readers' one-line DataErrors."""
    path = Path(path)
    try:
        yield
    except UnicodeDecodeError:
        raise _utf8_error(path, compression) from None
    except Exception as e:
        error = decompression_error(path, compression, e)
        if error is None:
            raise
        raise error from None


def _utf8_error(path: Path, compression: Optional[str]) -> DataError:
    """Locate the first invalid byte (in the decompressed stream) for the message."""
    try:
        offset, line = _first_invalid_utf8(path, compression)
    except Exception as e:
        # Corrupt compressed data often decodes to garbage before the codec's checksum fails:
        # the file is then reported as corrupt, not as badly encoded.
        error = decompression_error(path, compression, e)
        if error is None:
            raise
        return error
    where = f"byte {offset} (line {line})" if offset >= 0 else "some byte"
    return DataError(f"{path} is not valid UTF-8 at {where}; convert it, or pass --encoding_errors replace")


def _first_invalid_utf8(path: Path, compression: Optional[str]) -> tuple[int, int]:
    """(byte offset, 1-based line) of the first invalid UTF-8 byte, or (-1, -1)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    consumed = 0  # bytes handed to the decoder so far
    newlines = 0
    with open_decompressed(path, compression) as f:
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
                while compression and f.read(_CHUNK):
                    pass  # to the end, so that the codec checks the data (raising if it is corrupt)
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
    """The text of one ``.txt`` file (plain or compressed), read in bounded chunks and yielded in pieces.

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
        raise ValueError(f"{path} is not a .txt file (plain, .gz, .zst, .bz2 or .xz); read it with iter_documents")
    compression = compression_of(path)
    check_readable(path)
    check_compressed(path, compression)
    yielded = False
    with read_errors(path, compression):
        for piece in _txt_pieces(path, compression, encoding_errors, on_read):
            yielded = True
            yield piece
    if not yielded:  # e.g. only a byte-order mark
        raise DataError(f"{path} is empty; remove it or add text")


def _txt_pieces(
    path: Path, compression: Optional[str], errors: str, on_read: Optional[Callable[[int], None]]
) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors)  # as iter_txt decodes
    buf = ""
    scanned = 0  # no boundary starts in buf[:scanned]
    # the compressed file stays in hand so that on_read can report how much of it was read
    with open(path, "rb") as raw, decompressing(raw, compression, path) if compression else nullcontext(raw) as src:
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
