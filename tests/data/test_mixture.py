"""Weighted mixing: source specs, the schedule (shares, every prefix, resumability) and MixtureDataset."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from lmtrain.data.mix_schedule import hash64, permute
from lmtrain.data.mixture import MixSchedule, MixtureDataset, parse_source, parse_sources
from lmtrain.data.pack import BlockDataset
from lmtrain.errors import ConfigError, DataError

WEIGHTS = [(0.7, 0.2, 0.1), (0.5, 0.3, 0.15, 0.05)]


def running_counts(src: np.ndarray, k: int) -> np.ndarray:
    """(len+1, k): blocks of each source among positions [0, p) for every prefix p."""
    out = np.zeros((len(src) + 1, k), dtype=np.int64)
    out[1:] = np.cumsum(src[:, None] == np.arange(k)[None, :], axis=0)
    return out


# ---- specs ----------------------------------------------------------------------------------------


def test_parse_source_weights_paths_and_colons(tmp_path):
    assert parse_source("web/:0.7") == ("web/", 0.7)
    assert parse_source("books/*.txt:2") == ("books/*.txt", 2.0)
    assert parse_source("code.jsonl.zst:.1") == ("code.jsonl.zst", 0.1)
    assert parse_source("plain.txt") == ("plain.txt", None)
    assert parse_source("notes:draft") == ("notes:draft", None)  # not a number: part of the path
    odd = tmp_path / "data:0.5"  # an existing path with ':' is a path
    odd.write_text("x")
    assert parse_source(str(odd)) == (str(odd), None)
    assert parse_source(f"{odd}:3") == (str(odd), 3.0)


@pytest.mark.parametrize("spec", ["web/:0", "web/:-1", "web/:nan", "web/:inf"])
def test_bad_weight_is_one_line(spec):
    with pytest.raises(ConfigError, match="must be a positive number") as e:
        parse_source(spec)
    assert "\n" not in str(e.value) and spec in str(e.value)


def test_parse_sources_normalises_names_and_refuses_a_mix():
    assert parse_sources(["a.txt", "b/"]) is None
    sources = parse_sources(["web/:2", "web:1", "books/*.txt:1"])
    assert sources is not None
    assert [s.name for s in sources] == ["web", "web_2", "books/*.txt"]
    assert [s.path for s in sources] == ["web/", "web", "books/*.txt"]
    assert [s.weight for s in sources] == [0.5, 0.25, 0.25]
    with pytest.raises(ConfigError, match="no weight") as e:
        parse_sources(["web/:0.7", "books/"])
    assert "\n" not in str(e.value) and "books/" in str(e.value)


# ---- the schedule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("seed", [0, 7])
def test_schedule_shares_and_every_prefix_follow_the_weights(weights, seed):
    s = MixSchedule(weights, seed=seed)
    n, k = 10_000, len(weights)
    src = s.sources(np.arange(n))
    shares = np.bincount(src, minlength=k) / n
    assert np.abs(shares - np.asarray(weights)).max() < 0.01
    counts = running_counts(src, k)
    deviation = np.abs(counts - np.arange(n + 1)[:, None] * s.weights[None, :]).max()
    assert deviation <= 2.5  # blocks, over every prefix p, not only whole windows
    # far into a run the schedule is just as even (positions are absolute, no state)
    start = 10**12 + 123
    far = s.sources(np.arange(start, start + n))
    far_counts = s.counts(start)[None, :] + running_counts(far, k)
    expected = np.arange(start, start + n + 1)[:, None] * s.weights[None, :]
    assert np.abs(far_counts - expected).max() <= 2.5


def test_counts_and_local_index_agree_with_sources():
    s = MixSchedule((0.5, 0.3, 0.15, 0.05), seed=3)
    n = 3 * s.window + 77
    src = s.sources(np.arange(n))
    counts = running_counts(src, 4)
    for p in [0, 1, 2, 17, s.window - 1, s.window, s.window + 1, 2 * s.window + 5, n]:
        assert s.counts(p).tolist() == counts[p].tolist()
    local = s.local_index(np.arange(n))
    assert (local == counts[np.arange(n), src]).all()  # draw j of a source = j earlier positions of it
    rng = np.random.default_rng(0)
    some = rng.permutation(n)[:200].reshape(10, 20)  # any order and shape: a pure function of p
    assert (s.sources(some) == src[some]).all() and (s.local_index(some) == local[some]).all()


def test_schedule_is_deterministic_and_the_seed_changes_the_order():
    a, b, c = MixSchedule((0.7, 0.2, 0.1), 0), MixSchedule((0.7, 0.2, 0.1), 0), MixSchedule((0.7, 0.2, 0.1), 1)
    p = np.arange(5000)
    assert (a.sources(p) == b.sources(p)).all()
    assert (a.sources(p) != c.sources(p)).mean() > 0.2
    # the seed moves blocks inside a window, never the counts at window boundaries
    assert a.counts(4 * a.window).tolist() == c.counts(4 * c.window).tolist()


def test_small_weights_get_a_wider_window_and_bad_weights_fail():
    s = MixSchedule((0.998, 0.002))
    assert s.window == 4000
    src = s.sources(np.arange(3 * s.window))
    assert np.bincount(src).tolist() == [3 * 3992, 3 * 8]
    for bad in ([], [0.5, 0.0], [1.0, -1.0], [float("nan")]):
        with pytest.raises(ConfigError):
            MixSchedule(bad)


# ---- the dataset ----------------------------------------------------------------------------------


def blocks(source: int, n: int, block_size: int = 4, **kw) -> BlockDataset:
    """n blocks whose tokens say where they come from: source * 10_000 + block * block_size + i."""
    return BlockDataset(source * 10_000 + np.arange(n * block_size, dtype=np.int64), block_size, **kw)


def origin(item) -> tuple:
    first = int(item["input_ids"][0])
    return first // 10_000, (first % 10_000) // 4


def test_lengths_repeat_and_end():
    sizes, weights = (50, 30, 5), (0.7, 0.2, 0.1)
    repeat = MixtureDataset([blocks(k, n) for k, n in enumerate(sizes)], weights)
    assert len(repeat) == 85
    end = MixtureDataset([blocks(k, n) for k, n in enumerate(sizes)], weights, exhausted="end")
    length = len(end)
    # the first position that would need a source's 6th, 31st or 51st block
    local = end.schedule.local_index(np.arange(200))
    first_over = int(np.flatnonzero(local >= np.asarray(sizes)[end.schedule.sources(np.arange(200))])[0])
    assert length == first_over and 40 <= length <= 60
    assert (end.schedule.counts(length) <= sizes).all() and not (end.schedule.counts(length + 1) <= sizes).all()
    # "end" never repeats a block
    seen = [origin(end[i]) for i in range(length)]
    assert len(set(seen)) == length


def test_repeat_passes_use_new_permutations():
    ds = MixtureDataset([blocks(0, 40), blocks(1, 10)], (0.5, 0.5), seed=5)
    assert len(ds) == 50
    picks = [origin(it) for it in ds.__getitems__(list(range(len(ds))))]
    small = [b for s, b in picks if s == 1]  # 25 draws of a 10-block source: passes 0, 1 and half of 2
    assert len(small) == 25
    first, second = small[:10], small[10:20]
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second
    big = [b for s, b in picks if s == 0]
    assert sorted(big) == sorted(set(big)) and len(big) == 25  # no source repeats inside a pass


def test_getitems_equals_getitem_and_indexing_rules():
    ds = MixtureDataset([blocks(0, 9), blocks(1, 4), blocks(2, 6)], (0.5, 0.3, 0.2), names=["a", "b", "c"], seed=1)
    order = [7, 0, 18, 3, 3, -1, 11]
    batch = ds.__getitems__(order)
    for i, item in zip(order, batch):
        single = ds[i]
        assert single.keys() == item.keys()
        assert all(torch.equal(single[key], item[key]) for key in item)
    assert torch.equal(ds[-1]["input_ids"], ds[len(ds) - 1]["input_ids"])
    with pytest.raises(IndexError):
        ds[len(ds)]
    src, item = ds.locate(np.arange(len(ds)))
    assert [origin(x) for x in ds.__getitems__(list(range(len(ds))))] == list(zip(src.tolist(), item.tolist()))
    counts = ds.source_counts(np.arange(len(ds)))
    assert counts.tolist() == np.bincount(src, minlength=3).tolist() and counts.sum() == len(ds)


def test_pickles_cheaply_through_memory_maps(tmp_path):
    path = tmp_path / "tokens.bin"
    tokens = np.memmap(path, dtype=np.int32, mode="w+", shape=(200_000,))
    tokens[:] = np.arange(200_000) % 5000
    tokens.flush()
    mapped = np.memmap(path, dtype=np.int32, mode="r")
    ds = MixtureDataset([BlockDataset(mapped, 16), blocks(1, 20, 16)], (0.8, 0.2), names=["big", "small"], seed=2)
    blob = pickle.dumps(ds)
    assert len(blob) < mapped.nbytes / 4  # the corpus is not copied (the memory map is re-opened)
    assert len(blob) - sum(len(pickle.dumps(d)) for d in ds.datasets) < 2_000  # the mixture itself is small
    again = pickle.loads(blob)
    assert again.names == ["big", "small"] and len(again) == len(ds)
    for i in (0, 5, len(ds) - 1):
        assert torch.equal(again[i]["input_ids"], ds[i]["input_ids"])


def test_tokens_and_bytes_per_token_follow_the_schedule():
    a, b = blocks(0, 30, bytes_per_token=4.0), blocks(1, 10, bytes_per_token=2.0)
    ds = MixtureDataset([a, b], (0.75, 0.25), names=["a", "b"])
    drawn = ds.schedule.counts(len(ds))
    assert ds.num_tokens == int(drawn.sum()) * 4
    assert ds.bytes_per_token == pytest.approx((drawn[0] * 4.0 + drawn[1] * 2.0) / drawn.sum())
    assert ds.tokens_per_item == [4, 4]


def test_bad_mixtures_fail_with_one_line():
    with pytest.raises(ConfigError, match="repeat, end"):
        MixtureDataset([blocks(0, 3)], (1.0,), exhausted="stop")
    with pytest.raises(DataError, match="empty_one"):
        MixtureDataset([blocks(0, 3), []], (0.5, 0.5), names=["full", "empty_one"])
    with pytest.raises(ConfigError, match="unique"):
        MixtureDataset([blocks(0, 3), blocks(1, 3)], (0.5, 0.5), names=["x", "x"])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097])
def test_permute_is_a_keyed_bijection(n):
    index = np.arange(n)
    one, other = permute(index, n, hash64(1, 2, 0)), permute(index, n, hash64(1, 2, 1))
    assert sorted(one.tolist()) == sorted(other.tolist()) == list(range(n))
    if n >= 64:
        assert (one != other).mean() > 0.5 and (one != index).mean() > 0.5
