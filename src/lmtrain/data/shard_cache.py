"""A token cache written shard by shard (by many processes, or as a side effect of streaming), then assembled.

Each shard's ids go to one file in a staging directory beside the cache,
``<cache root>/tokens-<fingerprint>.shards/``: the ids (the cache's dtype) without
EOS, the token counts at each document end, and a footer with the counts; it is
written under a temporary name and renamed when complete, so a file there is
always whole. :func:`assemble` concatenates the shards in order, inserting EOS
after each document, into ``tokens-<fingerprint>``: the same directory, the same
bytes in ``tokens.bin`` and ``doc_offsets.npy`` and the same fingerprint as
:func:`~lmtrain.data.token_cache.build_token_cache` builds from the same files,
tokenizer and options, which therefore finds it warm.

:func:`lmtrain.data.prepare_ranks.build_caches_on_ranks` (``lmtrain prepare``
under torchrun) has many ranks write the shards of one cache with these.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import uuid
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from lmtrain.data.encoders import best_encoder, encoder_name, splitting_is_exact
from lmtrain.data.shard_reader import iter_units, no_text_error
from lmtrain.data.shards import Shard, shard_files
from lmtrain.data.token_cache import (
    OFFSETS_FILE,
    TOKENS_FILE,
    TokenCache,
    cache_fingerprint,
    cache_root,
    move_into_place,
    separator_id,
    token_dtype,
    write_meta,
)
from lmtrain.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "ShardWriter",
    "staging_dir",
    "cache_dir_of",
    "write_shard",
    "missing_shards",
    "assemble",
    "assemble_if_complete",
    "complete_cache",
]

_STAGING_SUFFIX = ".shards"
_FORMAT = 1  # version of the shard file layout
_TAIL = struct.Struct("<Q")  # the footer's length, the file's last 8 bytes
_BATCH_CHARS = 1 << 20  # text sent to the encoder at a time
_COPY_TOKENS = 1 << 24  # tokens copied (and given their EOS) at a time when assembling


def staging_dir(
    files: Sequence[Path],
    tokenizer: Any,
    cache_dir: str | Path | None = None,
    text_column: str = "text",
    encoding_errors: str = "strict",
    append_eos: bool = True,
) -> Path:
    """Where the shards of the cache of these inputs are written: ``<cache root>/tokens-<fingerprint>.shards``."""
    fp = cache_fingerprint([Path(f) for f in files], tokenizer, text_column, encoding_errors, append_eos)
    return cache_root(cache_dir) / f"tokens-{fp}{_STAGING_SUFFIX}"


def cache_dir_of(staging: str | Path) -> Path:
    """The cache directory a staging directory is assembled into (its name without ``.shards``)."""
    staging = Path(staging)
    if not staging.name.endswith(_STAGING_SUFFIX):
        raise ValueError(f"{staging} is not a staging directory (tokens-<fingerprint>{_STAGING_SUFFIX})")
    return staging.with_name(staging.name[: -len(_STAGING_SUFFIX)])


class ShardWriter:
    """Writes one shard's ids into a staging directory; :meth:`close` makes the file appear, whole.

    :meth:`add` takes each unit's ids in order, without EOS (the cache's EOS is
    inserted when assembling), whether the unit ends its document, and its text
    (for the byte count). The writer must see the shard from its first unit.
    """

    def __init__(self, staging_dir: str | Path, shard: Shard, dtype: Any) -> None:
        self.shard = shard
        self.dtype = np.dtype(dtype)
        self.path = Path(staging_dir) / self.file_name(shard)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # unique even across machines sharing the directory; never taken for a finished shard
        self._tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
        self._fh: Any = open(self._tmp, "wb")
        self._ends = array("q")
        self.num_tokens = self.num_bytes = 0
        self._lo, self._hi = 0, 0

    @staticmethod
    def file_name(shard: Shard) -> str:
        """The name of a finished shard's file: its index and a digest of what it covers."""
        what = json.dumps([str(shard.path.resolve()), shard.kind, shard.start, shard.end])
        return f"shard-{shard.index:06d}-{hashlib.sha256(what.encode()).hexdigest()[:12]}.bin"

    def add(self, ids: Any, doc_end: bool, text: str = "") -> None:
        """Append one unit: its ids (no EOS), whether it ends its document, and its text."""
        arr = np.asarray(ids)
        if arr.size:
            self._lo, self._hi = min(self._lo, int(arr.min())), max(self._hi, int(arr.max()))
            arr.astype(self.dtype, copy=False).tofile(self._fh)
            self.num_tokens += int(arr.size)
        self.num_bytes += len(text) if text.isascii() else len(text.encode("utf-8"))
        if doc_end:
            self._ends.append(self.num_tokens)

    def close(self) -> Optional[Path]:
        """Finish the file (footer, fsync, rename); None if the staging directory was removed meanwhile
        (another process assembled the cache)."""
        footer = {
            "format": _FORMAT,
            "shard": [str(self.shard.path.resolve()), self.shard.kind, self.shard.start, self.shard.end],
            "dtype": self.dtype.name,
            "num_tokens": self.num_tokens,
            "num_documents": len(self._ends),
            "num_bytes": self.num_bytes,
            "min_id": self._lo,
            "max_id": self._hi,
        }
        data = json.dumps(footer).encode()
        try:
            self._fh.write(self._ends.tobytes())
            self._fh.write(data + _TAIL.pack(len(data)))
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self._tmp, self.path)
        except FileNotFoundError:
            self.abort()
            return None
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file (a shard not read to its end leaves nothing)."""
        self._fh.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind: Any, *rest: Any) -> None:
        if kind is not None and not self._fh.closed:
            self.abort()


@dataclass
class _ShardFile:
    path: Path
    footer: dict
    ends: np.ndarray  # int64: token counts at each document end

    def tokens(self, dtype: np.dtype) -> np.ndarray:
        n = int(self.footer["num_tokens"])
        if n == 0:
            return np.empty(0, dtype=dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", shape=(n,))


def _read_shard(staging: Path, shard: Shard) -> Optional[_ShardFile]:
    """The finished file of ``shard``, or None if it is missing or not this shard's."""
    path = staging / ShardWriter.file_name(shard)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(size - _TAIL.size)
            (length,) = _TAIL.unpack(f.read(_TAIL.size))
            f.seek(size - _TAIL.size - length)
            footer = json.loads(f.read(length))
            n, docs = int(footer["num_tokens"]), int(footer["num_documents"])
            body = n * np.dtype(footer["dtype"]).itemsize
            if footer.get("format") != _FORMAT or body + docs * 8 + length + _TAIL.size != size:
                return None
            if footer["shard"] != [str(shard.path.resolve()), shard.kind, shard.start, shard.end]:
                return None
            f.seek(body)
            ends = np.frombuffer(f.read(docs * 8), dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return _ShardFile(path, footer, ends)


def missing_shards(staging_dir: str | Path, shards: Sequence[Shard]) -> list[int]:
    """Indices of the shards that have no finished file in ``staging_dir``."""
    return [s.index for s in shards if _read_shard(Path(staging_dir), s) is None]


def write_shard(
    shard: Shard,
    tokenizer: "PreTrainedTokenizerBase",
    staging_dir: str | Path,
    text_column: str = "text",
    encoding_errors: str = "strict",
    split_text: Optional[bool] = None,
    encode: Any = None,
) -> Path:
    """Tokenize ``shard`` into its file in ``staging_dir``; returns the file.

    ``encode``: an encoder from :func:`~lmtrain.data.encoders.best_encoder` to reuse
    (one is made, and closed, otherwise); ``split_text`` defaults to what
    :func:`~lmtrain.data.encoders.splitting_is_exact` says of it, as the cache does.
    """
    own = encode is None
    encoder: Any = best_encoder(tokenizer) if own else encode
    try:
        if split_text is None:
            split_text = splitting_is_exact(encoder, tokenizer)
        arrays = getattr(encoder, "encode_arrays", None) or (lambda texts: [np.asarray(x) for x in encoder(texts)])
        with ShardWriter(staging_dir, shard, token_dtype(len(tokenizer))) as writer:
            batch: list[Any] = []
            chars = 0

            def flush() -> None:
                for unit, ids in zip(batch, arrays([u.text for u in batch])):
                    writer.add(ids, unit.doc_end, unit.text)
                batch.clear()

            for unit in iter_units(shard, text_column, encoding_errors, split_text=split_text):
                batch.append(unit)
                chars += len(unit.text)
                if chars >= _BATCH_CHARS:
                    flush()
                    chars = 0
            flush()
            path = writer.close()
    finally:
        if own and hasattr(encoder, "close"):
            encoder.close()
    if path is None:
        raise DataError(f"the staging directory {staging_dir} was removed while {shard.path} was being tokenized")
    return path


def assemble(
    staging_dir: str | Path,
    shards: Sequence[Shard],
    tokenizer: "PreTrainedTokenizerBase",
    *,
    append_eos: bool = True,
    text_column: str = "text",
    encoder: Optional[str] = None,
    overwrite: bool = False,
) -> TokenCache:
    """Concatenate the finished shards (all of ``shards``, in order) into the cache and remove ``staging_dir``.

    The cache directory is built under a temporary name and moved into place whole;
    if another process got there first, its (equal) cache is kept (replaced if
    ``overwrite``). ``append_eos``
    must be what the staging directory was named with; ``encoder`` is the name
    recorded in meta.json (default: the encoder :func:`best_encoder` picks).
    """
    staging = Path(staging_dir)
    final = cache_dir_of(staging)
    files = shard_files(shards)
    vocab_size = len(tokenizer)
    dtype = token_dtype(vocab_size)
    eos = separator_id(tokenizer) if append_eos else None
    parts = [_read_shard(staging, s) for s in shards]
    missing = [s.index for s, part in zip(shards, parts) if part is None]
    if missing:
        raise ValueError(f"shards {missing} of {staging} are not written yet")
    docs: dict[Path, int] = dict.fromkeys(files, 0)
    for s, part in zip(shards, parts):
        assert part is not None
        docs[s.path] += len(part.ends)
        if part.footer["dtype"] != dtype.name:
            raise ValueError(f"{part.path} holds {part.footer['dtype']} ids; this cache needs {dtype.name}")
        bad = part.footer["max_id"] if part.footer["max_id"] >= vocab_size else part.footer["min_id"]
        if bad >= vocab_size or bad < 0:
            raise DataError(
                f"the tokenizer produced token id {bad}, outside its vocabulary of {vocab_size}; "
                "use a consistent tokenizer (re-save or retrain it)"
            )
    for f, n in docs.items():
        if n == 0:
            raise no_text_error(f, text_column)
    if encoder is None:
        probe = best_encoder(tokenizer)
        encoder = encoder_name(probe)
        getattr(probe, "close", lambda: None)()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
    tmp.mkdir()
    try:
        offsets = [np.zeros(1, dtype=np.int64)]
        total = num_bytes = 0
        with open(tmp / TOKENS_FILE, "wb") as out:
            for part in parts:
                assert part is not None
                total = _copy_with_eos(part.tokens(dtype), part.ends, eos, out, total, offsets)
                num_bytes += int(part.footer["num_bytes"])
            out.flush()
            os.fsync(out.fileno())
        if total == 0:
            raise DataError(f"the input files ({', '.join(map(str, files))}) produced no tokens; add text to them")
        all_offsets = np.concatenate(offsets)
        np.save(tmp / OFFSETS_FILE, all_offsets)
        fp = final.name[len("tokens-") :]
        write_meta(tmp, total, len(all_offsets) - 1, num_bytes, dtype, vocab_size, fp, files, encoder)
        _place(tmp, final, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    return TokenCache.load(final)


def _copy_with_eos(
    tokens: np.ndarray, ends: np.ndarray, eos: Optional[int], out: Any, base: int, offsets: list[np.ndarray]
) -> int:
    """Write ``tokens`` with ``eos`` after each document end; record the documents' end offsets. Returns the new total."""
    n = len(tokens)
    if eos is None:
        for a in range(0, n, _COPY_TOKENS):
            np.asarray(tokens[a : a + _COPY_TOKENS]).tofile(out)
        offsets.append(base + ends)
        return base + n
    done = 0  # ends written so far
    for a in range(0, max(n, 1), _COPY_TOKENS):
        b = min(a + _COPY_TOKENS, n)
        upto = len(ends) if b == n else int(np.searchsorted(ends, b, side="right"))
        chunk = np.insert(np.asarray(tokens[a:b]), ends[done:upto] - a, eos)
        chunk.tofile(out)
        done = upto
    offsets.append(base + ends + np.arange(1, len(ends) + 1, dtype=np.int64))
    return base + n + len(ends)


def _place(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename the built directory into place; a complete cache already there stays, unless ``overwrite``."""
    if not overwrite:
        try:
            os.rename(tmp, final)  # fails if another process put a (non-empty) cache there first
            return
        except OSError:
            if complete_cache(final) is not None:
                return  # theirs is the same cache: never move it away under its readers
    move_into_place(tmp, final)


def complete_cache(path: Path) -> Optional[TokenCache]:
    """The complete token cache at ``path``, or None (missing, or not finished)."""
    try:
        return TokenCache.load(path) if path.is_dir() else None
    except DataError:
        return None


def assemble_if_complete(
    staging_dir: str | Path,
    shards: Sequence[Shard],
    tokenizer: "PreTrainedTokenizerBase",
    *,
    append_eos: bool = True,
    text_column: str = "text",
) -> Optional[TokenCache]:
    """The cache, assembled now if every shard is written (safe when processes race); None while some are not.

    A cache already complete is returned as it is (and a leftover staging directory removed).
    """
    staging = Path(staging_dir)
    final = cache_dir_of(staging)
    done = complete_cache(final)
    if done is None:
        if missing_shards(staging, shards):
            return complete_cache(final)  # None, unless another process assembled it (removing the shards) just now
        try:
            return assemble(staging, shards, tokenizer, append_eos=append_eos, text_column=text_column)
        except (OSError, ValueError):
            done = complete_cache(final)  # another process assembled it (and removed the shards) first
            if done is None:
                raise
    shutil.rmtree(staging, ignore_errors=True)
    return done
