"""Compressed inputs: the codec a file name says, the magic numbers that check it, and decompressed streams.

Every text format may be compressed with gzip (``.gz``), zstd (``.zst``, needs
the ``zstandard`` package), bzip2 (``.bz2``) or xz (``.xz``). The name decides
the codec, and the first bytes of the file must agree: a file compressed but not
named so (or named so but not compressed) gets a one-line error saying how to
rename it, instead of garbage text or a codec's traceback.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import sys
import zlib
from pathlib import Path
from typing import IO, Any, Optional, cast

from lmtrain.errors import DataError

COMPRESSIONS = ("gz", "zst", "bz2", "xz")  # file name suffixes, without the dot
_FORMAT = {"gz": "gzip", "zst": "zstd", "bz2": "bzip2", "xz": "xz"}  # the names users know them by

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
# "BZh" + block size digit is plain ASCII, so a .txt could start with it: a bzip2 stream is
# recognised only with the magic of its first block (or of its end, when empty) after it.
_BZ2_NEXT = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")
_PROBE = 10  # bytes read to tell the codecs apart


def compression_of(path: str | Path) -> Optional[str]:
    """The compression ``path`` is named with: ``'gz'``, ``'zst'``, ``'bz2'``, ``'xz'`` or None."""
    name = Path(path).name.lower()
    for c in COMPRESSIONS:
        if name.endswith("." + c):
            return c
    return None


def sniff(head: bytes) -> Optional[str]:
    """The compression whose magic number ``head`` (the first bytes of a file) starts with, or None."""
    if head.startswith(_GZIP_MAGIC):
        return "gz"
    # a zstd file may also start with a skippable frame (magic 0x184D2A50-5F; pzstd writes one)
    if head.startswith(_ZSTD_MAGIC) or (len(head) >= 4 and 0x50 <= head[0] <= 0x5F and head[1:4] == b"\x2a\x4d\x18"):
        return "zst"
    if head.startswith(_XZ_MAGIC):
        return "xz"
    if head[:3] == b"BZh" and head[3:4] in (b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9"):
        if head[4:10] in _BZ2_NEXT:
            return "bz2"
    return None


def check_compressed(path: Path, compression: Optional[str]) -> None:
    """Refuse a file whose magic number does not match its name."""
    if compression is not None and compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)} or None")
    with open(path, "rb") as probe:
        actual = sniff(probe.read(_PROBE))
    if actual != compression:
        if compression is None:
            assert actual is not None
            raise DataError(f"{path} is {_FORMAT[actual]}-compressed; name it {path.name}.{actual}")
        if actual is None:
            raise DataError(f"{path} is not {_FORMAT[compression]}-compressed; remove the .{compression} from its name")
        renamed = path.name[: -len(compression)] + actual
        raise DataError(f"{path} is {_FORMAT[actual]}-compressed, not {_FORMAT[compression]}; name it {renamed}")


def open_decompressed(path: Path, compression: Optional[str]) -> IO[bytes]:
    """``path`` opened for reading its decompressed bytes (no checks: see :func:`check_compressed`)."""
    if compression is None:
        return open(path, "rb")
    if compression == "zst":
        raw = open(path, "rb")
        try:
            return decompressing(raw, compression, path, closefd=True)
        except BaseException:
            raw.close()
            raise
    # the codecs' file objects are binary streams, but typeshed does not declare them IO[bytes]
    if compression == "gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if compression == "bz2":
        return cast(IO[bytes], bz2.open(path, "rb"))
    if compression == "xz":
        return cast(IO[bytes], lzma.open(path, "rb", format=lzma.FORMAT_XZ))
    raise ValueError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)} or None")


def decompressing(raw: IO[bytes], compression: str, path: Path, closefd: bool = False) -> IO[bytes]:
    """A stream of the decompressed bytes of the open file ``raw`` (closing it closes ``raw`` only if ``closefd``).

    Reading it reads ``raw`` a bounded chunk at a time, so ``raw.tell()`` tells how
    much of the compressed file has been read.
    """
    src: Any
    if compression == "gz":
        src = gzip.GzipFile(fileobj=raw, mode="rb")
    elif compression == "bz2":
        src = bz2.BZ2File(raw)
    elif compression == "xz":
        src = lzma.LZMAFile(raw, format=lzma.FORMAT_XZ)
    elif compression == "zst":
        # read_across_frames: files made by concatenation or by parallel compressors hold many frames
        src = (
            _zstandard(path)
            .ZstdDecompressor()
            .stream_reader(_ZstdFrames(raw), read_across_frames=True, closefd=closefd)
        )
    else:
        raise ValueError(f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}")
    return cast(IO[bytes], src)


def decompression_error(path: Path, compression: Optional[str], e: BaseException) -> Optional[DataError]:
    """The one-line DataError for ``e`` if it is a decompression error of ``compression``, else None."""
    if compression is None:
        return None
    if compression == "gz":
        corrupt = isinstance(e, (gzip.BadGzipFile, EOFError, zlib.error))
    elif compression == "bz2":
        # bz2 reports bad data as a bare OSError("Invalid data stream"); real I/O errors carry an errno
        corrupt = isinstance(e, EOFError) or (isinstance(e, OSError) and e.errno is None)
    elif compression == "xz":
        corrupt = isinstance(e, (lzma.LZMAError, EOFError))
    else:
        zstandard = sys.modules.get("zstandard")
        corrupt = isinstance(e, EOFError) or (zstandard is not None and isinstance(e, zstandard.ZstdError))
    if not corrupt:
        return None
    return DataError(f"{path} is a corrupt or truncated {_FORMAT[compression]} file ({one_line(e)}); re-create it")


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (library messages can span lines; ours must not)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _zstandard(path: Path) -> Any:
    try:
        import zstandard  # a default dependency, imported only when a .zst file is read
    except ImportError:
        raise DataError(f"reading {path} needs zstandard; pip install zstandard") from None
    return zstandard


class _ZstdLayoutError(EOFError):
    """A zstd file ends inside a frame, or holds something else where a frame must start."""


class _ZstdFrames:
    """A file object that follows the zstd frame and block headers in the bytes read through it.

    zstandard's stream reader stops quietly where a truncated file ends, so the
    source it reads is wrapped in this: on reaching the end of the file inside a
    frame, ``read`` raises an EOFError (through the reader). It reads
    no extra byte and does not seek; corrupt data inside blocks is left to zstd.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.pos = 0  # bytes read through so far
        self.header = bytearray()  # the part of the next header read so far
        self.layout = _zstd_layout()
        # bytes of frame data to pass over, then the header bytes wanted; whether the file may end here
        self.skip, self.need, self.between = next(self.layout)

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if not data:
            if self.skip or self.header or not self.between:
                raise _ZstdLayoutError(f"the file ends inside a frame, at byte {self.pos}")
            return data
        i, n = 0, len(data)
        while i < n:
            if self.skip:
                step = min(self.skip, n - i)
                self.skip -= step
            else:
                step = min(self.need - len(self.header), n - i)
                self.header += data[i : i + step]
                if len(self.header) == self.need:
                    self.skip, self.need, self.between = self.layout.send((self.pos + i + step, bytes(self.header)))
                    self.header.clear()
            i += step
        self.pos += n
        return data

    def close(self) -> None:
        self.raw.close()


def _zstd_layout() -> Any:
    """A generator over the header layout of a zstd file (RFC 8878, section 3.1).

    It yields ``(skip, need, between)``: pass over ``skip`` bytes, then send it
    ``(offset, header)``: the next ``need`` bytes and the offset just past them.
    ``between`` says whether the file may end there (before the next frame).
    """
    end, magic = yield 0, 4, True
    while True:
        if magic == _ZSTD_MAGIC:
            end, descriptor = yield 0, 1, False
            fhd = descriptor[0]
            if fhd & 0x08:  # the reserved bit
                raise _ZstdLayoutError(f"bad frame header at byte {end - 1}")
            single_segment = (fhd >> 5) & 1
            rest = (0 if single_segment else 1) + (0, 1, 2, 4)[fhd & 3] + (single_segment, 2, 4, 8)[fhd >> 6]
            if rest:  # window descriptor, dictionary id, content size
                end, _ = yield 0, rest, False
            end, raw = yield 0, 3, False
            while True:  # blocks: a 3-byte header (last flag, type, size), then the block
                header = int.from_bytes(raw, "little")
                block_type = (header >> 1) & 3
                if block_type == 3:
                    raise _ZstdLayoutError(f"reserved block type at byte {end - 3}")
                skip = 1 if block_type == 1 else header >> 3  # an RLE block stores one byte
                if header & 1:  # the last block
                    break
                end, raw = yield skip, 3, False
            end, magic = yield skip + (4 if fhd & 0x04 else 0), 4, True  # and the content checksum
        elif 0x50 <= magic[0] <= 0x5F and magic[1:] == b"\x2a\x4d\x18":  # a skippable frame
            end, size = yield 0, 4, False
            end, magic = yield int.from_bytes(size, "little"), 4, True
        else:
            raise _ZstdLayoutError(f"no zstd frame at byte {end - 4}")
