"""Text -> token ids, exactly as the tokenizer would: the fastest encoder that gives its ids.

For byte-level BPE tokenizers that is a tiktoken encoder built from the tokenizer's own merges and
checked against it (`fast_bpe`); otherwise the tokenizer's batch encoder. The token cache also encodes
long documents piecewise, which is only exact when no token spans a piece boundary: `splitting_is_exact`
checks that on a probe text.
"""

from __future__ import annotations

from typing import Any, Callable

from lmtrain.data.readers.text import PIECE_BOUNDARY


def hf_encoder(tokenizer: Any) -> Callable[[list[str]], list[list[int]]]:
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


def best_encoder(tokenizer: Any) -> Callable[[list[str]], list[list[int]]]:
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
    return hf_encoder(tokenizer)


def encoder_name(encode: Callable[..., Any]) -> str:
    from lmtrain.data.fast_bpe import FastBPEEncoder

    return "tiktoken" if isinstance(encode, FastBPEEncoder) else "tokenizers"


_PROBE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n  Speak, speak.\n"
    "x = 1\t# tab\n'Tis 42 o'clock, naïve café — ünïcödé 漢字.\r\nEnd\n\n\nTHE END\n"
    "it's 'tis don't 12 345 6.7 -- ... (a) [b] {c} a\nb 1\n2 .\n. 'll\n's x \n y\t\nz "
    "<|endoftext|> a<|endoftext|>b <pad>\n<mask> 日本 語 🙂 🙂\n🙂 e\u0301 f\u00a0g h\u3000i ¿qué?\n"
)


def splitting_is_exact(encode: Callable[[list[str]], list[list[int]]], tokenizer: Any = None) -> bool:
    """Check on a probe text that this tokenizer gives the same ids piecewise."""
    added = added_token_texts(tokenizer)
    if any(PIECE_BOUNDARY.search(f"x{t}x") or "\n" in t or " " in t for t in added):
        return False  # an added token could span a piece boundary
    cuts = [m.start() for m in PIECE_BOUNDARY.finditer(_PROBE)]
    pieces = [_PROBE[a:b] for a, b in zip([0] + cuts, cuts + [len(_PROBE)])]
    whole = encode([_PROBE])[0]
    return list(whole) == [i for ids in encode(pieces) for i in ids]


def added_token_texts(tokenizer: Any) -> list[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        if backend is not None:
            return [str(t.content) for t in backend.get_added_tokens_decoder().values()]
        return list(tokenizer.get_added_vocab())
    except Exception:
        return []
