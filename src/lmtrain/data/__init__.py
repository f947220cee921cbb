"""Data pipeline: files -> token ids (cached, memory-mapped) -> blocks -> batches.

``readers`` (files -> documents) -> ``token_cache`` (documents -> token ids, with a tokenizer
from ``bpe`` or the user's; ``shards`` + ``shard_cache`` build it in pieces, on many ranks) -> ``pack``
and ``packing`` (ids -> blocks: concat or bos_aligned) -> ``mixture`` (several sources by weight) ->
``collators`` and ``loader`` (blocks -> batches, in a resumable, seeded order). ``streaming`` (with
``lanes``) does files -> batches in the data-loader workers instead, with resumable positions.

Names are imported lazily (PEP 562) so ``import lmtrain.data`` stays cheap and
works before optional submodules such as ``collators`` exist.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "readers": [
        "SUPPORTED_EXTENSIONS",
        "sample_corpus_files",
        "resolve_files",
        "iter_documents",
        "count_bytes",
    ],
    "bpe": ["train_bpe_tokenizer"],
    "token_cache": ["PIPELINE_VERSION", "TokenCache", "build_token_cache", "default_cache_root"],
    "pack": ["BlockDataset", "num_blocks", "split_blocks", "prepare_datasets"],
    "mixture": ["MixSchedule", "MixtureDataset", "parse_sources", "prepare_mixture"],
    "packing": ["PackedRowDataset", "best_fit_rows"],
    "shards": ["Shard", "plan_shards"],
    "shard_reader": ["iter_units"],
    "streaming": ["StreamingDataset", "prepare_streaming"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:  # a submodule not imported yet
        return importlib.import_module(f"{__name__}.{name}")
    module = _WHERE.get(name)
    if module is not None:
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    # Anything else may live in the collators module (written separately).
    if not name.startswith("_"):
        try:
            collators = importlib.import_module(f"{__name__}.collators")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.collators":
                raise
        else:
            if hasattr(collators, name):
                return getattr(collators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
