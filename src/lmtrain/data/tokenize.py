"""Train a byte-level BPE tokenizer and turn a corpus into a cached token stream.

The cache is a directory holding ``tokens.bin`` (raw uint16/uint32 ids, read
back as a memory map), ``doc_offsets.npy`` and ``meta.json``. It is named by a
fingerprint of the inputs, built in a temporary sibling directory and renamed
into place only when complete, so an interrupted build is never mistaken for a
finished one.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import zlib
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from lmtrain.data.readers import check_encoding_errors, iter_documents
from lmtrain.errors import ConfigError, DataError

if TYPE_CHECKING:  # transformers is slow to import; only needed when training a tokenizer
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "PIPELINE_VERSION",
    "SPECIAL_TOKENS",
    "TokenCache",
    "build_token_cache",
    "default_cache_root",
    "train_bpe_tokenizer",
]

# Bump when the on-disk format or tokenization logic changes: old caches are then ignored.
PIPELINE_VERSION = "1"
EOS_TOKEN, PAD_TOKEN, MASK_TOKEN = "<|endoftext|>", "<pad>", "<mask>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN, MASK_TOKEN]

_PIECE_CHARS = 1 << 16  # long documents are encoded in pieces of about this size ...
_BATCH_CHARS = 1 << 20  # ... and pieces are sent to the tokenizer in batches of about this size
_READ_BYTES = 1 << 20  # .txt files are read (and decoded) this many bytes at a time
_TOKENS_FILE, _OFFSETS_FILE, _META_FILE = "tokens.bin", "doc_offsets.npy", "meta.json"


# --------------------------------------------------------------------------- tokenizer training


def _training_texts(docs: Iterator[str]) -> Iterator[str]:
    # The trainer parallelises over items; whole-book documents would use one core.
    for doc in docs:
        if len(doc) <= _PIECE_CHARS:
            yield doc
        else:
            yield from _split_document(doc)


def train_bpe_tokenizer(
    files: Sequence[Path],
    vocab_size: int = 8192,
    text_column: str = "text",
    encoding_errors: str = "strict",
) -> "PreTrainedTokenizerFast":
    """Train a GPT-2 style byte-level BPE on ``files`` and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ConfigError(
            f"vocab_size {vocab_size} is too small for a byte-level BPE "
            f"(it needs {len(alphabet) + len(SPECIAL_TOKENS)} base tokens); pass --vocab_size 512 or more"
        )
    check_encoding_errors(encoding_errors)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # ids 0, 1, 2
        initial_alphabet=alphabet,
        show_progress=False,
    )
    docs = iter_documents(files, text_column=text_column, encoding_errors=encoding_errors)
    tok.train_from_iterator(_training_texts(docs), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        mask_token=MASK_TOKEN,
        # decode(encode(text)) must give back text exactly
        clean_up_tokenization_spaces=False,
    )


# --------------------------------------------------------------------------- token cache


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
        meta_file = path / _META_FILE
        try:
            meta = json.loads(meta_file.read_text())
            dtype = np.dtype(meta["dtype"])
            n = int(meta["num_tokens"])
            if not meta.get("complete") or (path / _TOKENS_FILE).stat().st_size != n * dtype.itemsize:
                raise ValueError("incomplete")
            tokens = np.memmap(path / _TOKENS_FILE, dtype=dtype, mode="r", shape=(n,))
            offsets = np.load(path / _OFFSETS_FILE, mmap_mode="r")
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


def _separator_id(tokenizer: Any) -> int:
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise DataError(
        "the tokenizer has no eos_token (or sep_token) to put between documents; "
        "use a tokenizer that defines one"
    )


def _hf_encoder(tokenizer: Any) -> Callable[[list[str]], list[list[int]]]:
    """The tokenizer's own batch encoder (``tokenizers`` spreads a batch over every core)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]
    from tokenizers import Tokenizer

    # A private copy, so turning off truncation/padding does not touch the caller's.
    tok = Tokenizer.from_str(backend.to_str())
    tok.no_truncation()
    tok.no_padding()
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # fast: skips offsets
    return lambda texts: [e.ids for e in encode(texts, add_special_tokens=False)]


def _encoder(tokenizer: Any) -> Callable[[list[str]], list[list[int]]]:
    """A function mapping a batch of texts to id lists, without special tokens.

    The fastest exact encoder available: for byte-level BPE tokenizers a
    tiktoken encoder checked to give the tokenizer's own ids (see
    :mod:`lmtrain.data.fast_bpe`; ``LMTRAIN_NO_FAST_BPE=1`` turns it off),
    otherwise the tokenizer's batch encoder. Either way the ids are the same,
    so the cache fingerprint does not depend on which one ran.
    """
    from lmtrain.data.fast_bpe import make_fast_encoder

    fast = make_fast_encoder(tokenizer)
    if fast is not None:
        return fast
    return _hf_encoder(tokenizer)


def _encoder_name(encode: Callable[..., Any]) -> str:
    from lmtrain.data.fast_bpe import FastBPEEncoder

    return "tiktoken" if isinstance(encode, FastBPEEncoder) else "tokenizers"


# A piece boundary: just before a single space or newline between two non-space
# characters. For GPT-2 style pre-tokenizers (and most others) such a point
# always starts a new pre-token whatever follows, and the pre-token before it
# ends there whatever precedes, so encoding the pieces separately gives the ids
# of the whole text. (A newline after other whitespace is not such a point:
# "\n\n" + "X" pre-tokenizes as "\n", "\n", "X" but "\n\n" at the end of a piece
# as one pre-token.) Python's \s covers every character the tokenizers' regexes
# treat as whitespace.
_CUT = re.compile(r"(?<=\S)[ \n](?=\S)")


def _split_document(doc: str) -> list[str]:
    """Cut ``doc`` at piece boundaries (see ``_CUT``), about every _PIECE_CHARS."""
    pieces, start, n = [], 0, len(doc)
    while n - start > _PIECE_CHARS:
        m = _CUT.search(doc, start + _PIECE_CHARS)
        if m is None:
            break
        pieces.append(doc[start : m.start()])
        start = m.start()
    pieces.append(doc[start:])
    return pieces


_PROBE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n  Speak, speak.\n"
    "x = 1\t# tab\n'Tis 42 o'clock, naïve café — ünïcödé 漢字.\r\nEnd\n\n\nTHE END\n"
    "it's 'tis don't 12 345 6.7 -- ... (a) [b] {c} a\nb 1\n2 .\n. 'll\n's x \n y\t\nz "
    "<|endoftext|> a<|endoftext|>b <pad>\n<mask> 日本 語 🙂 🙂\n🙂 e\u0301 f\u00a0g h\u3000i ¿qué?\n"
)


def _splitting_is_exact(encode: Callable[[list[str]], list[list[int]]], tokenizer: Any = None) -> bool:
    """Check on a probe text that this tokenizer gives the same ids piecewise."""
    added = _added_token_texts(tokenizer)
    if any(_CUT.search(f"x{t}x") or "\n" in t or " " in t for t in added):
        return False  # an added token could span a piece boundary
    cuts = [m.start() for m in _CUT.finditer(_PROBE)]
    pieces = [_PROBE[a:b] for a, b in zip([0] + cuts, cuts + [len(_PROBE)])]
    whole = encode([_PROBE])[0]
    return list(whole) == [i for ids in encode(pieces) for i in ids]


def _added_token_texts(tokenizer: Any) -> list[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        if backend is not None:
            return [str(t.content) for t in backend.get_added_tokens_decoder().values()]
        return list(tokenizer.get_added_vocab())
    except Exception:
        return []


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
    eos_id = _separator_id(tokenizer) if append_eos else None
    fp = _fingerprint(
        files, tokenizer, text_column=text_column, encoding_errors=encoding_errors,
        append_eos=append_eos, eos_id=eos_id,
    )
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
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
        _write_cache(
            tmp, files, tokenizer, text_column, encoding_errors, eos_id, vocab_size, fp, progress
        )
        _move_into_place(tmp, final)
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


def _move_into_place(tmp: Path, final: Path) -> None:
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
        if not (final / _META_FILE).is_file():
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
                total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc="tokenizing", file=sys.stderr, mininterval=0.5, dynamic_ncols=True,
            )

    def to(self, done: int) -> None:
        if self.bar is not None and done > self.done:
            self.bar.update(done - self.done)
            self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _streamable_txt(path: Path) -> str | None:
    """'txt' / 'gz' for plain-text files this module reads itself in chunks, else None."""
    name = path.name.lower()
    if name.endswith(".txt"):
        return "txt"
    if name.endswith(".txt.gz"):
        return "gz"
    return None


def _reader_error(path: Path, text_column: str, encoding_errors: str, cause: BaseException | None) -> BaseException:
    """The reader's own error for a file the chunked reader could not read."""
    try:
        for _ in iter_documents([path], text_column=text_column, encoding_errors=encoding_errors):
            pass
    except DataError as e:
        return e
    return cause if cause is not None else DataError(f"{path} could not be read")


def _txt_pieces(
    path: Path, compressed: bool, errors: str, on_read: Callable[[int], None]
) -> Iterator[str]:
    """One .txt file's text (one document), read in bounded chunks and cut into
    pieces at boundaries where encoding separately is exact (see ``_CUT``)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors)  # as the reader decodes
    buf = ""
    scanned = 0  # no boundary starts in buf[:scanned]
    with open(path, "rb") as raw:
        src: Any = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        while True:
            chunk = src.read(_READ_BYTES)
            on_read(raw.tell())
            buf += decoder.decode(chunk, final=not chunk)
            if not chunk:
                break
            pos = 0
            while len(buf) - pos > _PIECE_CHARS:
                m = _CUT.search(buf, max(pos + _PIECE_CHARS, scanned))
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
        yield from _split_document(buf)


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
    dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
    encode = _encoder(tokenizer)
    can_split = _splitting_is_exact(encode, tokenizer)
    offsets = array("q", [0])
    num_tokens = num_bytes = 0
    batch: list[str] = []
    ends: list[bool] = []  # ends[i]: batch[i] is the last piece of its document
    batch_chars = 0
    # Enough pieces per batch to keep every core busy; memory stays bounded by the batch.
    batch_limit = max(_BATCH_CHARS, 4 * (os.cpu_count() or 1) * _PIECE_CHARS)
    # Arrays straight from the fast encoder (uint32); lists converted piece by piece otherwise.
    fast = hasattr(encode, "encode_arrays")
    encode_arrays = encode.encode_arrays if fast else (
        lambda texts: [np.asarray(ids, dtype=np.int64) for ids in encode(texts)]
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
    try:
        with open(out / _TOKENS_FILE, "wb") as fh:
            for f in files:
                size = os.stat(f).st_size
                kind = _streamable_txt(f) if can_split else None
                if kind is not None:
                    _add_txt(f, kind, text_column, encoding_errors, add, lambda n: bar.to(read_before + n))
                else:
                    seen = 0
                    for doc in iter_documents([f], text_column=text_column, encoding_errors=encoding_errors):
                        add(iter(_split_document(doc) if can_split and len(doc) > _PIECE_CHARS else [doc]))
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
        raise DataError(
            f"the input files ({', '.join(map(str, files))}) produced no tokens; add text to them"
        )
    np.save(out / _OFFSETS_FILE, np.frombuffer(offsets, dtype=np.int64))
    meta = {
        "num_tokens": num_tokens,
        "num_documents": num_documents,
        "num_bytes": num_bytes,
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "fingerprint": fingerprint,
        "pipeline_version": PIPELINE_VERSION,
        "files": [str(Path(f).resolve()) for f in files],
        "encoder": _encoder_name(encode),  # informational: both encoders give the same ids
        "complete": True,
    }
    # meta.json is written last: its presence marks the directory complete.
    (out / _META_FILE).write_text(json.dumps(meta, indent=1))


def _add_txt(
    path: Path,
    kind: str,
    text_column: str,
    encoding_errors: str,
    add: Callable[[Iterator[str]], None],
    on_read: Callable[[int], None],
) -> None:
    """Queue a .txt file (one document) read in chunks; errors are the reader's."""
    compressed = kind == "gz"
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if os.stat(path).st_size == 0 or (magic == b"\x1f\x8b") != compressed:
        raise _reader_error(path, text_column, encoding_errors, None)  # empty, or gzip mislabelled
    pieces = _txt_pieces(path, compressed, encoding_errors, on_read)
    try:
        first = next(pieces, None)
        if first is None:  # e.g. only a byte-order mark
            raise _reader_error(path, text_column, encoding_errors, None)
        add(_chain_first(first, pieces))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise _reader_error(path, text_column, encoding_errors, e) from None


def _chain_first(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest
