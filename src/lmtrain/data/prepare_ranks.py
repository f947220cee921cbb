"""``lmtrain prepare`` under torchrun: every rank plans the same shards, writes its share, and rank 0 assembles.

The shards are dealt by size (:func:`balance`) and written and assembled with
:mod:`lmtrain.data.shard_cache`, so the caches are the very ones
:func:`~lmtrain.data.token_cache.build_token_cache` builds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from lmtrain.data.encoders import best_encoder, encoder_name, splitting_is_exact
from lmtrain.data.shard_cache import assemble, cache_dir_of, complete_cache, missing_shards, staging_dir, write_shard
from lmtrain.data.shards import Shard, plan_shards
from lmtrain.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["balance", "shard_target", "build_caches_on_ranks"]


def balance(sizes: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of ``sizes`` dealt into ``parts`` lists of about equal total: largest first onto the least loaded."""
    load = [0] * parts
    out: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        p = min(range(parts), key=lambda j: (load[j], j))
        load[p] += sizes[i]
        out[p].append(i)
    return [sorted(x) for x in out]


def _encoder_for_rank(tokenizer: Any) -> Any:
    """The exact encoder, with this process's share of the machine's cores when torchrun started several on it."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if local > 1:
        from lmtrain.data.fast_bpe import make_fast_encoder

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        fast = make_fast_encoder(tokenizer, num_threads=max(1, cores // local))
        if fast is not None:
            return fast
    return best_encoder(tokenizer)


def shard_target(total_bytes: int, world_size: int) -> int:
    """Shard size for ``world_size`` processes: about 4 shards each, between 64 KiB and 64 MiB."""
    return min(64 << 20, max(64 << 10, total_bytes // (4 * max(1, world_size))))


def build_caches_on_ranks(
    file_lists: Sequence[Sequence[Path]],
    tokenizer: "PreTrainedTokenizerBase",
    cache_dir: str | Path | None = None,
    *,
    text_column: str = "text",
    encoding_errors: str = "strict",
    overwrite: bool = False,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    target_bytes: Optional[int] = None,
) -> list[Path]:
    """Build the token cache of each file list, ``world_size`` processes sharing the work; returns their dirs.

    Every rank must call this with the same arguments (``barrier`` waits for all of
    them). Each plans the same shards, writes the shards dealt to it (shards
    already written by an interrupted run are kept, unless ``overwrite``), and after
    a barrier rank 0 assembles each cache; a second barrier ends the call.
    Complete caches are left as they are, unless ``overwrite``.
    """
    opts: dict[str, Any] = dict(text_column=text_column, encoding_errors=encoding_errors)
    lists = [[Path(f) for f in files] for files in file_lists]
    if not all(lists):
        raise DataError("no input files given; pass --train_file PATH")
    stagings = [staging_dir(files, tokenizer, cache_dir, **opts) for files in lists]
    encode: Any = _encoder_for_rank(tokenizer)
    try:
        split_text = splitting_is_exact(encode, tokenizer)
        jobs: list[tuple[Path, Shard]] = []
        todo: dict[Path, list[Shard]] = {}  # one entry per cache (validation files may be the training files)
        for files, staging in zip(lists, stagings):
            if staging in todo or (not overwrite and complete_cache(cache_dir_of(staging)) is not None):
                continue  # planned already, or warm
            target = target_bytes or shard_target(sum(f.stat().st_size for f in files if f.is_file()), world_size)
            todo[staging] = plan_shards(files, target, split_text=split_text)
            jobs += [(staging, s) for s in todo[staging]]
        for i in balance([s.size for _, s in jobs], world_size)[rank]:
            staging, shard = jobs[i]
            if overwrite or missing_shards(staging, [shard]):
                write_shard(shard, tokenizer, staging, text_column, encoding_errors, split_text, encode)
        barrier()
        if rank == 0:
            name = encoder_name(encode)
            for staging, shards in todo.items():
                assemble(staging, shards, tokenizer, text_column=text_column, encoder=name, overwrite=overwrite)
        barrier()
    finally:
        getattr(encode, "close", lambda: None)()
    return [cache_dir_of(staging) for staging in stagings]
