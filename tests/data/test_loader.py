"""Tests for lmtrain.data.loader: column filtering, the resumable seeded batch order, and seeded collation."""

from __future__ import annotations

import itertools
from typing import Optional

import pytest
import torch
from torch.utils.data import Dataset, IterableDataset

from lmtrain.data.loader import (
    KeepColumns,
    ResumableBatchSampler,
    SeededCollate,
    SeededFetch,
    batch_seed,
    batch_tokens,
    drop_unused_columns,
    example_lengths,
    forward_columns,
    length_grouped_order,
    make_loader,
    to_device,
)
from lmtrain.errors import DataError


def batches(sampler) -> list[list[int]]:
    return [list(b) for b in sampler]


def indices(sampler) -> list[int]:
    """The example indices of an epoch, in order (each batch's leading seed dropped)."""
    return [i for b in sampler for i in b[1:]]


# --------------------------------------------------------------------------- ResumableBatchSampler


@pytest.mark.parametrize("n, batch_size", [(10, 3), (12, 4), (1, 2), (7, 7)])
def test_epoch_order_is_a_permutation(n, batch_size):
    s = ResumableBatchSampler(n, batch_size, shuffle=True, data_seed=3, drop_last=False)
    got = indices(s)
    assert sorted(got) == list(range(n))
    assert all(1 <= len(b) - 1 <= batch_size for b in s)


def test_order_without_shuffle_is_sequential():
    s = ResumableBatchSampler(7, 3, shuffle=False, data_seed=3, drop_last=False)
    assert [b[1:] for b in s] == [[0, 1, 2], [3, 4, 5], [6]]


def test_order_is_deterministic_for_a_data_seed():
    def order(seed: int, epoch: int = 0) -> list[int]:
        s = ResumableBatchSampler(50, 4, shuffle=True, data_seed=seed, drop_last=False)
        s.set_position(epoch, 0)
        return indices(s)

    assert order(1) == order(1) and order(1, epoch=2) == order(1, epoch=2)
    assert order(1) != order(2)  # another data seed: another order
    assert order(1, epoch=0) != order(1, epoch=1)  # each epoch its own order
    assert order(1) != list(range(50))


def test_order_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    batches(ResumableBatchSampler(20, 3, shuffle=True, data_seed=5, drop_last=False))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("start", [0, 1, 3, 4])
def test_set_position_resumes_exactly_the_remaining_batches(start):
    full = ResumableBatchSampler(17, 4, shuffle=True, data_seed=7, drop_last=False)
    full.set_position(2, 0)
    everything = batches(full)
    resumed = ResumableBatchSampler(17, 4, shuffle=True, data_seed=7, drop_last=False)
    resumed.set_position(2, start)
    assert batches(resumed) == everything[start:]  # same indices and the same per-batch seeds


def test_set_position_past_the_end_yields_nothing():
    s = ResumableBatchSampler(10, 4, shuffle=True, data_seed=0, drop_last=False)
    s.set_position(0, len(s))
    assert batches(s) == []


@pytest.mark.parametrize(
    "n, batch_size, drop_last, expected_len",
    [
        (10, 3, False, 4),
        (10, 3, True, 3),
        (12, 4, False, 3),
        (12, 4, True, 3),
        (2, 4, True, 0),
        (2, 4, False, 1),
    ],
)
def test_len_and_drop_last(n, batch_size, drop_last, expected_len):
    s = ResumableBatchSampler(n, batch_size, shuffle=True, data_seed=1, drop_last=drop_last)
    got = batches(s)
    assert len(s) == expected_len == len(got)
    if drop_last:
        assert all(len(b) - 1 == batch_size for b in got)
        assert len(set(indices(s))) == expected_len * batch_size  # no example twice
    else:
        assert sorted(indices(s)) == list(range(n))  # the last batch is short, not wrapped


def test_ranks_read_disjoint_slices_of_each_global_batch():
    n, bs, world = 10, 2, 2
    per_rank = [ResumableBatchSampler(n, bs, True, 4, False, rank=r, world_size=world) for r in range(world)]
    got = [batches(s) for s in per_rank]
    assert len(per_rank[0]) == len(per_rank[1]) == 3 == len(got[0]) == len(got[1])
    order = ResumableBatchSampler(n, bs, True, 4, False).order().tolist()
    for b in range(3):
        glob = [order[i % n] for i in range(b * bs * world, (b + 1) * bs * world)]  # the last one wraps
        assert got[0][b][1:] + got[1][b][1:] == glob
    assert {i for g in got for b in g for i in b[1:]} == set(range(n))
    seeds = [b[0] for g in got for b in g]
    assert len(set(seeds)) == len(seeds)  # every rank's batch has its own seed


def test_lengths_give_the_length_grouped_order():
    lengths = [(i * 7) % 13 + 1 for i in range(40)]
    s = ResumableBatchSampler(40, 4, True, 9, False, lengths=lengths)
    g = torch.Generator().manual_seed(9 * 1_000 + 0)
    assert s.order().tolist() == length_grouped_order(lengths, 4, g).tolist()
    assert sorted(indices(s)) == list(range(40))


# --------------------------------------------------------------------------- length_grouped_order


@pytest.mark.parametrize("n, batch_size", [(1, 4), (9, 2), (100, 4), (1000, 3)])
def test_length_grouped_order_is_a_permutation(n, batch_size):
    lengths = [(i * 37) % 101 for i in range(n)]
    order = length_grouped_order(lengths, batch_size, torch.Generator().manual_seed(0))
    assert order.dtype == torch.long and sorted(order.tolist()) == list(range(n))


def test_length_grouped_order_groups_by_length():
    n, bs = 400, 4
    lengths = [(i * 37) % 101 for i in range(n)]
    order = length_grouped_order(lengths, bs, torch.Generator().manual_seed(1)).tolist()
    mega = max(1, min(n // (bs * 4), 50)) * bs  # 25 batches of 4 per mega-batch
    groups = [order[i : i + mega] for i in range(0, n, mega)]
    assert lengths[order[0]] == max(lengths)  # the longest example comes first
    for k, group in enumerate(groups):
        rest = group[1:] if k == 0 else group  # the first one may have been swapped with the longest
        assert [lengths[i] for i in rest] == sorted((lengths[i] for i in rest), reverse=True)
    # grouping: lengths inside a batch are close, compared with a random order
    spread = sum(
        max(lengths[i] for i in order[b : b + bs]) - min(lengths[i] for i in order[b : b + bs]) for b in range(0, n, bs)
    )
    assert spread < n  # a random order spreads about 60 per batch, i.e. ~6000 in all


def test_length_grouped_order_is_seeded():
    lengths = [i % 17 for i in range(200)]

    def order(seed: int) -> list[int]:
        return length_grouped_order(lengths, 4, torch.Generator().manual_seed(seed)).tolist()

    assert order(3) == order(3) and order(3) != order(4)


# --------------------------------------------------------------------------- seeds and collation


def test_batch_seed_distinct_across_epochs_and_indices():
    seeds = [
        batch_seed(data_seed, epoch, index)
        for data_seed, epoch, index in itertools.product([0, 42], range(20), range(200))
    ]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**62 for s in seeds)
    assert batch_seed(42, 3, 17) == batch_seed(42, 3, 17)


class Rows(Dataset):
    """A map-style dataset of dict rows."""

    def __init__(self, n: int, width: int = 3) -> None:
        self.rows = [{"input_ids": torch.arange(i, i + width), "extra": i} for i in range(n)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.rows[i]


class RowsWithGetitems(Rows):
    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.calls: list[list[int]] = []

    def __getitems__(self, idx: list[int]):
        self.calls.append(list(idx))
        return [self.rows[i] for i in idx]


def test_seeded_fetch_passes_the_seed_with_the_samples():
    data = Rows(5)
    fetch = SeededFetch(data)
    assert len(fetch) == 5 and fetch[2] is data[2]
    seed, samples = fetch.__getitems__([1234, 3, 0])
    assert seed == 1234 and samples == [data[3], data[0]]
    batched = RowsWithGetitems(5)
    assert SeededFetch(batched).__getitems__([9, 4, 1]) == (9, [batched.rows[4], batched.rows[1]])
    assert batched.calls == [[4, 1]]  # one batched fetch, without the seed


def test_seeded_fetch_turns_hf_columns_into_rows():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3], [4, 5, 6]], "label": [0, 1, 0]})
    seed, samples = SeededFetch(ds).__getitems__([5, 2, 0])
    assert seed == 5 and samples == [{"input_ids": [4, 5, 6], "label": 0}, {"input_ids": [1, 2], "label": 0}]


def random_collator(samples):
    """A collator that draws from the global RNG (as MLM masking does)."""
    ids = torch.stack([s["input_ids"] for s in samples])
    return {"input_ids": ids, "noise": torch.rand(ids.shape)}


def test_seeded_collate_is_reproducible_and_restores_the_rng():
    samples = [Rows(2)[0], Rows(2)[1]]
    collate = SeededCollate(random_collator)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a = collate((11, samples))
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is untouched
    b = collate((11, samples))
    c = collate((12, samples))
    assert torch.equal(a["noise"], b["noise"]) and not torch.equal(a["noise"], c["noise"])
    torch.manual_seed(11)
    assert torch.equal(a["noise"], random_collator(samples)["noise"])  # the collator ran under the seed


def loader_batches(loader) -> list[dict]:
    return [{k: v.clone() for k, v in b.items()} for b in loader]


def test_make_loader_collation_is_reproducible_and_resumable():
    def make(start: Optional[int] = None):
        loader = make_loader(
            Rows(11), random_collator, 3, shuffle=True, data_seed=5, drop_last=False, num_workers=0, pin_memory=False
        )
        if start is not None:
            loader.batch_sampler.set_position(1, start)
        return loader

    first = make()
    assert isinstance(first.batch_sampler, ResumableBatchSampler) and len(first) == 4
    a, b = loader_batches(first), loader_batches(make())
    assert [x["input_ids"].shape[0] for x in a] == [3, 3, 3, 2]
    for x, y in zip(a, b):
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["noise"], y["noise"])
    epoch1 = loader_batches(make(start=0))
    resumed = loader_batches(make(start=2))  # same epoch, two batches already consumed
    assert len(resumed) == 2
    for x, y in zip(epoch1[2:], resumed):
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["noise"], y["noise"])


def test_make_loader_iterable_dataset_gets_a_plain_loader():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(Rows(5).rows)

    loader = make_loader(
        Stream(), random_collator, 2, shuffle=False, data_seed=0, drop_last=True, num_workers=0, pin_memory=False
    )
    assert not isinstance(loader.batch_sampler, ResumableBatchSampler)
    assert [b["input_ids"][:, 0].tolist() for b in loader] == [[0, 1], [2, 3]]


# --------------------------------------------------------------------------- columns


class TinyModel(torch.nn.Module):
    def forward(self, input_ids, attention_mask=None, labels=None):  # pragma: no cover - never run
        return input_ids


class Wrapper(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, attr: str) -> None:
        super().__init__()
        setattr(self, attr, inner)

    def forward(self, *args, **kwargs):  # pragma: no cover - never run
        raise AssertionError


def test_forward_columns_unwraps_ddp_and_compiled_models():
    expected = ["input_ids", "attention_mask", "labels", "label", "label_ids", "start_positions"]
    model = TinyModel()
    assert forward_columns(model, ["start_positions"]) == expected
    assert forward_columns(Wrapper(model, "module"), ["start_positions"]) == expected
    assert forward_columns(Wrapper(model, "_orig_mod"), ["start_positions"]) == expected
    assert forward_columns(Wrapper(Wrapper(model, "_orig_mod"), "module"), ["start_positions"]) == expected


def test_drop_unused_columns_on_a_hf_dataset():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"input_ids": [[1], [2]], "label": [0, 1], "text": ["a", "b"], "id": [7, 8]})
    out = drop_unused_columns(ds, TinyModel(), [], "training dataset")
    assert out.column_names == ["input_ids", "label"]
    assert ds.column_names == ["input_ids", "label", "text", "id"]  # the caller's dataset is not changed
    kept = drop_unused_columns(out, TinyModel(), [], "training dataset")
    assert kept.column_names == ["input_ids", "label"]
    other = datasets.Dataset.from_dict({"text": ["a"], "id": [1]})
    with pytest.raises(DataError, match=r"columns \['text', 'id'\], none of which TinyModel.forward"):
        drop_unused_columns(other, TinyModel(), [], "training dataset")


def test_drop_unused_columns_leaves_torch_datasets_to_the_collator():
    data = Rows(3)  # rows have an 'extra' key forward() does not take
    assert drop_unused_columns(data, TinyModel(), [], "training dataset") is data
    stream = type("Stream", (IterableDataset,), {"__iter__": lambda self: iter([])})()
    assert drop_unused_columns(stream, TinyModel(), [], "training dataset") is stream
    with pytest.raises(DataError, match="none of which"):
        drop_unused_columns([{"text": "a"}], TinyModel(), [], "evaluation dataset")
    keep = KeepColumns(lambda feats: feats, forward_columns(TinyModel(), []))
    assert keep([{"input_ids": 1, "extra": 2, "labels": 3}]) == [{"input_ids": 1, "labels": 3}]
    assert keep([]) == []


def test_example_lengths():
    assert example_lengths(Rows(3, width=4)) == [4, 4, 4]
    assert example_lengths([{"input_ids": [1, 2]}, {"input_ids": [3]}]) == [2, 1]
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4]], "length": [30, 10]})
    assert example_lengths(ds) == [30, 10]  # the length column, when there is one
    assert example_lengths(ds, column="n_tokens") == [3, 1]


# --------------------------------------------------------------------------- to_device, batch_tokens


def test_to_device_moves_nested_tensors_and_keeps_the_rest():
    batch = {
        "input_ids": torch.ones(2, 3, dtype=torch.long),
        "nested": [torch.zeros(1), (torch.ones(1), "name")],
        "n": 5,
    }
    out = to_device(batch, torch.device("meta"), non_blocking=False)
    assert out["input_ids"].device.type == "meta" and out["input_ids"].dtype == torch.long
    assert isinstance(out["nested"], list) and out["nested"][0].device.type == "meta"
    assert isinstance(out["nested"][1], tuple) and out["nested"][1][0].device.type == "meta"
    assert out["nested"][1][1] == "name" and out["n"] == 5
    assert batch["input_ids"].device.type == "cpu"  # a new structure: the input is not changed
    t = torch.ones(2)
    assert to_device(t, torch.device("cpu")) is t  # already there: no copy


def test_batch_tokens():
    ids = torch.ones(2, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert batch_tokens({"input_ids": ids, "attention_mask": mask}) == 8  # non-padding tokens
    assert batch_tokens({"input_ids": ids}) == 10
    assert batch_tokens({"input_ids": [[1, 2]]}) == 0 and batch_tokens({"pixel_values": torch.ones(2)}) == 0
