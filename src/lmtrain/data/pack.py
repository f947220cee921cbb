"""Cut a token stream into fixed-size blocks and split them into train/validation.

A :class:`BlockDataset` is a view of selected windows of a (memory-mapped)
token array; train and validation views of one corpus share the same array.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lmtrain.data.packing import (
    PackedRowDataset,
    PackedRows,
    bos_aligned_rows,
    check_block_inputs,
    check_packing,
    concat_stats,
    memmap_state,
    model_items,
    open_memmap_state,
    selected_blocks,
)
from lmtrain.data.readers import resolve_files
from lmtrain.data.token_cache import build_token_cache
from lmtrain.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["BlockDataset", "num_blocks", "split_blocks", "prepare_datasets"]


def _window(block_size: int, mlm: bool) -> int:
    """Corpus tokens per block: MLM blocks spend two positions on [CLS] and [SEP]."""
    return block_size - 2 if mlm else block_size


def num_blocks(num_tokens: int, block_size: int, mlm: bool = False) -> int:
    """How many whole blocks ``num_tokens`` tokens make (the remainder is dropped)."""
    window = _window(block_size, mlm)
    if window < 1:
        raise ConfigError(f"block_size {block_size} is too small; pass --block_size {3 if mlm else 1} or more")
    return num_tokens // window


class BlockDataset(Dataset):
    """Consecutive non-overlapping blocks of a token stream, as model inputs.

    CLM items: ``{"input_ids", "labels"}`` (equal values, separate tensors).
    MLM items: ``{"input_ids": [cls] + window + [sep], "attention_mask"}``; the
    MLM collator adds masking and labels.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        block_indices: np.ndarray | None = None,
        mlm: bool = False,
        cls_token_id: int | None = None,
        sep_token_id: int | None = None,
        bytes_per_token: float | None = None,
    ) -> None:
        check_block_inputs(tokens, mlm, cls_token_id, sep_token_id)
        self.tokens = tokens
        self.block_size = int(block_size)
        self.mlm = bool(mlm)
        self.window = _window(self.block_size, self.mlm)
        total = num_blocks(len(tokens), self.block_size, self.mlm)
        if block_indices is None:
            block_indices = np.arange(total, dtype=np.int64)
        block_indices = np.asarray(block_indices, dtype=np.int64)
        if block_indices.size and (block_indices.min() < 0 or block_indices.max() >= total):
            raise ValueError(
                f"block_indices must lie in [0, {total}); got {block_indices.min()}..{block_indices.max()}"
            )
        self.block_indices = block_indices
        self.cls_token_id = cls_token_id
        self.sep_token_id = sep_token_id
        self.bytes_per_token = bytes_per_token
        self.num_tokens = len(block_indices) * self.window
        self._offsets = np.arange(self.window, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.block_indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """Read a whole batch of blocks with one fancy-indexing call."""
        starts = selected_blocks(self.block_indices, indices, "blocks") * self.window
        rows = np.asarray(self.tokens[starts[:, None] + self._offsets], dtype=np.int64)
        return model_items(rows, self.mlm, self.cls_token_id, self.sep_token_id)

    def __getstate__(self) -> dict[str, Any]:
        return memmap_state(self.__dict__)  # a memory map travels as its path

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(open_memmap_state(state))

    def __repr__(self) -> str:
        kind = "mlm" if self.mlm else "clm"
        return f"BlockDataset({kind}, blocks={len(self)}, block_size={self.block_size})"


def split_blocks(num_blocks: int, validation_percentage: float, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Deterministically split block indices into (train, validation), both sorted."""
    if not 0 <= validation_percentage < 100:
        raise ConfigError(f"validation_split_percentage must be in [0, 100); got {validation_percentage}")
    all_blocks = np.arange(num_blocks, dtype=np.int64)
    if validation_percentage == 0 or num_blocks < 2:
        return all_blocks, np.empty(0, dtype=np.int64)
    n_val = int(round(num_blocks * validation_percentage / 100))
    n_val = min(max(n_val, 1), num_blocks - 1)  # both sides non-empty
    rng = np.random.default_rng(seed)
    val = np.sort(rng.choice(num_blocks, size=n_val, replace=False)).astype(np.int64)
    keep = np.ones(num_blocks, dtype=bool)
    keep[val] = False
    return all_blocks[keep], val


def _as_files(paths: Any) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return resolve_files(list(paths))


def _max_block_for(num_tokens: int, blocks: int, mlm: bool) -> int:
    """Largest block_size that still yields ``blocks`` blocks (for error messages)."""
    return num_tokens // blocks + (2 if mlm else 0)


def prepare_datasets(
    train_files: Sequence[str | Path] | str | Path,
    tokenizer: "PreTrainedTokenizerBase",
    block_size: int,
    validation_files: Sequence[str | Path] | str | Path | None = None,
    mlm: bool = False,
    validation_split_percentage: float = 5.0,
    cache_dir: str | Path | None = None,
    text_column: str = "text",
    encoding_errors: str = "strict",
    overwrite_cache: bool = False,
    seed: int = 42,
    max_positions: int | None = None,
    packing: str = "concat",
) -> tuple[BlockDataset | PackedRowDataset, BlockDataset | PackedRowDataset | None, dict[str, Any]]:
    """Files -> cached token ids -> train and (optional) validation block datasets.

    ``packing`` is ``concat`` (consecutive blocks of the stream) or ``bos_aligned`` (every block starts at
    a document start; see :mod:`lmtrain.data.packing`); ``info`` counts the training data's tokens
    dropped or padded by it.
    """
    check_packing(packing)
    block_size = int(block_size)
    if block_size < (3 if mlm else 1):
        raise ConfigError(f"block_size {block_size} is too small; pass --block_size {3 if mlm else 1} or more")
    # Checked before tokenizing so a bad setting fails fast.
    if max_positions is not None and block_size > max_positions:
        raise DataError(
            f"block_size {block_size} is longer than the model's {max_positions} positions; "
            f"pass --block_size {max_positions} or less"
        )
    if not 0 <= validation_split_percentage < 100:
        raise ConfigError(f"validation_split_percentage must be in [0, 100); got {validation_split_percentage}")
    cls_id, sep_id = mlm_special_ids(tokenizer) if mlm else (None, None)
    opts: dict[str, Any] = dict(text_column=text_column, encoding_errors=encoding_errors, overwrite=overwrite_cache)
    train_cache = build_token_cache(_as_files(train_files), tokenizer, cache_dir, **opts)
    n_train = train_cache.num_tokens
    window = _window(block_size, mlm)
    bos_id = None if mlm else first_token_id(tokenizer, "bos_token_id", "eos_token_id", "sep_token_id")
    eos_id = first_token_id(tokenizer, "eos_token_id", "sep_token_id")  # the cache's separator

    def rows_of(cache: Any) -> PackedRows | None:
        return bos_aligned_rows(cache.doc_offsets, window, bos_id, eos_id) if packing == "bos_aligned" else None

    train_rows = rows_of(train_cache)
    train_blocks = num_blocks(n_train, block_size, mlm) if train_rows is None else train_rows.num_rows
    if train_blocks < 1:
        raise DataError(
            f"the training data has {n_train} tokens, fewer than one block of {block_size}; "
            f"use a smaller --block_size (at most {_max_block_for(n_train, 1, mlm)}) or more text"
        )
    make: dict[str, Any] = dict(block_size=block_size, mlm=mlm, cls_token_id=cls_id, sep_token_id=sep_id)

    def dataset(cache: Any, rows: PackedRows | None, **kw: Any) -> BlockDataset | PackedRowDataset:
        if rows is None:
            return BlockDataset(cache.tokens, bytes_per_token=cache.bytes_per_token, **make, **kw)
        return PackedRowDataset(cache.tokens, rows, bytes_per_token=cache.bytes_per_token, **make, **kw)

    caches = [train_cache]
    eval_ds: BlockDataset | PackedRowDataset | None = None
    if validation_files:
        eval_cache = build_token_cache(_as_files(validation_files), tokenizer, cache_dir, **opts)
        caches.append(eval_cache)
        n_eval = eval_cache.num_tokens
        eval_rows = rows_of(eval_cache)
        if (num_blocks(n_eval, block_size, mlm) if eval_rows is None else eval_rows.num_rows) < 1:
            raise DataError(
                f"the validation data has {n_eval} tokens, fewer than one block of {block_size}; "
                f"use a smaller --block_size (at most {_max_block_for(n_eval, 1, mlm)}) "
                "or more validation text"
            )
        train_ds = dataset(train_cache, train_rows)
        eval_ds = dataset(eval_cache, eval_rows)
    elif validation_split_percentage > 0:
        if train_blocks < 2:
            raise DataError(
                f"the training data has {n_train} tokens, only one block of {block_size}, too few "
                "to hold out a validation split; use a smaller --block_size (at most "
                f"{_max_block_for(n_train, 2, mlm)}), more text, or --validation_split_percentage 0"
                + ("" if train_rows is None else " (or --packing concat, which crops no documents)")
            )
        train_idx, eval_idx = split_blocks(train_blocks, validation_split_percentage, seed)
        train_ds = dataset(train_cache, train_rows, block_indices=train_idx)
        eval_ds = dataset(train_cache, train_rows, block_indices=eval_idx)
    else:
        train_ds = dataset(train_cache, train_rows)

    info: dict[str, Any] = {
        "train_tokens": train_ds.num_tokens,
        "train_documents": train_cache.num_documents,
        "train_blocks": len(train_ds),
        "eval_tokens": eval_ds.num_tokens if eval_ds is not None else 0,
        "eval_blocks": len(eval_ds) if eval_ds is not None else 0,
        "cache_dirs": [str(c.path) for c in caches],
        # bits-per-byte is reported on the evaluation data, so prefer its ratio
        "bytes_per_token": (eval_ds or train_ds).bytes_per_token,
        "corpus_tokens": n_train,
        # packing, tokens_dropped, tokens_padded (and packing_input_tokens, documents_cropped) of the training data
        **(concat_stats(n_train, window) if train_rows is None else train_rows.stats).info(),
    }
    return train_ds, eval_ds, info


def mlm_special_ids(tokenizer: Any) -> tuple[int, int]:
    """The ids around a masked-LM block: [CLS] (else BOS) and [SEP] (else EOS); a DataError naming the one missing."""
    cls_id = first_token_id(tokenizer, "cls_token_id", "bos_token_id")
    sep_id = first_token_id(tokenizer, "sep_token_id", "eos_token_id")
    if cls_id is None or sep_id is None:
        missing = "cls_token or bos_token" if cls_id is None else "sep_token or eos_token"
        raise DataError(
            f"the tokenizer has no {missing}, which masked-LM blocks need; use a tokenizer that defines one"
        )
    return cls_id, sep_id


def first_token_id(tokenizer: Any, *names: str) -> int | None:
    # Not `a or b`: token id 0 is a valid id.
    for name in names:
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None
