"""Streaming: blocks read, encoded and packed on the fly in the data-loader workers, resumable exactly.

The stream is cut into *lanes*: one per data-loader worker on each rank (one per rank without
workers). Each source's shards (:func:`lmtrain.data.shards.plan_shards`: byte ranges, parquet row
groups, whole compressed files) are dealt to the lanes, balanced by bytes, so no two lanes, hence no
two ranks, read the same text. A lane turns its shards into blocks: text units are encoded a group at
a time, EOS ends every document, and blocks are cut from the running tokens; with several sources,
each block comes from the source :class:`~lmtrain.data.mixture.MixSchedule` names for the lane's
block position. The DataLoader takes its workers' output in turn, so rank-local batch ``i`` comes
from lane ``i mod workers``.

A lane's position is small: per source, (pass, shard, cursor in the shard, tokens carried over).
Every batch carries the position after it; the training loop keeps the latest one per lane
(:meth:`StreamingDataset.record`), a checkpoint stores them, and a resumed run restarts every lane
there: no batch is replayed, however far into the stream the run was.

While a lane reads a shard whole for the first time it also writes the shard's tokens into the
token cache's staging area; when every shard of a source is there the cache is assembled, so the
next run on the same files starts warm (:mod:`lmtrain.data.shard_cache`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lmtrain.data.lanes import LaneReader, new_lane_state
from lmtrain.data.loader import batch_seed
from lmtrain.data.packing import check_packing, model_items
from lmtrain.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["STREAM_KEY", "StreamingDataset", "prepare_streaming", "stream_of"]

STREAM_KEY = "__lmtrain_stream__"
"""The key under which every streamed batch carries its lane's position (removed before the forward)."""


class StreamingDataset(IterableDataset):
    """Blocks of one or more text sources, tokenized while training reads them.

    ``sources`` is a list of file lists (one per source; a plain list of paths is one source);
    ``weights`` mixes them (see :class:`~lmtrain.data.mixture.MixSchedule`). Items are the blocks of
    :class:`~lmtrain.data.pack.BlockDataset` (CLM: input_ids and labels; MLM: [CLS] window [SEP] and
    attention_mask). Iterated directly (e.g. by transformers' Trainer) it yields single blocks, each
    data-loader worker reading its own lane; lmtrain's Trainer asks for :meth:`stream_loader` instead, which
    yields whole batches with their positions, so a checkpoint can resume the stream exactly.
    """

    def __init__(
        self,
        sources: Sequence[Any],
        tokenizer: "PreTrainedTokenizerBase",
        block_size: int,
        *,
        weights: Optional[Sequence[float]] = None,
        names: Optional[Sequence[str]] = None,
        mlm: bool = False,
        text_column: str = "text",
        encoding_errors: str = "strict",
        seed: int = 42,
        shuffle: bool = True,
        shard_bytes: int = 64 << 20,
        cache_dir: Optional[str | Path] = None,
        write_cache: bool = True,
        packing: str = "concat",
    ) -> None:
        from lmtrain.data.encoders import best_encoder, splitting_is_exact
        from lmtrain.data.pack import first_token_id, mlm_special_ids
        from lmtrain.data.readers import resolve_files
        from lmtrain.data.shards import plan_shards
        from lmtrain.data.token_cache import separator_id, token_dtype

        if sources and isinstance(sources[0], (str, Path)):
            sources = [sources]
        file_lists = [resolve_files(list(s)) for s in sources]
        if not file_lists:
            raise DataError("no input files given; pass --train_file PATH")
        self.block_size = int(block_size)
        self.mlm = bool(mlm)
        self.window = self.block_size - 2 if mlm else self.block_size
        if self.window < 1:
            raise ConfigError(f"block_size {block_size} is too small; pass --block_size {3 if mlm else 1} or more")
        ids: tuple[Optional[int], Optional[int]] = mlm_special_ids(tokenizer) if mlm else (None, None)
        self.cls_id, self.sep_id = ids
        self.tokenizer = tokenizer
        self.eos_id: Optional[int] = separator_id(tokenizer)
        self.packing = check_packing(packing)
        # bos_aligned documents: CLM [BOS] + ids (+ [EOS] when it differs), MLM ids + [EOS] (as the cache's packer)
        self.bos_id = None if mlm else first_token_id(tokenizer, "bos_token_id", "eos_token_id", "sep_token_id")
        self.text_column = text_column
        self.encoding_errors = encoding_errors
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        probe = best_encoder(tokenizer)
        self.split_text = splitting_is_exact(probe, tokenizer)
        _close(probe)
        self.files = file_lists
        self.shards = [plan_shards(files, shard_bytes, split_text=self.split_text) for files in file_lists]
        self.names = list(names) if names is not None else [f"source{i}" for i in range(len(file_lists))]
        if weights is None:
            weights = [sum(shard.size for shard in shards) for shards in self.shards]  # by bytes
        if len(weights) != len(file_lists) or len(self.names) != len(file_lists):
            raise ConfigError("give one weight and one name per source")
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        from lmtrain.data.mixture import MixSchedule

        self.schedule = MixSchedule(self.weights, seed=self.seed) if len(file_lists) > 1 else None
        self.token_dtype = token_dtype(len(tokenizer))
        self.cache_staging: Optional[List[Optional[str]]] = None
        if write_cache:
            from lmtrain.data.shard_cache import staging_dir

            self.cache_staging = [
                str(staging_dir(files, tokenizer, cache_dir, text_column=text_column, encoding_errors=encoding_errors))
                for files in file_lists
            ]
        self.cache_dir = cache_dir
        # set by stream_loader(): the batch layout and this process's lanes
        self.batch_size = 1
        self.collator: Optional[Callable[[List[Dict[str, Any]]], Dict[str, Any]]] = None
        self.data_seed = self.seed
        self.rank, self.world_size, self.workers = 0, 1, 0
        # the position, kept in the main process: latest state of each of this rank's lanes
        self.lane_states: Dict[int, Dict[str, Any]] = {}
        self.batches = 0
        self._encode: Any = None

    # ---- layout ----------------------------------------------------------------------------------

    @property
    def lanes_per_rank(self) -> int:
        return max(1, self.workers)

    @property
    def lanes_total(self) -> int:
        return self.lanes_per_rank * self.world_size

    def stream_loader(
        self,
        collator: Callable[[List[Dict[str, Any]]], Dict[str, Any]],
        batch_size: int,
        *,
        data_seed: int,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        **extra: Any,
    ) -> DataLoader:
        """A DataLoader of whole batches, each carrying its lane's position under STREAM_KEY."""
        saved = (self.world_size, self.workers) if self.lane_states else None
        self.collator, self.batch_size, self.data_seed = collator, int(batch_size), int(data_seed)
        self.rank, self.world_size, self.workers = rank, world_size, num_workers
        if saved is not None and saved != (world_size, num_workers):
            self._check_layout(*saved)
        extra.pop("persistent_workers", None)  # each iterator must start from the position of its time
        return DataLoader(
            self,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            collate_fn=_keep,
            **extra,
        )

    def _check_layout(self, world_size: int, workers: int) -> None:
        raise ConfigError(
            f"this stream was read by {world_size} rank(s) x {max(1, workers)} data-loader worker lane(s); "
            f"resume with the same --dataloader_num_workers {workers} and number of ranks, "
            "or pass --ignore_data_skip to restart the stream"
        )

    # ---- the position (main process) --------------------------------------------------------------

    def take_position(self, batch: Dict[str, Any]) -> None:
        """The training loop consumed ``batch``: remove the position it carries and keep it."""
        self.record(batch.pop(STREAM_KEY))

    def record(self, lane_state: Dict[str, Any]) -> None:
        """Keep the position of a lane after a batch the training loop consumed."""
        self.lane_states[int(lane_state["lane"])] = lane_state
        self.batches += 1

    def state_dict(self) -> Dict[str, Any]:
        """This rank's position in the stream (what a checkpoint stores)."""
        return {
            "version": 1,
            "world_size": self.world_size,
            "workers": self.workers,
            "batches": self.batches,
            "lanes": copy.deepcopy(self.lane_states),
            "names": list(self.names),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from a position :meth:`state_dict` returned (before the loader is iterated)."""
        if (state.get("world_size"), state.get("workers")) != (self.world_size, self.workers) and self.collator:
            self._check_layout(int(state["world_size"]), int(state["workers"]))
        self.world_size, self.workers = int(state["world_size"]), int(state["workers"])
        self.lane_states = copy.deepcopy(state["lanes"])
        self.batches = int(state["batches"])

    def tokens_per_source(self) -> Dict[str, int]:
        """Tokens of each source the run has consumed, over all ranks (lanes advance alike on every rank)."""
        counts = np.zeros(len(self.names), dtype=np.int64)
        for st in self.lane_states.values():
            counts += np.array([s["blocks"] for s in st["sources"]], dtype=np.int64)
        return {n: int(c) * self.block_size * self.world_size for n, c in zip(self.names, counts)}

    # ---- reading (in the workers) -----------------------------------------------------------------

    def document(self, ids: np.ndarray) -> np.ndarray:
        """A whole document's ids as bos_aligned packs it (see :func:`~lmtrain.data.packing.bos_aligned_rows`)."""
        parts = [ids]
        if self.bos_id is not None:
            parts.insert(0, np.array([self.bos_id], dtype=np.int64))
        if self.eos_id is not None and self.bos_id != self.eos_id:
            parts.append(np.array([self.eos_id], dtype=np.int64))
        return np.concatenate(parts)

    def tokens_dropped(self) -> int:
        """bos_aligned: tokens cropped from documents so far, over all ranks (0 with concat)."""
        dropped = sum(s["dropped"] for st in self.lane_states.values() for s in st["sources"])
        return int(dropped) * self.world_size

    def encode(self, texts: List[str]) -> List[Any]:
        if self._encode is None:  # built in the process that reads: encoder threads do not survive a fork
            from lmtrain.data.encoders import best_encoder

            self._encode = best_encoder(self.tokenizer)
        arrays = getattr(self._encode, "encode_arrays", None)
        return arrays(texts) if arrays is not None else self._encode(texts)

    def shard_written(self, source: int) -> None:
        """A lane finished writing a shard of ``source``: assemble that source's cache once all are there."""
        from lmtrain.data.shard_cache import assemble_if_complete

        assert self.cache_staging is not None
        staging = self.cache_staging[source]
        if staging is not None:
            assemble_if_complete(staging, self.shards[source], self.tokenizer, text_column=self.text_column)

    def _new_lane_state(self, lane: int) -> Dict[str, Any]:
        return new_lane_state(lane, len(self.names))

    def _lane_for_worker(self) -> int:
        """This worker's lane on this rank: batch i of the rank comes from lane i mod workers."""
        info = get_worker_info()
        if info is None:
            return 0
        return (info.id + self.batches) % info.num_workers

    def _samples(self, rows: np.ndarray) -> List[Dict[str, torch.Tensor]]:
        return model_items(np.ascontiguousarray(rows, dtype=np.int64), self.mlm, self.cls_id, self.sep_id)

    def _lane_blocks(self, lane: int) -> Iterator[tuple[np.ndarray, Dict[str, Any]]]:
        """Blocks of ``lane`` (local to this rank) from its saved position on, with the state after each."""
        state = copy.deepcopy(self.lane_states.get(lane)) or self._new_lane_state(lane)
        global_lane = state["global_lane"] = self.rank * self.lanes_per_rank + lane
        readers = [
            LaneReader(self, k, global_lane, self.lanes_total, state["sources"][k]) for k in range(len(self.names))
        ]
        try:
            while True:
                k = 0 if self.schedule is None else int(self.schedule.sources(np.array([state["blocks"]]))[0])
                block = readers[k].take(self.window)
                state["blocks"] += 1
                yield block, state
        finally:
            for r in readers:
                r.abort_writers()
            _close(self._encode)
            self._encode = None

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        lane = self._lane_for_worker()
        if self.collator is None:  # used as a plain IterableDataset: single blocks
            for block, _state in self._lane_blocks(lane):
                yield self._samples(block[None])[0]
            return
        rows = np.empty((self.batch_size, self.window), dtype=np.int64)
        global_lane = self.rank * self.lanes_per_rank + lane
        filled = 0
        for block, state in self._lane_blocks(lane):
            rows[filled] = block
            filled += 1
            if filled < self.batch_size:
                continue
            filled = 0
            seed = batch_seed(self.data_seed, global_lane, state["batches"])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # MLM masks: a function of the batch's place in the stream
                batch = self.collator(self._samples(rows.copy()))
            state["batches"] += 1
            batch[STREAM_KEY] = copy.deepcopy(state)
            yield batch

    def __repr__(self) -> str:
        kind = "mlm" if self.mlm else "clm"
        return f"StreamingDataset({kind}, sources={len(self.names)}, block_size={self.block_size})"


def _keep(item: Any) -> Any:
    return item


def _close(encode: Any) -> None:
    close = getattr(encode, "close", None)
    if close is not None:
        close()


class IterablePosition:
    """The position of a Hugging Face ``datasets.IterableDataset`` read without data-loader workers: its own
    ``state_dict()`` is then exactly the examples the loop consumed (no worker reads ahead), so a checkpoint
    can store it and a resumed run continue from it instead of skipping batches one by one."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def take_position(self, batch: Dict[str, Any]) -> None:
        """Nothing to take: the dataset tracks itself."""

    def state_dict(self) -> Dict[str, Any]:
        return {"hf_iterable": self.dataset.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.dataset.load_state_dict(state["hf_iterable"])


def stream_of(loader: Any) -> Any:
    """What keeps the position of the stream a loader reads, or None: the StreamingDataset itself, or an
    :class:`IterablePosition` for a ``datasets.IterableDataset`` read in the main process."""
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, StreamingDataset):
        return dataset
    hf_iterable = type(dataset).__module__.startswith("datasets.") and hasattr(dataset, "load_state_dict")
    if hf_iterable and isinstance(dataset, IterableDataset) and getattr(loader, "num_workers", 1) == 0:
        return IterablePosition(dataset)
    return None


def cached_already(
    file_lists: Sequence[Sequence[Path]],
    tokenizer: Any,
    cache_dir: Optional[str | Path],
    text_column: str = "text",
    encoding_errors: str = "strict",
) -> bool:
    """Whether every source's token cache is complete (an earlier run or prepare built it): then
    reading it beats streaming."""
    from lmtrain.data.shard_cache import cache_dir_of, complete_cache, staging_dir

    return all(
        complete_cache(cache_dir_of(staging_dir(list(files), tokenizer, cache_dir, text_column, encoding_errors)))
        is not None
        for files in file_lists
    )


def prepare_streaming(
    file_lists: Sequence[Sequence[Path]],
    tokenizer: "PreTrainedTokenizerBase",
    block_size: int,
    *,
    weights: Optional[Sequence[float]] = None,
    names: Optional[Sequence[str]] = None,
    validation_files: Optional[Sequence[Path]] = None,
    mlm: bool = False,
    cache_dir: Optional[str | Path] = None,
    text_column: str = "text",
    encoding_errors: str = "strict",
    seed: int = 42,
    max_positions: Optional[int] = None,
    packing: str = "concat",
    **validation_options: Any,
) -> tuple[StreamingDataset, Any, Dict[str, Any]]:
    """The streamed training set and, from ``validation_files``, a cached validation set (or None):
    :func:`~lmtrain.data.pack.prepare_datasets`'s contract for a stream. Nothing is tokenized up front
    but the validation files."""
    from lmtrain.data.pack import prepare_datasets

    if max_positions is not None and block_size > max_positions:
        raise DataError(
            f"block_size {block_size} is longer than the model's {max_positions} positions; "
            f"pass --block_size {max_positions} or less"
        )
    train = StreamingDataset(
        list(file_lists),
        tokenizer,
        block_size,
        weights=weights,
        names=names,
        mlm=mlm,
        text_column=text_column,
        encoding_errors=encoding_errors,
        seed=seed,
        cache_dir=cache_dir,
        packing=packing,
    )
    eval_ds: Any = None
    eval_info: Dict[str, Any] = {}
    if validation_files:
        validation_options.pop("validation_split_percentage", None)
        eval_ds, _, eval_info = prepare_datasets(
            validation_files,
            tokenizer,
            block_size,
            mlm=mlm,
            validation_split_percentage=0,
            cache_dir=cache_dir,
            text_column=text_column,
            encoding_errors=encoding_errors,
            seed=seed,
            max_positions=max_positions,
            packing=packing,
            **validation_options,
        )
    shards = [len(s) for s in train.shards]
    info: Dict[str, Any] = {
        "streaming": True,
        "packing": packing,
        "sources": list(train.names),
        "shards": shards,
        "input_bytes": sum(s.size for shards_ in train.shards for s in shards_),
        "eval_tokens": eval_info.get("train_tokens", 0),
        "eval_blocks": eval_info.get("train_blocks", 0),
        "cache_dirs": eval_info.get("cache_dirs", []),
        "bytes_per_token": eval_info.get("bytes_per_token"),
    }
    return train, eval_ds, info


def describe_streaming(info: Dict[str, Any], block_size: int) -> str:
    """The CLI's data line for a streamed run."""
    line = (
        f"data: streaming {info['input_bytes'] / 2**20:,.1f} MiB in {sum(info['shards']):,} shards, "
        f"tokenized while training, in blocks of {block_size}"
    )
    if info.get("packing") == "bos_aligned":
        line += " (bos_aligned: each block starts a document; tokens cropped are logged as tokens_dropped)"
    if info["eval_blocks"]:
        line += f"; {info['eval_blocks']:,} validation blocks"
    else:
        line += "; no --validation_file, so no evaluation"
    return line
