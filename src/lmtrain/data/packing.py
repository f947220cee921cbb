"""How a token cache becomes fixed-length rows: ``concat`` or ``bos_aligned`` packing.

``concat`` (what :class:`lmtrain.data.pack.BlockDataset` does): the cache (every document followed
by EOS) is cut into consecutive blocks; the tail that does not fill a block is dropped, and a block
may start in the middle of a document.

``bos_aligned`` (nanochat's BOS-aligned best-fit loader): every row starts at a document start.
A causal-LM document is ``[BOS] + ids``, plus ``[EOS]`` when the tokenizer's BOS differs from its EOS
(so the model still learns to end a text); with BOS == EOS (GPT-2) the BOS is the previous
document's EOS, so rows read ``EOS doc EOS doc ...`` as in the cache. A masked-LM document is
``ids + [EOS]`` (the window between [CLS] and [SEP] starts at a document start). Rows are filled
from a buffer of pending documents (corpus order): the largest one that fits goes in, until none
fits; then the shortest buffered one is cropped to fill the row exactly and its tail is dropped.
Every row is full (nothing is padded); documents longer than a row are cropped too. The tokens
dropped are counted.
"""

from __future__ import annotations

import mmap
from array import array
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lmtrain.errors import ConfigError, DataError

__all__ = [
    "PACKINGS",
    "BestFitRows",
    "PackedRowDataset",
    "PackedRows",
    "PackingStats",
    "best_fit_row",
    "best_fit_rows",
    "bos_aligned_rows",
    "check_block_inputs",
    "check_packing",
    "concat_stats",
    "describe_packing",
    "memmap_state",
    "open_memmap_state",
    "selected_blocks",
]

PACKINGS = ("concat", "bos_aligned")
DEFAULT_BUFFER = 1000  # documents held for best fit, as nanochat

# A buffered document is one int: length * _SEQ + its sequence number, so sorting orders by
# length and then corpus order (ties go to the earliest document, as nanochat's linear scan).
_SEQ = 1 << 40


def check_packing(packing: str) -> str:
    """``packing`` if it is a known mode, else a one-line ConfigError listing the choices."""
    if packing not in PACKINGS:
        raise ConfigError(f"--packing {packing!r} is not one of {', '.join(PACKINGS)}; pass one of them")
    return packing


@dataclass(frozen=True)
class PackingStats:
    """What packing kept of the tokens it was given."""

    packing: str
    tokens_in: int  # tokens given to the packer (bos_aligned: with any BOS it adds)
    tokens_used: int  # tokens in the rows
    tokens_dropped: int  # tokens_in - tokens_used
    tokens_padded: int = 0
    documents_cropped: int = 0

    def info(self) -> dict[str, Any]:
        """The keys :func:`lmtrain.data.pack.prepare_datasets` adds to its info dict."""
        return {
            "packing": self.packing,
            "tokens_dropped": self.tokens_dropped,
            "tokens_padded": self.tokens_padded,
            "packing_input_tokens": self.tokens_in,
            "documents_cropped": self.documents_cropped,
        }


def concat_stats(num_tokens: int, window: int) -> PackingStats:
    """``concat``: whole windows of the stream are used, the remainder is dropped."""
    used = num_tokens // window * window
    return PackingStats("concat", num_tokens, used, num_tokens - used)


def describe_packing(info: dict[str, Any]) -> str:
    """One phrase for the CLI, e.g. ``bos_aligned: 1.8% of tokens dropped (12,345), 0 padded``."""
    dropped, padded = int(info["tokens_dropped"]), int(info["tokens_padded"])
    total = max(1, int(info.get("packing_input_tokens") or info.get("corpus_tokens") or 1))
    text = f"{info['packing']}: {100 * dropped / total:.1f}% of tokens dropped ({dropped:,}), {padded:,} padded"
    if info["packing"] == "bos_aligned" and dropped >= total / 2:
        # e.g. .txt files (a file is one document) at any block size: each gives one block
        text += " (the documents are much longer than a block; --packing concat keeps their tails)"
    return text


# --------------------------------------------------------------------------- best fit


def _fill_row(keys: list[int], row_len: int) -> tuple[list[tuple[int, int]], int]:
    """Take one row from the sorted buffer ``keys`` (edited in place).

    Returns ``[(sequence number, tokens taken), ...]`` in row order and the tokens dropped by a
    crop. The buffer must hold at least ``row_len`` tokens, so the loop always ends with a full row.
    """
    remaining = row_len
    taken: list[tuple[int, int]] = []
    dropped = 0
    while remaining:
        fits = bisect_right(keys, remaining * _SEQ + _SEQ - 1)  # keys[:fits] have length <= remaining
        if fits:
            length = keys[fits - 1] // _SEQ  # the largest that fits ...
            key = keys.pop(bisect_left(keys, length * _SEQ, 0, fits))  # ... the earliest of that length
            taken.append((key % _SEQ, length))
            remaining -= length
        else:  # nothing fits: crop the shortest (the earliest among equals) to fill the row exactly
            key = keys.pop(0)
            taken.append((key % _SEQ, remaining))
            dropped += key // _SEQ - remaining
            remaining = 0
    return taken, dropped


@dataclass
class BestFitRows:
    """Rows as segments: row ``r`` is ``doc[seg_doc[s]][:seg_len[s]]`` for s in ``row_ptr[r]:row_ptr[r+1]``."""

    row_ptr: np.ndarray  # int64, (num_rows + 1,)
    seg_doc: np.ndarray  # int64, the document each segment is the head of
    seg_len: np.ndarray  # int64, tokens taken (the document's length unless it was cropped)
    tokens_total: int  # sum of the document lengths
    tokens_used: int  # num_rows * row_len
    tokens_dropped: int  # tokens_total - tokens_used: crops and the last, partial row
    documents_cropped: int

    @property
    def num_rows(self) -> int:
        return len(self.row_ptr) - 1


def best_fit_rows(doc_lengths: np.ndarray | Sequence[int], row_len: int, buffer: int = DEFAULT_BUFFER) -> BestFitRows:
    """Pack documents of these lengths (in corpus order) into full rows of ``row_len`` tokens, best fit.

    Before each row the buffer is topped up to ``buffer`` documents (more while it holds fewer than
    ``row_len`` tokens); then the largest buffered document that fits the space left goes in, until
    none fits, and the shortest buffered one is cropped to fill the row. Ties go to the earlier
    document. When the corpus runs out, rows are made while the buffer holds a row's worth; the rest
    is dropped. Deterministic: no randomness.
    """
    lengths = np.asarray(doc_lengths, dtype=np.int64)
    if lengths.ndim != 1 or (lengths.size and int(lengths.min()) < 0):
        raise ValueError("doc_lengths must be a 1-D array of non-negative lengths")
    if row_len < 1 or buffer < 1:
        raise ValueError(f"row_len and buffer must be >= 1; got {row_len} and {buffer}")
    lens = lengths.tolist()
    n = len(lens)
    keys: list[int] = []
    buffered = nxt = cropped = 0
    row_ptr, seg_doc, seg_len = array("q", [0]), array("q"), array("q")
    while True:
        while nxt < n and (len(keys) < buffer or buffered < row_len):
            insort(keys, lens[nxt] * _SEQ + nxt)
            buffered += lens[nxt]
            nxt += 1
        if buffered < row_len:
            break
        taken, dropped = _fill_row(keys, row_len)
        buffered -= row_len + dropped
        cropped += dropped > 0  # a crop always drops: the cropped document did not fit
        for doc, count in taken:
            seg_doc.append(doc)
            seg_len.append(count)
        row_ptr.append(len(seg_doc))
    total = int(lengths.sum())
    used = (len(row_ptr) - 1) * row_len
    return BestFitRows(
        row_ptr=np.frombuffer(row_ptr, dtype=np.int64).copy(),
        seg_doc=np.frombuffer(seg_doc, dtype=np.int64).copy(),
        seg_len=np.frombuffer(seg_len, dtype=np.int64).copy(),
        tokens_total=total,
        tokens_used=used,
        tokens_dropped=total - used,
        documents_cropped=int(cropped),
    )


def best_fit_row(buffer: list[np.ndarray], row_len: int) -> tuple[np.ndarray | None, list[np.ndarray], int]:
    """The next row from a rolling buffer of documents (each already starting with its BOS), best fit.

    Returns ``(row, the documents left in corpus order, tokens dropped by a crop)``, or
    ``(None, buffer, 0)`` when the buffer holds fewer than ``row_len`` tokens (add documents, or at
    the end of the stream drop them). Top the buffer up to the same size before each call and the
    rows equal :func:`best_fit_rows`'s.
    """
    if row_len < 1:
        raise ValueError(f"row_len must be >= 1; got {row_len}")
    if sum(len(d) for d in buffer) < row_len:
        return None, buffer, 0
    keys = sorted(len(d) * _SEQ + i for i, d in enumerate(buffer))
    taken, dropped = _fill_row(keys, row_len)
    row = np.concatenate([np.asarray(buffer[i][:count]) for i, count in taken])
    used = {i for i, _ in taken}
    return row, [d for i, d in enumerate(buffer) if i not in used], dropped


# --------------------------------------------------------------------------- rows of a token cache


@dataclass
class PackedRows:
    """bos_aligned rows of a token cache: segment ``s`` is ``tokens[seg_start[s]:seg_start[s] + seg_len[s]]``
    with its first token replaced by ``bos_token_id`` (when set; ``seg_start`` may then be -1)."""

    row_ptr: np.ndarray  # int64, (num_rows + 1,)
    seg_start: np.ndarray  # int64
    seg_len: np.ndarray  # int64
    row_len: int
    bos_token_id: int | None
    stats: PackingStats

    @property
    def num_rows(self) -> int:
        return len(self.row_ptr) - 1


def bos_aligned_rows(
    doc_offsets: np.ndarray,
    row_len: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    buffer: int = DEFAULT_BUFFER,
) -> PackedRows:
    """Best-fit rows of the documents a cache's ``doc_offsets`` delimit (each ends with EOS).

    Causal LM (``bos_token_id`` set): a document is ``[BOS] + ids``, plus its ``[EOS]`` when
    ``bos_token_id != eos_token_id``. Masked LM (``bos_token_id`` None): ``ids + [EOS]``.
    """
    offsets = np.asarray(doc_offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    starts = offsets[:-1]
    if bos_token_id is not None:
        # the BOS slot is the position before the document: the previous document's EOS (or -1)
        starts = starts - 1
        lengths = lengths + int(bos_token_id != eos_token_id)
    fit = best_fit_rows(lengths, row_len, buffer)
    stats = PackingStats("bos_aligned", fit.tokens_total, fit.tokens_used, fit.tokens_dropped, 0, fit.documents_cropped)
    return PackedRows(fit.row_ptr, starts[fit.seg_doc], fit.seg_len, int(row_len), bos_token_id, stats)


def model_items(
    rows: np.ndarray, mlm: bool, cls_token_id: int | None, sep_token_id: int | None
) -> list[dict[str, torch.Tensor]]:
    """Model inputs for windows ``rows`` (n, window) of token ids, as every block dataset yields them:
    CLM ``input_ids`` + ``labels`` (equal values, separate tensors); MLM ``[cls] + window + [sep]`` +
    ``attention_mask`` (the MLM collator adds masking and labels)."""
    if mlm:
        assert cls_token_id is not None and sep_token_id is not None  # checked by the dataset
        ids = np.empty((rows.shape[0], rows.shape[1] + 2), dtype=np.int64)
        ids[:, 0] = cls_token_id
        ids[:, 1:-1] = rows
        ids[:, -1] = sep_token_id
        input_ids = torch.from_numpy(ids)
        mask = torch.ones_like(input_ids)
        return [{"input_ids": input_ids[k], "attention_mask": mask[k]} for k in range(len(ids))]
    input_ids = torch.from_numpy(rows)
    labels = input_ids.clone()  # separate storage: collators may edit labels in place
    return [{"input_ids": input_ids[k], "labels": labels[k]} for k in range(len(rows))]


def check_block_inputs(tokens: np.ndarray, mlm: bool, cls_token_id: int | None, sep_token_id: int | None) -> None:
    """What a block dataset needs: 1-D ``tokens``, and [CLS] and [SEP] ids for masked-LM blocks."""
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    if mlm and (cls_token_id is None or sep_token_id is None):
        raise DataError("masked-LM blocks need cls and sep token ids; use a tokenizer with cls/bos and sep/eos tokens")


def selected_blocks(block_indices: np.ndarray, indices: Sequence[int], what: str) -> np.ndarray:
    """``block_indices[indices]`` (negative indices count from the end); an IndexError naming ``what`` if one
    is out of range."""
    idx = np.asarray(indices, dtype=np.int64)
    n = len(block_indices)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"index out of range for {n} {what}")
    return block_indices[idx]


def memmap_state(attrs: dict[str, Any]) -> dict[str, Any]:
    """A copy of a block dataset's ``__dict__`` to pickle (DataLoader workers): ``tokens`` as its path if it
    is a file's memory map, re-opened by :func:`open_memmap_state`, instead of copying the corpus into
    every worker; as data otherwise."""
    state = dict(attrs)
    t = state["tokens"]
    if isinstance(t, np.memmap) and isinstance(t.base, mmap.mmap) and t.filename:
        # Only a memmap object np.memmap created itself has a trustworthy
        # filename/offset; slices of it are pickled as data below.
        state["tokens"] = None
        state["_memmap"] = (str(t.filename), t.dtype.str, int(t.offset), t.shape)
    else:
        state["tokens"] = np.ascontiguousarray(t)
    return state


def open_memmap_state(state: dict[str, Any]) -> dict[str, Any]:
    """The attributes :func:`memmap_state` pickled, ``tokens`` opened again."""
    attrs = dict(state)
    spec = attrs.pop("_memmap", None)
    if spec is not None:
        filename, dtype, offset, shape = spec
        attrs["tokens"] = np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
    return attrs


class PackedRowDataset(Dataset):
    """bos_aligned rows of a (memory-mapped) token array, with :class:`~lmtrain.data.pack.BlockDataset`'s
    items (CLM: ``input_ids`` + ``labels``; MLM: ``[cls] + row + [sep]`` + ``attention_mask``).

    ``block_indices`` selects rows (for the train/validation split), as BlockDataset's select blocks.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        rows: PackedRows,
        block_size: int,
        block_indices: np.ndarray | None = None,
        mlm: bool = False,
        cls_token_id: int | None = None,
        sep_token_id: int | None = None,
        bytes_per_token: float | None = None,
    ) -> None:
        check_block_inputs(tokens, mlm, cls_token_id, sep_token_id)
        self.block_size = int(block_size)
        self.mlm = bool(mlm)
        self.window = self.block_size - 2 if self.mlm else self.block_size
        if rows.row_len != self.window:
            raise ValueError(f"rows of {rows.row_len} tokens do not make blocks of {self.block_size}")
        total = rows.num_rows
        indices = np.arange(total, dtype=np.int64) if block_indices is None else np.asarray(block_indices, np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= total):
            raise ValueError(f"block_indices must lie in [0, {total}); got {indices.min()}..{indices.max()}")
        self.tokens = tokens
        self.rows = rows
        self.block_indices = indices
        self.cls_token_id = cls_token_id
        self.sep_token_id = sep_token_id
        self.bytes_per_token = bytes_per_token
        self.num_tokens = len(indices) * self.window

    def __len__(self) -> int:
        return len(self.block_indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """Gather a whole batch of rows with a few numpy calls (no loop over tokens or segments)."""
        rows = self.windows(selected_blocks(self.block_indices, indices, "rows"))
        return model_items(rows, self.mlm, self.cls_token_id, self.sep_token_id)

    def windows(self, row_ids: np.ndarray) -> np.ndarray:
        """The corpus tokens of rows ``row_ids`` (absolute row numbers), int64 (n, window)."""
        r = self.rows
        lo, hi = r.row_ptr[row_ids], r.row_ptr[row_ids + 1]
        counts = hi - lo
        # the segment numbers of the rows, in order: lo[k], lo[k]+1, ..., hi[k]-1 for each row k
        seg = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(lo - (np.cumsum(counts) - counts), counts)
        lens = r.seg_len[seg]
        first = np.cumsum(lens) - lens  # where each segment starts in the flat output
        pos = np.repeat(r.seg_start[seg] - first, lens) + np.arange(len(row_ids) * self.window, dtype=np.int64)
        out = np.asarray(self.tokens[np.maximum(pos, 0)], dtype=np.int64)
        if r.bos_token_id is not None:
            out[first[lens > 0]] = r.bos_token_id
        return out.reshape(len(row_ids), self.window)

    def __getstate__(self) -> dict[str, Any]:
        return memmap_state(self.__dict__)  # a memory map travels as its path

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(open_memmap_state(state))

    def __repr__(self) -> str:
        kind = "mlm" if self.mlm else "clm"
        return f"PackedRowDataset({kind}, bos_aligned, rows={len(self)}, block_size={self.block_size})"
