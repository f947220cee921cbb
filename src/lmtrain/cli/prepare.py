"""`lmtrain prepare`: tokenize and pack text into the cache, and print its statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

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
    from ..data.pack import prepare_datasets
    from ..data.readers import resolve_files, sample_corpus_files

    p, d = parse([PrepareArguments, DataArguments], argv, "lmtrain prepare")
    files = resolve_files(d.train_file) if d.train_file else sample_corpus_files()
    margs = ModelArguments(tokenizer_name=p.tokenizer_name, vocab_size=p.vocab_size, mlm=p.mlm)
    tokenizer = tokenizer_for(margs, files, d)
    start = time.perf_counter()
    _, _, info = prepare_datasets(
        files,
        tokenizer,
        d.block_size,
        validation_files=resolve_files(d.validation_file) if d.validation_file else None,
        mlm=p.mlm,
        validation_split_percentage=d.validation_split_percentage,
        cache_dir=d.cache_dir,
        text_column=d.text_column,
        encoding_errors=d.encoding_errors,
        overwrite_cache=d.overwrite_cache,
    )
    print(
        f"documents: {info['train_documents']:,}\ntokens: {info['train_tokens']:,}\n"
        f"blocks: {info['train_blocks']:,} train, {info['eval_blocks']:,} validation (block_size {d.block_size})\n"
        f"cache: {', '.join(info['cache_dirs'])}\ntime: {time.perf_counter() - start:.2f}s"
    )
    return 0
