"""A fast exact encoder for GPT-2 style byte-level BPE tokenizers, built on tiktoken.

:func:`make_fast_encoder` turns a ``tokenizers`` byte-level BPE (the kind
:func:`lmtrain.data.bpe.train_bpe_tokenizer` trains, and GPT-2's) into a
``tiktoken.Encoding`` with the same vocabulary, merge priority and
pre-tokenization pattern. tiktoken encodes several times faster and releases
the GIL, so a batch is spread over every core.

The fast encoder is only returned when it gives exactly the ids the tokenizer
itself gives (``backend_tokenizer.encode_batch(texts, add_special_tokens=False)``):

* the tokenizer must be eligible (no normalizer; a ``ByteLevel`` pre-tokenizer
  with the GPT-2 regex and no prefix space; a plain BPE model without dropout,
  subword prefixes/suffixes or byte fallback; added tokens matched literally);
* merge priority must be expressible as tiktoken ranks;
* and a probe text (ASCII and Unicode letters, digits, whitespace runs,
  contractions, control characters, special-token strings) must encode to the
  same ids both ways.

Otherwise it returns ``None`` and callers use the tokenizer's own batch encoder.
Like the tokenizer, the fast encoder turns added tokens that appear in the
text (``"<|endoftext|>"``...) into their ids; everything between them is
encoded as ordinary text. Set ``LMTRAIN_NO_FAST_BPE=1`` to never use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import unicodedata
from array import array
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

__all__ = ["GPT2_PATTERN", "DISABLE_ENV", "FastBPEEncoder", "make_fast_encoder", "fast_bpe_disabled"]

logger = logging.getLogger(__name__)

# The pre-tokenization regex of GPT-2, which tokenizers' ByteLevel(use_regex=True) uses.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
DISABLE_ENV = "LMTRAIN_NO_FAST_BPE"

_EMPTY = np.empty(0, dtype=np.uint32)
_U32 = next((c for c in "IL" if array(c).itemsize == 4), None)  # array typecode of uint32


def fast_bpe_disabled() -> bool:
    """True when ``$LMTRAIN_NO_FAST_BPE`` asks for the tokenizer's own encoder."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (ByteLevel's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_OF_CHAR = {c: b for b, c in _bytes_to_unicode().items()}


def _token_bytes(token: str) -> bytes | None:
    try:
        return bytes(_BYTE_OF_CHAR[c] for c in token)
    except KeyError:
        return None


def _num_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class FastBPEEncoder:
    """Maps a batch of texts to id lists (no special tokens added), like the tokenizer."""

    def __init__(
        self,
        encoding: Any,
        rank_to_id: np.ndarray | None,
        added_passes: list[tuple[re.Pattern[str], dict[str, int]]],
        num_threads: int | None = None,
    ) -> None:
        self.encoding = encoding
        self.rank_to_id = rank_to_id  # None: tiktoken ranks are the token ids
        self.added_passes = added_passes  # literal added tokens, matched in this order
        self.num_threads = num_threads or _num_threads()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        # One long-lived pool: tiktoken keeps a regex (and its cache) per thread
        # slot, so fresh threads for every batch would keep allocating new ones.
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="lmtrain-bpe")
            return self._pool

    def close(self, wait: bool = True) -> None:
        """Stop the encoding threads (they start again when needed), e.g. before a fork."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)

    def __del__(self) -> None:
        try:
            self.close(wait=False)
        except Exception:
            pass

    def _encode_one(self, text: str) -> np.ndarray:
        # A piece's id list is turned into an array at once: a batch never holds
        # millions of Python ints (about 40 bytes each) at the same time.
        if not text:
            return _EMPTY
        ids = self.encoding.encode_ordinary(text)
        # array() converts a list of ints about 3x faster than np.array.
        ids = np.frombuffer(array(_U32, ids), np.uint32) if _U32 else np.array(ids, np.uint32)
        return ids if self.rank_to_id is None else self.rank_to_id[ids]

    def _encode_ordinary(self, texts: list[str]) -> list[np.ndarray]:
        if len(texts) > 1 and self.num_threads > 1:
            # tiktoken releases the GIL while it encodes: threads use every core.
            return list(self._executor().map(self._encode_one, texts))
        return [self._encode_one(t) for t in texts]

    def _split_added(self, text: str) -> list[str | int]:
        """``text`` cut around added tokens: text pieces and added-token ids."""
        parts: list[str | int] = [text]
        for pattern, ids in self.added_passes:
            if not any(isinstance(p, str) and pattern.search(p) for p in parts):
                continue
            new: list[str | int] = []
            for p in parts:
                if isinstance(p, int):
                    new.append(p)
                    continue
                for k, s in enumerate(pattern.split(p)):
                    if k % 2:
                        new.append(ids[s])
                    elif s:
                        new.append(s)
            parts = new
        return parts

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The ids of each text as a uint32 array (no special tokens added)."""
        texts = list(texts)
        if not self.added_passes:
            return self._encode_ordinary(texts)
        plans = [self._split_added(t) for t in texts]
        if all(len(p) == 1 and isinstance(p[0], str) for p in plans):
            return self._encode_ordinary(texts)
        flat = [s for plan in plans for s in plan if isinstance(s, str)]
        encoded = iter(self._encode_ordinary(flat))
        out = []
        for plan in plans:
            parts = [np.array([s], dtype=np.uint32) if isinstance(s, int) else next(encoded) for s in plan]
            out.append(np.concatenate(parts) if parts else _EMPTY)
        return out

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids of each text (no special tokens added), as lists."""
        return [a.tolist() for a in self.encode_arrays(texts)]


# --------------------------------------------------------------------------- eligibility


class _NotEligible(Exception):
    pass


def _require(cond: bool, reason: str) -> None:
    if not cond:
        raise _NotEligible(reason)


def _check_pipeline(state: dict[str, Any]) -> None:
    _require(state.get("normalizer") is None, "it has a normalizer")
    pre = state.get("pre_tokenizer") or {}
    _require(pre.get("type") == "ByteLevel", f"its pre-tokenizer is {pre.get('type')}, not ByteLevel")
    _require(not pre.get("add_prefix_space", True), "its ByteLevel pre-tokenizer adds a prefix space")
    _require(pre.get("use_regex", True), "its ByteLevel pre-tokenizer does not use the GPT-2 regex")
    model = state.get("model") or {}
    _require(model.get("type") == "BPE", f"its model is {model.get('type')}, not BPE")
    _require(not model.get("dropout"), "its BPE uses dropout")
    _require(not model.get("continuing_subword_prefix"), "its BPE has a continuing-subword prefix")
    _require(not model.get("end_of_word_suffix"), "its BPE has an end-of-word suffix")
    _require(not model.get("byte_fallback"), "its BPE uses byte fallback")


def _merge_pairs(merges: list[Any]) -> list[tuple[str, str]]:
    pairs = []
    for m in merges:
        if isinstance(m, str):
            parts = m.split(" ")
            _require(len(parts) == 2, f"it has an unreadable merge {m!r}")
            pairs.append((parts[0], parts[1]))
        else:
            _require(len(m) == 2, f"it has an unreadable merge {m!r}")
            pairs.append((m[0], m[1]))
    return pairs


def _ranks(model: dict[str, Any]) -> tuple[dict[bytes, int], np.ndarray | None]:
    """tiktoken's mergeable ranks, and a rank -> id table unless ranks are the ids."""
    vocab: dict[str, int] = model["vocab"]
    byte_ids = []
    for _b, ch in sorted(_bytes_to_unicode().items()):
        _require(ch in vocab, f"its vocabulary lacks the byte token {ch!r}")
        byte_ids.append(int(vocab[ch]))
    merges = _merge_pairs(model.get("merges") or [])
    merged: list[tuple[bytes, int]] = []
    seen: set[str] = set()
    ids_are_ranks = True
    last = -1
    for a, b in merges:
        ab = a + b
        _require(a in vocab and b in vocab and ab in vocab, f"its merge ({a!r}, {b!r}) is not in the vocabulary")
        _require(ab not in seen, f"two merges make the token {ab!r}")
        seen.add(ab)
        raw = _token_bytes(ab)
        _require(raw is not None, f"its token {ab!r} is not byte-level")
        assert raw is not None  # _require raised otherwise
        i = int(vocab[ab])
        if not (i > last and i > vocab[a] and i > vocab[b]):
            ids_are_ranks = False
        last = max(last, i)
        merged.append((raw, i))
    if ids_are_ranks:
        # Merge priority is id order (tokenizers trained by `tokenizers` and GPT-2's):
        # the ids can serve as ranks directly.
        ranks = {bytes([b]): i for b, i in enumerate(byte_ids)}
        ranks.update(merged)
        _require(len(set(ranks.values())) == len(ranks), "two tokens share an id")
        return ranks, None
    # Ranks from merge order (bytes first), translated to ids afterwards.
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update((raw, 256 + k) for k, (raw, _) in enumerate(merged))
    table = np.array(byte_ids + [i for _, i in merged], dtype=np.uint32)
    return ranks, table


def _added_passes(state: dict[str, Any], encode_special_tokens: bool) -> list[tuple[re.Pattern[str], dict[str, int]]]:
    """Regexes finding added tokens the way tokenizers' AddedVocabulary does.

    Tokens that are not normalized are split off first, then normalized ones
    (there is no normalizer, so both match literally); within a pass the
    leftmost, then longest, match wins.
    """
    groups: dict[bool, dict[str, int]] = {False: {}, True: {}}
    for tok in state.get("added_tokens") or []:
        content = tok.get("content", "")
        if not content or (encode_special_tokens and tok.get("special")):
            continue
        _require(
            not (tok.get("lstrip") or tok.get("rstrip") or tok.get("single_word")),
            f"its added token {content!r} uses lstrip/rstrip/single_word",
        )
        groups[bool(tok.get("normalized"))][content] = int(tok["id"])
    passes = []
    for normalized in (False, True):
        ids = groups[normalized]
        if ids:
            alternatives = "|".join(re.escape(c) for c in sorted(ids, key=len, reverse=True))
            passes.append((re.compile(f"({alternatives})"), ids))
    return passes


def _probe_texts() -> list[str]:
    """Texts on which the fast encoder must agree with the tokenizer."""
    low = "".join(chr(c) for c in range(0x800) if not 0xD800 <= c < 0xE000)
    spaces = "".join(
        chr(c) for c in range(0x3100) if chr(c).isspace() or unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp", "Cf")
    )
    return [
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n  Speak, speak.\n",
        "x = 1\t# tab\n'Tis 42 o'clock, naïve café — ünïcödé 漢字.\r\nEnd\n\n\nTHE END\n",
        "I'm don't we've they're you'll he'd it's 'S 'T 'Re THEY'RE o'clock ''s 's't 'lls 'd'd",
        "0 12 345 6789 3.14159 1,000,000 2024-01-02 ٣٤٥ ²³ ½ Ⅻ 二十 ①② x1y22z333",
        "a  b   c\t\td \n\n  \n e   \r\n\r\n\x0b\x0c f\u00a0g\u2003h\u3000i\u2028j\u200bk \n  ",
        "   leading and trailing   ",
        "naïve café — 日本語のテキスト 한국어 Ελληνικά русский עברית العربية हिन्दी 🙂👍🏽 e\u0301 "
        "\U0001f469\u200d\U0001f4bb \U00010400\U0001d400 \ufeffbom",
        "foo<|endoftext|>bar <pad> x<mask>y <|endoftext|>\n<|endoftext|><|endoftext|> <|endo <pad",
        "\x00\x01\x1f\x7f control \x1b[0m",
        "!!! ??? ... --- ''' \"\"\" (([{}])) @#$%^&*_+=~`|\\/<> ,,, ;;; ::",
        "",
        " ",
        "\n",
        low,
        " ".join(low),
        "a".join(low) + "1".join(low),
        spaces + "x" + "y".join(spaces) + " ".join(spaces) + "\n".join(spaces),
    ]


def _reference(backend: Any) -> Any:
    """The encoder the pipeline falls back to: the backend without truncation/padding.

    That fallback encodes with a copy made from ``to_str()``, which also drops
    ``encode_special_tokens``; the original serves when it has none of these.
    """
    if (
        getattr(backend, "truncation", None) is None
        and getattr(backend, "padding", None) is None
        and not getattr(backend, "encode_special_tokens", False)
    ):
        return backend
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(backend.to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok


_made: dict[tuple[str, str, int | None], FastBPEEncoder | None] = {}  # a few, by tokenizer state


def make_fast_encoder(tokenizer: Any, num_threads: int | None = None) -> FastBPEEncoder | None:
    """A tiktoken encoder giving exactly ``tokenizer``'s ids, or None if there is none.

    ``tokenizer`` is a ``PreTrainedTokenizerFast`` (or anything with a
    ``backend_tokenizer``) or a ``tokenizers.Tokenizer``. The result maps a
    list of texts to their ids without added special tokens, encoding with
    ``num_threads`` threads (default: every core). Results are remembered per
    tokenizer state, so the check runs once per tokenizer and process.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not hasattr(backend, "to_str") or fast_bpe_disabled():
        return None
    try:
        import tiktoken
    except ImportError:
        logger.debug("fast BPE unavailable: tiktoken is not installed")
        return None
    try:
        text = backend.to_str()
    except Exception:
        return None
    key = (hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(), GPT2_PATTERN, num_threads)
    if key not in _made:
        if len(_made) >= 4:
            _made.pop(next(iter(_made)))
        _made[key] = _make(tiktoken, backend, text, num_threads)
    return _made[key]


def _make(tiktoken: Any, backend: Any, text: str, num_threads: int | None) -> FastBPEEncoder | None:
    try:
        state = json.loads(text)
        _check_pipeline(state)
        ranks, table = _ranks(state["model"])
        passes = _added_passes(state, encode_special_tokens=False)  # as the fallback's copy
        encoding = tiktoken.Encoding("lmtrain-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
        del state, ranks
    except _NotEligible as e:
        logger.debug("fast BPE not used: %s", e)
        return None
    except Exception as e:  # an unexpected tokenizer layout, or tiktoken refusing it
        logger.debug("fast BPE not used: %s: %s", type(e).__name__, e)
        return None
    fast = FastBPEEncoder(encoding, table, passes, num_threads)
    probe = _probe_texts()
    try:
        reference = _reference(backend)
        # One at a time: encode_batch would start tokenizers' thread pool for nothing.
        expected = [reference.encode(t, add_special_tokens=False).ids for t in probe]
        got = fast(probe)
    except Exception as e:
        logger.debug("fast BPE not used: probe failed: %s: %s", type(e).__name__, e)
        return None
    if got != expected:
        logger.debug("fast BPE not used: it disagrees with the tokenizer on the probe text")
        fast.close(wait=False)
        return None
    return fast
