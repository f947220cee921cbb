"""lmtrain.data.prepare_ranks: ranks share the shards by size, and rank 0 assembles the caches one process builds."""

from __future__ import annotations

from pathlib import Path

import pytest

import lmtrain.data.prepare_ranks as pr
from lmtrain.data.bpe import train_bpe_tokenizer
from lmtrain.data.prepare_ranks import balance, build_caches_on_ranks
from lmtrain.data.readers import sample_corpus_files
from lmtrain.data.shard_cache import staging_dir, write_shard
from lmtrain.data.shards import plan_shards
from lmtrain.data.token_cache import build_token_cache
from tests.data.test_shard_cache import same_files
from tests.data.test_shards import make_corpus


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(sample_corpus_files(), vocab_size=512)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), seed=5)


def test_balance_is_deterministic_and_even():
    sizes = [90, 10, 50, 50, 40, 30, 30, 20, 5, 5]
    parts = balance(sizes, 3)
    assert sorted(i for p in parts for i in p) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= max(sizes) // 2 and parts == balance(sizes, 3)
    assert balance([7], 3) == [[0], [], []]


def test_ranks_share_the_work_and_rank_0_assembles(tokenizer, corpus, tmp_path, monkeypatch):
    """Two ranks in turn (the barrier a no-op): each writes only its shards; an interrupted run's are kept."""
    lists = [corpus[:4], corpus[4:], corpus[:4]]  # the last: validation files that are the training files
    root = tmp_path / "cache"
    written: list[tuple[int, Path, int]] = []
    real = pr.write_shard
    rank = 1
    monkeypatch.setattr(
        pr, "write_shard", lambda s, *a, **k: (written.append((rank, s.path, s.start)), real(s, *a, **k))[1]
    )
    opts = dict(world_size=2, target_bytes=6000)
    build_caches_on_ranks(lists, tokenizer, root, rank=1, **opts)
    rank = 0
    caches = build_caches_on_ranks(lists, tokenizer, root, rank=0, **opts)
    ones = [w for w in written if w[0] == 1]
    assert ones and len(ones) < len(written)  # both ranks worked
    assert len({w[1:] for w in written}) == len(written) == sum(len(plan_shards(f, 6000)) for f in lists[:2])  # once
    for files, path in zip(lists, caches):
        same_files(path, build_token_cache(files, tokenizer, cache_dir=tmp_path / "fresh").path)
    assert caches[2] == caches[0] and sorted(p.name for p in root.iterdir()) == sorted({p.name for p in caches})

    # a rerun finds them warm; an interrupted one keeps the shards it wrote
    written.clear()
    build_caches_on_ranks(lists, tokenizer, root, rank=0, **opts)
    assert written == []
    staging = staging_dir(lists[0], tokenizer, tmp_path / "again")
    shards = plan_shards(lists[0], target_bytes=6000, split_text=True)
    write_shard(shards[0], tokenizer, staging)
    build_caches_on_ranks(lists[:1], tokenizer, tmp_path / "again", world_size=1, target_bytes=6000)
    assert (shards[0].path, shards[0].start) not in {w[1:] for w in written} and len(written) == len(shards) - 1
