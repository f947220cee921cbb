"""A lane of a stream: which shards it reads, and how it turns them into tokens.

Each source's shards are dealt to the stream's lanes (:func:`assign_shards`); a :class:`LaneReader` reads
its lane's share of one source, a pass at a time in a seeded shard order, encodes the text in groups and
keeps the tokens not yet cut into blocks. Its whole position is the small dict it updates in place
(:func:`new_lane_state`), which is what a checkpoint stores.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from lmtrain.errors import DataError

if TYPE_CHECKING:
    from lmtrain.data.streaming import StreamingDataset

__all__ = ["LaneReader", "assign_shards", "new_lane_state"]

_BUFFER_ROWS = 1000  # bos_aligned: the best-fit buffer holds at most this many rows' worth of tokens
_GROUP_CHARS = 1 << 16  # text encoded per tokenizer call: enough to keep its threads busy, small to carry


def new_lane_state(lane: int, sources: int) -> Dict[str, Any]:
    """The position of a lane that has read nothing: per source (pass, shard, cursor, unit, tokens carried
    over, blocks taken), and the lane's own counts of batches and blocks."""

    def fresh() -> Dict[str, Any]:
        empty = np.empty(0, np.int64)
        # carry: tokens read but not yet in a block (concat); pending, docs, dropped: bos_aligned's document
        # being read, documents waiting in the best-fit buffer, and tokens cropped away so far
        return {"pass": 0, "shard": 0, "cursor": None, "unit": 0, "carry": empty, "blocks": 0, "pending": empty,
                "docs": [], "dropped": 0}  # fmt: skip

    return {"lane": lane, "batches": 0, "blocks": 0, "sources": [fresh() for _ in range(sources)]}


def assign_shards(sizes: Sequence[int], lanes: int) -> List[List[tuple[int, int, int]]]:
    """Deal shards to lanes: for each lane, a list of (shard index, stride, offset).

    With at least as many shards as lanes every shard goes whole to one lane (largest first onto the
    least loaded lane, so lanes carry about the same bytes). With fewer, lanes share shards unit by
    unit: the ``k`` lanes on shard ``s`` take its units ``offset, offset + k, ...``.
    """
    from lmtrain.data.prepare_ranks import balance

    n = len(sizes)
    if n == 0:
        raise ValueError("no shards to assign")
    if n >= lanes:
        return [[(s, 1, 0) for s in part] for part in balance(sizes, lanes)]
    sharing = [sum(1 for lane in range(lanes) if lane % n == s) for s in range(n)]
    return [[(lane % n, sharing[lane % n], lane // n)] for lane in range(lanes)]


class LaneReader:
    """One source as seen by one lane: its shards in a seeded order per pass, encoded into tokens."""

    def __init__(self, stream: "StreamingDataset", source: int, lane: int, lanes: int, state: Dict[str, Any]) -> None:
        self.stream = stream
        self.source = source
        self.lane = lane
        self.shards = stream.shards[source]
        self.mine = assign_shards([s.size for s in self.shards], lanes)[lane]
        self.state = state
        self._units: Optional[Iterator[Any]] = None
        self._writer: Any = None  # the cache writer of the shard being read, if it is written
        self._finished: List[Any] = []  # writers of shards read to the end, closed after their last tokens

    def _order(self, pass_: int) -> List[tuple[int, int, int]]:
        if not self.stream.shuffle or len(self.mine) < 2:
            return self.mine
        rng = np.random.default_rng([self.stream.seed, self.source, self.lane, pass_])
        return [self.mine[i] for i in rng.permutation(len(self.mine))]

    def take(self, n: int) -> np.ndarray:
        """The next block of ``n`` tokens of this source: the next ``n`` tokens of the stream (concat), or a
        best-fit row of whole documents, each starting with BOS (bos_aligned)."""
        st = self.state
        if self.stream.packing == "bos_aligned":
            return self._take_row(n)
        while len(st["carry"]) < n:
            self._read_group()
        out, st["carry"] = st["carry"][:n], st["carry"][n:]
        st["blocks"] += 1
        return out

    def _take_row(self, n: int) -> np.ndarray:
        """bos_aligned: the best-fit buffer is the first DEFAULT_BUFFER documents read and not yet used (more
        when they hold less than a row), as the packer of a token cache keeps it, so the rows are the same;
        it also stops at _BUFFER_ROWS rows' worth of tokens, so that a corpus of a few huge documents is
        not read a thousand documents ahead (their tails are cropped away anyway)."""
        from lmtrain.data.packing import DEFAULT_BUFFER, best_fit_row

        st = self.state
        while True:
            docs = st["docs"]
            size, k = 0, 0
            while k < len(docs) and (k < DEFAULT_BUFFER and size < _BUFFER_ROWS * n or size < n):
                size, k = size + len(docs[k]), k + 1
            if (k >= DEFAULT_BUFFER or size >= _BUFFER_ROWS * n) and size >= n:
                row, left, dropped = best_fit_row(docs[:k], n)
                assert row is not None  # the buffer holds a row's worth
                st["docs"], st["dropped"], st["blocks"] = left + docs[k:], st["dropped"] + dropped, st["blocks"] + 1
                return row
            self._read_group()

    def _next_unit(self) -> tuple[Any, Any]:
        """The next unit of text this lane owns and the cache writer of its shard (or None), moving on to
        the next shard (and pass) as needed."""
        from lmtrain.data.shard_reader import iter_units

        st, s = self.state, self.stream
        empty_shards = 0
        while True:
            order = self._order(st["pass"])
            index, stride, offset = order[st["shard"]]
            shard = self.shards[index]
            if self._units is None:
                self._units = iter_units(
                    shard, s.text_column, s.encoding_errors, split_text=s.split_text, cursor=st["cursor"]
                )
                self._open_writer(shard, stride)
            for unit in self._units:
                mine = st["unit"] % stride == offset
                st["unit"] += 1
                st["cursor"] = unit.cursor
                if mine:
                    return unit, self._writer
            if self._writer is not None:  # closed once the group's tokens are in it
                self._finished.append(self._writer)
                self._writer = None
            self._units = None
            st["shard"], st["cursor"], st["unit"] = st["shard"] + 1, None, 0
            empty_shards += 1
            if st["shard"] == len(order):
                st["pass"], st["shard"] = st["pass"] + 1, 0
            if empty_shards > len(order):
                raise DataError(
                    f"the source {s.names[self.source]} has no text for reader {self.lane} of {s.lanes_total}; "
                    "add text, or use fewer --dataloader_num_workers or ranks"
                )

    def _read_group(self) -> None:
        """Encode the next group of units onto the carried tokens (EOS after each document's last unit)."""
        texts: List[str] = []
        ends: List[bool] = []
        writers: List[Any] = []
        chars = 0
        while chars < _GROUP_CHARS:
            unit, writer = self._next_unit()
            texts.append(unit.text)
            ends.append(unit.doc_end)
            writers.append(writer)
            chars += len(unit.text)
        st, eos = self.state, self.stream.eos_id
        rows = self.stream.packing == "bos_aligned"
        parts = [st["pending"] if rows else st["carry"]]
        for text, ids, end, writer in zip(texts, self.stream.encode(texts), ends, writers):
            arr = np.asarray(ids, dtype=np.int64)
            parts.append(arr)
            if writer is not None:
                writer.add(arr, end, text)
            if end and rows:  # a whole document: into the best-fit buffer, with its BOS (and EOS)
                st["docs"].append(self.stream.document(np.concatenate(parts)))
                parts = []
            elif end and eos is not None:
                parts.append(np.array([eos], dtype=np.int64))
        rest = np.concatenate(parts) if parts else np.empty(0, np.int64)
        st["pending" if rows else "carry"] = rest
        for writer in self._finished:
            writer.close()
            self.stream.shard_written(self.source)
        self._finished.clear()

    # ---- the token cache as a side effect ------------------------------------------------------

    def _open_writer(self, shard: Any, stride: int) -> None:
        s, st = self.stream, self.state
        self._writer = None
        if s.cache_staging is None or stride != 1 or st["pass"] != 0 or st["cursor"] is not None:
            return  # only a shard read whole, once, by its one reader is written
        from lmtrain.data.shard_cache import ShardWriter

        staging = s.cache_staging[self.source]
        if staging is None or (Path(staging) / ShardWriter.file_name(shard)).exists():
            return
        self._writer = ShardWriter(staging, shard, s.token_dtype)

    def abort_writers(self) -> None:
        """The lane stops (end of training, an error): shards not read to the end leave no file."""
        for writer in [self._writer, *self._finished]:
            if writer is not None:
                writer.abort()
        self._writer = None
        self._finished.clear()
