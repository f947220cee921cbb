"""Batches for the loop: column filtering, a resumable order, and per-batch seeds for random collators.

The order of an epoch is a permutation seeded by (data_seed, epoch), so the data position of a run is
just (epoch, batches consumed): resuming slices the permutation instead of replaying batches. Each batch
also carries its own seed, and the collator runs under it; MLM masks therefore do not depend on worker
count, on resume, or on anything else the process did before.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ..distributed import unwrap
from ..errors import DataError

_SEED_MOD = 2**62


def forward_columns(model: torch.nn.Module, label_names: Sequence[str]) -> List[str]:
    """Names the model's forward() accepts, plus label columns (as transformers keeps them)."""
    params = list(inspect.signature(unwrap(model).forward).parameters)
    return params + [n for n in ("label", "label_ids", *label_names) if n not in params]


def is_hf_dataset(dataset: Any) -> bool:
    return type(dataset).__module__.startswith("datasets.")


def dataset_columns(dataset: Any) -> Optional[List[str]]:
    """Column names when they can be known without reading much (HF datasets, lists of dicts, one item)."""
    if getattr(dataset, "column_names", None) is not None:
        return list(dataset.column_names)
    if isinstance(dataset, IterableDataset):
        return None
    try:
        first = dataset[0]
    except Exception:
        return None
    return list(first.keys()) if isinstance(first, dict) else None


def drop_unused_columns(dataset: Any, model: torch.nn.Module, label_names: Sequence[str], description: str) -> Any:
    """For Hugging Face datasets, remove columns forward() does not take (so they are never decoded)."""
    columns = dataset_columns(dataset)
    if columns is None:
        return dataset
    keep = set(forward_columns(model, label_names))
    if not set(columns) & keep:
        sig = ", ".join(forward_columns(model, [])[:12])
        raise DataError(
            f"the {description} has columns {columns}, none of which {type(model).__name__}.forward({sig}) "
            f"accepts; rename them (for example to input_ids) or pass remove_unused_columns=False."
        )
    unused = [c for c in columns if c not in keep]
    if unused and is_hf_dataset(dataset) and hasattr(dataset, "remove_columns"):
        return dataset.remove_columns(unused)
    return dataset


class KeepColumns:
    """Collator wrapper that drops keys forward() does not take (for datasets we cannot edit)."""

    def __init__(self, collator: Callable, keep: Sequence[str]) -> None:
        self.collator = collator
        self.keep = set(keep)

    def __call__(self, features: List[Dict[str, Any]]) -> Dict[str, Any]:
        if features and isinstance(features[0], dict):
            features = [{k: v for k, v in f.items() if k in self.keep} for f in features]
        return self.collator(features)


def batch_seed(data_seed: int, epoch: int, index: int) -> int:
    """A seed for one batch, a pure function of where it is in the run."""
    return (data_seed * 1_000_003 + epoch * 7_919 + index * 104_729 + 1) % _SEED_MOD


class ResumableBatchSampler(Sampler[List[int]]):
    """Yields `[seed, i1, i2, ...]` for each batch of one epoch on this rank, starting at batch `start`.

    Shuffled order is `torch.randperm(n)` from a generator seeded by (data_seed, epoch): it never
    touches the global RNG, so model dropout and masking stay reproducible. Under torchrun, global
    batch b is `order[b*B*W : (b+1)*B*W]` and rank r reads its r-th slice of it; the last global batch
    wraps around to the start of the order, so every rank takes the same number of steps.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        shuffle: bool,
        data_seed: int,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
        lengths: Optional[Sequence[int]] = None,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.data_seed = data_seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        self.lengths = lengths

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        per_step = self.batch_size * self.world_size
        if self.drop_last:
            return self.num_samples // per_step
        return -(-self.num_samples // per_step)

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(self.data_seed * 1_000 + self.epoch)
        if self.lengths is not None:
            return length_grouped_order(self.lengths, self.batch_size * self.world_size, g)
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[List[int]]:
        order = self.order().tolist()
        per_step, n = self.batch_size * self.world_size, self.num_samples
        for b in range(self.start, len(self)):
            lo = b * per_step + self.rank * self.batch_size
            idx = [order[i % n] for i in range(lo, lo + self.batch_size)]
            if self.world_size == 1:  # one process: the last batch is short rather than wrapped
                idx = order[lo : min(lo + self.batch_size, n)]
            yield [batch_seed(self.data_seed, self.epoch, b * self.world_size + self.rank), *idx]


def length_grouped_order(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """transformers' group_by_length order: a random permutation cut into mega-batches of up to 50
    batches, each sorted longest first, with the longest batch of all moved to the front (so an
    out-of-memory error shows up on the first step, not in the middle of the run)."""
    n = len(lengths)
    mult = max(1, min(n // (batch_size * 4), 50))
    perm = torch.randperm(n, generator=generator).tolist()
    mega = mult * batch_size
    groups = [sorted(perm[i : i + mega], key=lambda j: -lengths[j]) for i in range(0, n, mega)]
    if groups:
        heads = [lengths[g[0]] for g in groups]
        top = heads.index(max(heads))
        groups[0][0], groups[top][0] = groups[top][0], groups[0][0]
    return torch.tensor([i for g in groups for i in g], dtype=torch.long)


def example_lengths(dataset: Any, column: str = "length") -> List[int]:
    """Length of each example: the `column` of a dataset that has it, else len(input_ids)."""
    if column in (dataset_columns(dataset) or []):
        return [int(v) for v in dataset[column]]
    return [len(dataset[i]["input_ids"]) for i in range(len(dataset))]


class SeededFetch(Dataset):
    """Wraps a map-style dataset so that a fetch gets `[seed, indices...]` and returns (seed, samples)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]

    def __getitems__(self, seeded: List[int]):
        seed, indices = seeded[0], seeded[1:]
        fetch = getattr(self.dataset, "__getitems__", None)
        samples = fetch(indices) if fetch is not None else [self.dataset[i] for i in indices]
        if isinstance(samples, dict):  # a HF dataset returns columns; the collators want rows
            keys = list(samples)
            samples = [dict(zip(keys, row)) for row in zip(*(samples[k] for k in keys))]
        return seed, samples


class SeededCollate:
    """Runs the collator with the global torch RNG set to the batch's seed, then restores it."""

    def __init__(self, collator: Callable) -> None:
        self.collator = collator

    def __call__(self, seeded) -> Dict[str, Any]:
        seed, samples = seeded
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.collator(samples)


def make_loader(
    dataset: Any,
    collator: Callable,
    batch_size: int,
    *,
    shuffle: bool,
    data_seed: int,
    drop_last: bool,
    num_workers: int,
    pin_memory: bool,
    persistent_workers: bool = False,
    prefetch_factor: Optional[int] = None,
    rank: int = 0,
    world_size: int = 1,
    lengths: Optional[Sequence[int]] = None,
    multiprocessing_context: Optional[str] = None,
) -> DataLoader:
    """A DataLoader over `dataset`; map-style datasets get the resumable, seeded order."""
    extra: Dict[str, Any] = {}
    if num_workers > 0:
        extra["persistent_workers"] = persistent_workers
        if prefetch_factor:
            extra["prefetch_factor"] = prefetch_factor
        if multiprocessing_context:
            extra["multiprocessing_context"] = multiprocessing_context
    # A private generator: creating an iterator must not consume the global RNG (exact resume).
    generator = torch.Generator().manual_seed(data_seed)
    stream_loader = getattr(dataset, "stream_loader", None)
    if stream_loader is not None:  # a StreamingDataset: whole batches that carry their stream position
        return stream_loader(
            collator,
            batch_size,
            data_seed=data_seed,
            num_workers=num_workers,
            rank=rank,
            world_size=world_size,
            pin_memory=pin_memory,
            generator=generator,
            **extra,
        )
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=collator,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=pin_memory,
            generator=generator,
            **extra,
        )
    sampler = ResumableBatchSampler(len(dataset), batch_size, shuffle, data_seed, drop_last, rank, world_size, lengths)
    return DataLoader(
        SeededFetch(dataset),
        batch_sampler=sampler,
        collate_fn=SeededCollate(collator),
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=generator,
        **extra,
    )


def to_device(batch: Any, device: torch.device, non_blocking: bool = True) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


def batch_tokens(batch: Dict[str, Any]) -> int:
    """Input tokens in a batch (non-padding when an attention mask is present); host-side, no sync."""
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        return int(mask.sum())
    ids = batch.get("input_ids")
    return int(ids.numel()) if isinstance(ids, torch.Tensor) else 0
