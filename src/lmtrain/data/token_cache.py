"""Turn a corpus into a cached token stream.

The cache is a directory holding ``tokens.bin`` (raw uint16/uint32 ids, read
back as a memory map), ``doc_offsets.npy`` and ``meta.json``. It is named by a
fingerprint of the inputs, built in a temporary sibling directory and renamed
into place only when complete, so an interrupted build is never mistaken for a
finished one.
Files are read through :mod:`lmtrain.data.readers`; big ``.txt`` files are
streamed in pieces (:func:`~lmtrain.data.readers.iter_text_pieces`) so memory
stays flat however large the corpus is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from lmtrain.data.encoders import best_encoder, encoder_name, splitting_is_exact
from lmtrain.data.readers import (
    check_encoding_errors,
    is_text_file,
    iter_documents,
    iter_text_pieces,
    split_pieces,
)
from lmtrain.data.readers import text as _text
from lmtrain.errors import DataError

if TYPE_CHECKING:  # transformers is slow to import
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "PIPELINE_VERSION",
    "TokenCache",
    "build_token_cache",
    "cache_fingerprint",
    "cache_root",
    "default_cache_root",
    "token_dtype",
    "write_meta",
]

# Bump when the on-disk format or tokenization logic changes: old caches are then ignored.
PIPELINE_VERSION = "1"

# Long documents are encoded in pieces (see lmtrain.data.readers.text.PIECE_CHARS) and the
# pieces are sent to the tokenizer in batches of about this many characters.
_BATCH_CHARS = 1 << 20
TOKENS_FILE, OFFSETS_FILE, META_FILE = "tokens.bin", "doc_offsets.npy", "meta.json"


@dataclass
class TokenCache:
    """A tokenized corpus on disk: every document's ids followed by EOS."""

    tokens: np.ndarray  # 1-D np.memmap, uint16 or uint32
    doc_offsets: np.ndarray  # int64, start of each document in tokens, plus the end
    path: Path
    num_tokens: int
    num_documents: int
    num_bytes: int  # UTF-8 bytes of the source documents
    vocab_size: int
    fingerprint: str = ""

    @property
    def bytes_per_token(self) -> float:
        """Average UTF-8 bytes per token (EOS included), for bits-per-byte."""
        return self.num_bytes / max(1, self.num_tokens)

    @classmethod
    def load(cls, path: str | Path) -> "TokenCache":
        """Open a complete cache directory (memory-mapped; nothing is read eagerly)."""
        path = Path(path)
        meta_file = path / META_FILE
        try:
            meta = json.loads(meta_file.read_text())
            dtype = np.dtype(meta["dtype"])
            n = int(meta["num_tokens"])
            if not meta.get("complete") or (path / TOKENS_FILE).stat().st_size != n * dtype.itemsize:
                raise ValueError("incomplete")
            tokens = np.memmap(path / TOKENS_FILE, dtype=dtype, mode="r", shape=(n,))
            offsets = np.load(path / OFFSETS_FILE, mmap_mode="r")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(
                f"{path} is not a complete token cache ({e}); delete it or pass --overwrite_cache"
            ) from None
        return cls(
            tokens=tokens,
            doc_offsets=offsets,
            path=path,
            num_tokens=n,
            num_documents=int(meta["num_documents"]),
            num_bytes=int(meta["num_bytes"]),
            vocab_size=int(meta["vocab_size"]),
            fingerprint=str(meta.get("fingerprint", "")),
        )


def default_cache_root() -> Path:
    """``$LMTRAIN_CACHE``, else ``$XDG_CACHE_HOME/lmtrain``, else ``~/.cache/lmtrain``."""
    if os.environ.get("LMTRAIN_CACHE"):
        return Path(os.environ["LMTRAIN_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "lmtrain"
    return Path.home() / ".cache" / "lmtrain"


def _tokenizer_state(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.to_str()
    vocab = tokenizer.get_vocab()
    return type(tokenizer).__name__ + json.dumps(sorted(vocab.items()))


def _fingerprint(files: Sequence[Path], tokenizer: Any, **options: Any) -> str:
    h = hashlib.sha256()
    stats = []
    for f in files:
        st = os.stat(f)
        stats.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
    h.update(json.dumps({"v": PIPELINE_VERSION, "files": stats, **options}, sort_keys=True).encode())
    h.update(_tokenizer_state(tokenizer).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The directory caches are kept in: ``cache_dir``, else :func:`default_cache_root`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()


def cache_fingerprint(
    files: Sequence[Path],
    tokenizer: Any,
    text_column: str = "text",
    encoding_errors: str = "strict",
    append_eos: bool = True,
) -> str:
    """The fingerprint ``build_token_cache`` names the cache of these inputs by (``tokens-<fingerprint>``)."""
    return _fingerprint(
        files,
        tokenizer,
        text_column=text_column,
        encoding_errors=encoding_errors,
        append_eos=append_eos,
        eos_id=separator_id(tokenizer) if append_eos else None,
    )


def token_dtype(vocab_size: int) -> np.dtype:
    """The dtype of a cache's ids: uint16 when the vocabulary fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def separator_id(tokenizer: Any) -> int:
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise DataError(
        "the tokenizer has no eos_token (or sep_token) to put between documents; use a tokenizer that defines one"
    )


def build_token_cache(
    files: Sequence[Path],
    tokenizer: "PreTrainedTokenizerBase",
    cache_dir: str | Path | None = None,
    text_column: str = "text",
    encoding_errors: str = "strict",
    overwrite: bool = False,
    append_eos: bool = True,
    progress: bool | None = None,
) -> TokenCache:
    """Tokenize ``files`` once into ``<cache_dir>/tokens-<fingerprint>`` and memory-map it.

    A complete cache with the same fingerprint (files' paths, sizes and mtimes,
    tokenizer, options) is reused unless ``overwrite``. Files are read in
    bounded chunks, so memory stays flat however large the corpus is (one
    document of a JSON/CSV/parquet file is held whole). ``progress`` shows a
    bar of bytes read on stderr (default: when stderr is a terminal).
    """
    check_encoding_errors(encoding_errors)
    files = [Path(f) for f in files]
    if not files:
        raise DataError("no input files given; pass --train_file PATH")
    for f in files:
        if not f.is_file():
            raise DataError(f"no such file or directory: {f}; check the path")
    vocab_size = len(tokenizer)
    eos_id = separator_id(tokenizer) if append_eos else None
    fp = cache_fingerprint(files, tokenizer, text_column, encoding_errors, append_eos)
    root = cache_root(cache_dir)
    final = root / f"tokens-{fp}"
    if final.is_dir() and not overwrite:
        try:
            return TokenCache.load(final)
        except DataError:
            pass  # damaged by hand: rebuild it below
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root, final.name)
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_cache(tmp, files, tokenizer, text_column, encoding_errors, eos_id, vocab_size, fp, progress)
        move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenCache.load(final)


def _remove_stale_tmp(root: Path, name: str) -> None:
    """Delete temp dirs left by builds whose process has died (killed, OOM, ...)."""
    for tmp in root.glob(f"{name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)  # signal 0: only checks that the process exists
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, OverflowError, PermissionError):
            pass  # not ours to judge


def move_into_place(tmp: Path, final: Path) -> None:
    # A directory cannot be renamed over a non-empty one: move the old one aside first.
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:
        # Another process finished the same cache first: keep theirs.
        if not (final / META_FILE).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


class _Progress:
    """A tqdm bar of input bytes on stderr, or nothing."""

    def __init__(self, files: Sequence[Path], show: bool | None) -> None:
        self.bar = None
        self.done = 0
        if show is None:
            show = bool(getattr(sys.stderr, "isatty", lambda: False)())
        if show:
            from tqdm import tqdm

            total = sum(os.stat(f).st_size for f in files)
            self.bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="tokenizing",
                file=sys.stderr,
                mininterval=0.5,
                dynamic_ncols=True,
            )

    def to(self, done: int) -> None:
        if self.bar is not None and done > self.done:
            self.bar.update(done - self.done)
            self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_cache(
    out: Path,
    files: Sequence[Path],
    tokenizer: Any,
    text_column: str,
    encoding_errors: str,
    eos_id: int | None,
    vocab_size: int,
    fingerprint: str,
    progress: bool | None = None,
) -> None:
    dtype = token_dtype(vocab_size)
    encode = best_encoder(tokenizer)
    can_split = splitting_is_exact(encode, tokenizer)
    offsets = array("q", [0])
    num_tokens = num_bytes = 0
    batch: list[str] = []
    ends: list[bool] = []  # ends[i]: batch[i] is the last piece of its document
    batch_chars = 0
    # Enough pieces per batch to keep every core busy; memory stays bounded by the batch.
    batch_limit = max(_BATCH_CHARS, 4 * (os.cpu_count() or 1) * _text.PIECE_CHARS)
    # Arrays straight from the fast encoder (uint32); lists converted piece by piece otherwise.
    fast = hasattr(encode, "encode_arrays")
    fast_encoder: Any = encode  # a FastBPEEncoder when fast (best_encoder's return type names only its __call__)
    encode_arrays = (
        fast_encoder.encode_arrays
        if fast
        else (lambda texts: [np.asarray(ids, dtype=np.int64) for ids in encode(texts)])
    )
    eos = np.array([0 if eos_id is None else eos_id], dtype=np.uint32 if fast else np.int64)

    def flush() -> None:
        nonlocal num_tokens, batch_chars
        if not batch:
            return
        parts = []
        count = num_tokens
        for piece_ids, last in zip(encode_arrays(batch), ends):
            if len(piece_ids):
                parts.append(piece_ids)
                count += len(piece_ids)
            if last:
                if eos_id is not None:
                    parts.append(eos)
                    count += 1
                offsets.append(count)
        batch.clear()
        ends.clear()
        batch_chars = 0
        if not parts:
            return
        arr = np.concatenate(parts)  # uint32 from the fast encoder, else int64
        del parts
        hi, lo = int(arr.max()), int(arr.min())
        if hi >= vocab_size or lo < 0:
            bad = hi if hi >= vocab_size else lo
            raise DataError(
                f"the tokenizer produced token id {bad}, outside its vocabulary of {vocab_size}; "
                "use a consistent tokenizer (re-save or retrain it)"
            )
        arr.astype(dtype).tofile(fh)
        num_tokens = count

    def add(pieces: Iterator[str]) -> None:
        """Queue one document, given as consecutive pieces."""
        prev = None
        for piece in pieces:
            if prev is not None:
                add_piece(prev, False)
            prev = piece
        add_piece(prev if prev is not None else "", True)

    def add_piece(piece: str, last: bool) -> None:
        nonlocal num_bytes, batch_chars
        num_bytes += len(piece) if piece.isascii() else len(piece.encode("utf-8"))
        batch.append(piece)
        ends.append(last)
        batch_chars += len(piece)
        if batch_chars >= batch_limit:
            flush()

    bar = _Progress(files, progress)
    read_before = 0  # input bytes of the files already done

    def progress_from(base: int) -> Callable[[int], None]:
        return lambda n: bar.to(base + n)

    try:
        with open(out / TOKENS_FILE, "wb") as fh:
            for f in files:
                size = os.stat(f).st_size
                if can_split and is_text_file(f):  # one document, streamed in pieces
                    add(iter_text_pieces(f, encoding_errors, on_read=progress_from(read_before)))
                else:
                    seen = 0
                    for doc in iter_documents([f], text_column=text_column, encoding_errors=encoding_errors):
                        add(iter(split_pieces(doc) if can_split else [doc]))
                        seen += len(doc)  # characters: an estimate of the bytes read
                        bar.to(read_before + min(seen, size))
                read_before += size
                bar.to(read_before)
            flush()
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        bar.close()
        close = getattr(encode, "close", None)
        if close is not None:
            close()  # no idle encoding threads left behind (data loader workers fork)
    num_documents = len(offsets) - 1
    if num_tokens == 0:
        raise DataError(f"the input files ({', '.join(map(str, files))}) produced no tokens; add text to them")
    np.save(out / OFFSETS_FILE, np.frombuffer(offsets, dtype=np.int64))
    write_meta(out, num_tokens, num_documents, num_bytes, dtype, vocab_size, fingerprint, files, encoder_name(encode))


def write_meta(
    out: Path,
    num_tokens: int,
    num_documents: int,
    num_bytes: int,
    dtype: np.dtype,
    vocab_size: int,
    fingerprint: str,
    files: Sequence[Path],
    encoder: str,
) -> None:
    """Write ``meta.json``, last: its presence marks the directory complete."""
    meta = {
        "num_tokens": num_tokens,
        "num_documents": num_documents,
        "num_bytes": num_bytes,
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "fingerprint": fingerprint,
        "pipeline_version": PIPELINE_VERSION,
        "files": [str(Path(f).resolve()) for f in files],
        "encoder": encoder,  # informational: both encoders give the same ids
        "complete": True,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
