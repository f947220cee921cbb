"""`lmtrain prepare`: tokenize and pack text into the cache, and print its statistics."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from ..recipe_args import DataArguments, ModelArguments
from .common import parse, tokenizer_for


@dataclass
class PrepareArguments:
    tokenizer_name: Optional[str] = None
    """A local tokenizer directory (default: train a BPE tokenizer on the data)."""
    vocab_size: int = 8192
    """Vocabulary of the BPE tokenizer trained when no tokenizer is given."""
    mlm: bool = False
    """Prepare blocks for masked LM."""


def cmd_prepare(argv: Sequence[str]) -> int:
    from ..data.mixture import check_exhausted, describe_mixture, parse_sources, prepare_mixture
    from ..data.pack import prepare_datasets
    from ..data.packing import check_packing, describe_packing
    from ..data.readers import resolve_files, sample_corpus_files

    p, d = parse([PrepareArguments, DataArguments], argv, "lmtrain prepare")
    check_packing(d.packing)  # before tokenizing
    sources = parse_sources(d.train_file) if d.train_file else None  # path:weight entries
    if sources:
        check_exhausted(d.mix_exhausted)
        files = [f for source in sources for f in resolve_files([source.path])]
    else:
        files = resolve_files(d.train_file) if d.train_file else sample_corpus_files()
    margs = ModelArguments(tokenizer_name=p.tokenizer_name, vocab_size=p.vocab_size, mlm=p.mlm)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # under torchrun: every rank tokenizes its share of the shards
        lists = [resolve_files([s.path]) for s in sources] if sources else [files]
        if d.validation_file:
            lists.append(resolve_files(d.validation_file))
        tokenizer, start = _prepare_on_ranks(margs, d, files, lists)
        if int(os.environ.get("RANK", 0)) != 0:
            return 0
        d.overwrite_cache = False  # rank 0 reports below, from the caches just assembled
    else:
        tokenizer = tokenizer_for(margs, files, d)
        start = time.perf_counter()
    opts: dict[str, Any] = dict(  # what prepare_mixture and prepare_datasets both take
        validation_files=resolve_files(d.validation_file) if d.validation_file else None,
        mlm=p.mlm,
        validation_split_percentage=d.validation_split_percentage,
        cache_dir=d.cache_dir,
        text_column=d.text_column,
        encoding_errors=d.encoding_errors,
        overwrite_cache=d.overwrite_cache,
        packing=d.packing,
    )
    if sources:  # each source's own cache, as `lmtrain train` builds them
        mixture, _, mixed = prepare_mixture(sources, tokenizer, d.block_size, exhausted=d.mix_exhausted, **opts)
        for s in mixed["sources"]:
            print(
                f"source {s['name']} (weight {s['weight']:.3g}): documents {s['train_documents']:,}, "
                f"tokens {s['train_tokens']:,}, blocks {s['train_blocks']:,} train, {s['eval_blocks']:,} validation, "
                f"packing {describe_packing(s)}, cache {', '.join(s['cache_dirs'])}"
            )
        head = describe_mixture(mixture, mixed, d.block_size).splitlines()[0]
        print(f"{head}\ntime: {time.perf_counter() - start:.2f}s")
        return 0
    _, _, info = prepare_datasets(files, tokenizer, d.block_size, **opts)
    print(
        f"documents: {info['train_documents']:,}\ntokens: {info['train_tokens']:,}\n"
        f"blocks: {info['train_blocks']:,} train, {info['eval_blocks']:,} validation (block_size {d.block_size})\n"
        f"packing: {describe_packing(info)}\n"
        f"cache: {', '.join(info['cache_dirs'])}\ntime: {time.perf_counter() - start:.2f}s"
    )
    return 0


def _prepare_on_ranks(margs: ModelArguments, d: DataArguments, files: List[Any], lists: List[Any]) -> Tuple[Any, float]:
    """Build the token caches of ``lists`` together (gloo): (the tokenizer, when it was ready).

    Without --tokenizer_name rank 0 trains the tokenizer and the others load the copy it saves in the cache root.
    """
    import datetime
    import shutil
    import uuid

    import torch.distributed as dist

    from ..data.prepare_ranks import build_caches_on_ranks
    from ..data.token_cache import cache_root

    # generous: ranks wait at the barriers while the others tokenize, and while rank 0 assembles
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=12))
    try:
        rank = dist.get_rank()
        if margs.tokenizer_name:
            tokenizer = tokenizer_for(margs, files, d)
        else:
            saved = [str(cache_root(d.cache_dir) / f"tokenizer.tmp-{uuid.uuid4().hex}")]
            if rank == 0:
                tokenizer = tokenizer_for(margs, files, d)
                tokenizer.save_pretrained(saved[0])
            dist.broadcast_object_list(saved, src=0)
            if rank != 0:
                margs_saved = ModelArguments(tokenizer_name=saved[0], mlm=margs.mlm)
                tokenizer = tokenizer_for(margs_saved, files, d)
            dist.barrier()
            if rank == 0:
                shutil.rmtree(saved[0], ignore_errors=True)
        start = time.perf_counter()
        build_caches_on_ranks(
            lists,
            tokenizer,
            d.cache_dir,
            text_column=d.text_column,
            encoding_errors=d.encoding_errors,
            overwrite=d.overwrite_cache,
            rank=rank,
            world_size=dist.get_world_size(),
            barrier=dist.barrier,
        )
    finally:
        dist.destroy_process_group()
    return tokenizer, start
