"""Train on several sources mixed by weight: ``--train_file web/:0.7 'books/*.txt:0.2' code.jsonl:0.1``.

:class:`~lmtrain.data.mix_schedule.MixSchedule` decides which source supplies each global block position, a
pure function of (weights, seed, position). :class:`MixtureDataset` turns positions into the per-source
datasets' items: a source that is drawn more often than it has items starts a new pass in a new seeded
order. :func:`parse_sources` reads ``path:weight`` specs; :func:`prepare_mixture` builds one token cache
per source.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from lmtrain.data.mix_schedule import MixSchedule, hash64, permute
from lmtrain.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "EXHAUSTED",
    "check_exhausted",
    "MixSchedule",
    "MixtureDataset",
    "Source",
    "parse_source",
    "parse_sources",
    "prepare_mixture",
    "describe_mixture",
]

EXHAUSTED = ("repeat", "end")
"""What a source that runs out does: start over in a new order, or end the epoch."""


def check_exhausted(exhausted: str) -> str:
    """``exhausted`` if it is repeat or end, else a one-line ConfigError."""
    if exhausted not in EXHAUSTED:
        raise ConfigError(f"--mix_exhausted {exhausted!r} is not one of repeat, end; pass one of them")
    return exhausted


_WEIGHT = re.compile(r"^(?P<path>.+):(?P<weight>[^:/\\]+)$")

# ---- source specs ---------------------------------------------------------------------------------


def parse_source(spec: str) -> Tuple[str, Optional[float]]:
    """``"books/*.txt:0.2"`` -> ``("books/*.txt", 0.2)``; a spec without a weight -> ``(spec, None)``.

    A path that exists is a path even when it contains ':'; a trailing ``:<text>`` that is not a
    number is part of the path (a missing file is reported when the files are resolved).
    """
    spec = str(spec)
    if os.path.exists(os.path.expanduser(spec)):
        return spec, None
    m = _WEIGHT.match(spec)
    if m is None:
        return spec, None
    path, text = m.group("path"), m.group("weight")
    try:
        weight = float(text)
    except ValueError:
        return spec, None
    if not (math.isfinite(weight) and weight > 0):
        raise ConfigError(f"--train_file {spec}: the weight {text} must be a positive number, e.g. {path}:0.5")
    return path, weight


@dataclass(frozen=True)
class Source:
    """One weighted training source: a file, folder or glob."""

    name: str
    """The spec without its weight, made unique (for the logs: tokens_<name>)."""
    path: str
    weight: float
    """Normalised: the weights of all sources sum to 1."""


def parse_sources(specs: Sequence[str]) -> Optional[List[Source]]:
    """The weighted sources of a --train_file list, or None when no entry carries a weight.

    Either every entry has a weight or none does; the weights are normalised to sum 1.
    """
    parsed = [parse_source(s) for s in specs]
    weighted = [s for s, (_, w) in zip(specs, parsed) if w is not None]
    if not weighted:
        return None
    if len(weighted) < len(parsed):
        bare = next(s for s, (_, w) in zip(specs, parsed) if w is None)
        raise ConfigError(
            f"--train_file {bare} has no weight while {weighted[0]} has one; give every entry a weight "
            f"({bare}:0.5) or none"
        )
    total = sum(w for _, w in parsed if w is not None)
    names: List[str] = []
    for path, _ in parsed:
        base = path.rstrip("/\\") or path
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return [Source(n, p, float(w) / total) for n, (p, w) in zip(names, parsed) if w is not None]


# ---- the dataset ----------------------------------------------------------------------------------


def _tokens_per_item(dataset: Any) -> Optional[int]:
    """Input tokens of one item (blocks: block_size; else the first item's input_ids)."""
    size = getattr(dataset, "block_size", None)
    if isinstance(size, int):
        return size
    try:
        return len(dataset[0]["input_ids"])
    except Exception:
        return None


def _bytes_per_token(tokens: Sequence[float], datasets: Sequence[Any]) -> Optional[float]:
    """Bytes per token of datasets taken `tokens` tokens each (None when one of them does not know)."""
    ratios = [getattr(d, "bytes_per_token", None) for d in datasets]
    total = float(sum(tokens))
    if total <= 0 or not all(isinstance(r, (int, float)) for r in ratios):
        return None
    return sum(t * float(r) for t, r in zip(tokens, ratios) if r is not None) / total


def _fetch(dataset: Any, indices: List[int]) -> List[Any]:
    fetch = getattr(dataset, "__getitems__", None)
    items = fetch(indices) if fetch is not None else [dataset[i] for i in indices]
    if isinstance(items, dict):  # a Hugging Face dataset returns columns
        keys = list(items)
        items = [dict(zip(keys, row)) for row in zip(*(items[k] for k in keys))]
    return list(items)


class MixtureDataset(Dataset):
    """Map-style datasets mixed by weight: item p is the next draw of the source the schedule gives p.

    Draw j of source k (n_k items) is item ``perm(seed, k, j // n_k)[j % n_k]`` of it: each pass over a
    source is a new seeded permutation. With ``exhausted="repeat"`` the epoch is as long as all sources
    together (a source that runs out starts another pass); with ``"end"`` it ends at the first position
    that would need a source's second pass. Items are the sources' own, unchanged.
    """

    def __init__(
        self,
        datasets: Sequence[Any],
        weights: Sequence[float],
        names: Optional[Sequence[str]] = None,
        seed: int = 0,
        exhausted: str = "repeat",
    ) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise ConfigError(f"a mixture needs one weight per dataset; got {len(datasets)} and {len(weights)}")
        check_exhausted(exhausted)
        self.datasets = list(datasets)
        self.names = list(names) if names is not None else [f"source{k}" for k in range(len(datasets))]
        if len(self.names) != len(self.datasets) or len(set(self.names)) != len(self.names):
            raise ConfigError(f"mixture source names must be unique, one per dataset; got {self.names}")
        self.sizes = np.array([len(d) for d in self.datasets], dtype=np.int64)
        for name, size in zip(self.names, self.sizes):
            if size == 0:
                raise DataError(f"the mixture source {name} has no items; give it more text or leave it out")
        self.schedule = MixSchedule(weights, seed)
        self.weights = [float(w) for w in self.schedule.weights]
        self.seed = int(seed)
        self.exhausted = exhausted
        self._length = int(self.sizes.sum()) if exhausted == "repeat" else self._end_length()
        self.tokens_per_item = [_tokens_per_item(d) for d in self.datasets]
        # per epoch, as BlockDataset reports them: corpus tokens drawn, and bytes per token (for bits per byte)
        drawn = self.schedule.counts(self._length)
        known = [t for t in (getattr(d, "num_tokens", None) for d in self.datasets) if isinstance(t, int)]
        self.num_tokens: Optional[int] = None
        self.bytes_per_token: Optional[float] = None
        if len(known) == len(self.datasets):
            tokens = [int(c) * t / int(s) for c, t, s in zip(drawn, known, self.sizes)]
            self.num_tokens = int(round(sum(tokens)))
            self.bytes_per_token = _bytes_per_token(tokens, self.datasets)

    def _end_length(self) -> int:
        """The first position at which some source would need a draw beyond its items (binary search)."""
        lo, hi = 0, int(self.sizes.sum()) + 1  # counts(total + 1) holds more blocks than all sources have
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if np.all(self.schedule.counts(mid) <= self.sizes):
                lo = mid
            else:
                hi = mid
        return lo

    def __len__(self) -> int:
        return self._length

    def locate(self, positions: Any) -> Tuple[np.ndarray, np.ndarray]:
        """(source, item index in that source) of each position."""
        src, draw = self.schedule.lookup(positions)
        item = np.empty_like(draw)
        for k in np.unique(src):
            sel = src == k
            n = int(self.sizes[k])
            passes, within = np.divmod(draw[sel], n)
            item[sel] = permute(within, n, hash64(self.seed, int(k), passes))
        return src, item

    def source_counts(self, positions: Any) -> np.ndarray:
        """How many of `positions` each source supplies (int64, length K)."""
        src = self.schedule.sources(np.asarray(positions, dtype=np.int64).ravel())
        return np.bincount(src, minlength=len(self.datasets)).astype(np.int64)

    def __getitem__(self, i: int) -> Any:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> List[Any]:
        """A batch of items, fetched with one call per source (BlockDataset reads its blocks at once)."""
        idx = np.asarray(indices, dtype=np.int64).ravel()
        n = self._length
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a mixture of {n} items")
        src, item = self.locate(np.where(idx < 0, idx + n, idx))
        out: List[Any] = [None] * len(idx)
        for k in np.unique(src):
            where = np.flatnonzero(src == k)
            for i, sample in zip(where, _fetch(self.datasets[int(k)], item[where].tolist())):
                out[i] = sample
        return out

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}={w:.3g}" for n, w in zip(self.names, self.weights))
        return f"MixtureDataset({parts}; items={len(self)}, exhausted={self.exhausted})"


# ---- building a mixture from files ----------------------------------------------------------------


def prepare_mixture(
    sources: Sequence[Source],
    tokenizer: "PreTrainedTokenizerBase",
    block_size: int,
    validation_files: Optional[Sequence[Any]] = None,
    validation_split_percentage: float = 5.0,
    seed: int = 42,
    mix_seed: int = 0,
    exhausted: str = "repeat",
    **options: Any,
) -> Tuple[MixtureDataset, Optional[Dataset], Dict[str, Any]]:
    """One token cache per source (``prepare_datasets`` on each, with ``options`` passed through).

    Each source holds out its own validation blocks unless `validation_files` are given; the evaluation
    set is those blocks together (or the validation files). Returns (train mixture, eval set, info) with
    info["sources"]: one ``prepare_datasets`` info per source, plus its name and weight.
    """
    from lmtrain.data.pack import prepare_datasets
    from lmtrain.data.readers import resolve_files

    check_exhausted(exhausted)  # before any tokenizing
    trains, evals, infos = [], [], []
    for i, src in enumerate(sources):
        try:
            train_ds, eval_ds, info = prepare_datasets(
                resolve_files([src.path]),
                tokenizer,
                block_size,
                validation_files=validation_files if i == 0 else None,  # the validation files are read once
                validation_split_percentage=0.0 if validation_files else validation_split_percentage,
                seed=seed,
                **options,
            )
        except DataError as e:
            if "validation data" in str(e):  # (the --validation_file files, read with the first source)
                raise
            raise DataError(f"source {src.name}: {e}") from None
        trains.append(train_ds)
        if eval_ds is not None and len(eval_ds):
            evals.append(eval_ds)
        if validation_files:  # the validation files' blocks are the mixture's, not the first source's
            info = {**info, "eval_blocks": 0, "eval_tokens": 0}
        infos.append({"name": src.name, "weight": src.weight, **info})
    mixture = MixtureDataset(trains, [s.weight for s in sources], [s.name for s in sources], mix_seed, exhausted)
    eval_set: Optional[Dataset] = None
    if len(evals) == 1:
        eval_set = evals[0]
    elif evals:
        eval_set = ConcatDataset(evals)
        # bits per byte of the whole evaluation set
        eval_set.bytes_per_token = _bytes_per_token([d.num_tokens for d in evals], evals)  # type: ignore[attr-defined]
    info = {
        "sources": infos,
        "train_tokens": mixture.num_tokens,
        "train_blocks": len(mixture),
        "eval_blocks": sum(len(d) for d in evals),
    }
    return mixture, eval_set, info


def describe_mixture(mixture: MixtureDataset, info: Dict[str, Any], block_size: int) -> str:
    """The CLI's data line: the epoch, then each source's name, weight, tokens and blocks."""
    head = (
        f"data: {len(mixture.names)} sources mixed by weight, {len(mixture):,} blocks of {block_size} "
        f"per epoch (mix_exhausted {mixture.exhausted})"
    )
    if info.get("eval_blocks"):
        head += f"; {info['eval_blocks']:,} validation blocks"
    lines = [head]
    for s in info["sources"]:
        line = f"  {s['name']}: weight {s['weight']:.3g}, {s['train_tokens']:,} tokens in {s['train_blocks']:,} blocks"
        if "tokens_dropped" in s:
            from lmtrain.data.packing import describe_packing

            line += f"; {describe_packing(s)}"
        lines.append(line)
    return "\n".join(lines)
