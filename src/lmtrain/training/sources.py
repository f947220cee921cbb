"""Per-source token counts of a mixture run in the logs: ``tokens_<name>`` on every record.

The counts come from the data position (``state.data_epoch``, ``state.batches_in_epoch``) and the
training loader's order, a pure function of (data_seed, epoch): between two logs the callback maps the
positions the loop consumed to their sources. Counting starts from the beginning of the run, so a resumed
run counts what it read before its checkpoint at its first log and logs exactly what an uninterrupted run logs.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.mixture import MixtureDataset
from .callbacks import TrainerCallback

logger = logging.getLogger("lmtrain")

_CHUNK = 1 << 20  # positions mapped at a time (bounded memory on a resume deep into a long epoch)


class SourceTokensCallback(TrainerCallback):
    """Adds ``tokens_<name>`` (input tokens read from each source so far) to every log record.

    Put it before the loggers (:meth:`attach` does) so that log.jsonl, the console and TensorBoard see
    the counts; they are also added to the record in ``state.log_history``. Needs lmtrain's resumable
    sampler (its ``order()``); with another loader it logs nothing and warns once.
    """

    def __init__(self, dataset: MixtureDataset, tokens_per_item: Optional[Sequence[int]] = None) -> None:
        per_item = list(tokens_per_item) if tokens_per_item is not None else dataset.tokens_per_item
        if any(t is None for t in per_item):
            raise ValueError("tokens per item are unknown for some source; pass tokens_per_item")
        self.dataset = dataset
        self.tokens_per_item = np.asarray(per_item, dtype=np.int64)
        self.keys = log_keys(dataset.names)
        """The log key of each source: tokens_<name>."""
        self.blocks = np.zeros(len(dataset.names), dtype=np.int64)
        """Blocks read from each source up to `position`."""
        self.position: Tuple[int, int] = (0, 0)
        """(epoch, samples of it) counted so far (samples, not micro-batches, whose size may change)."""
        self._epoch_end: Dict[int, int] = {}  # samples an epoch really had (a callback may end one early)
        self._order: Optional[Tuple[int, np.ndarray]] = None
        self._warned = False

    def attach(self, trainer: Any) -> "SourceTokensCallback":
        """Register as the trainer's first callback (before the loggers) and return self."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    def tokens(self) -> Dict[str, int]:
        """``{"tokens_<name>": input tokens}`` at the counted position."""
        return {key: int(t) for key, t in zip(self.keys, self.blocks * self.tokens_per_item)}

    # ---- events --------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        # from the start: a resumed run counts what it read before its checkpoint at its first log
        self.blocks[:] = 0
        self.position, self._epoch_end, self._order = (0, 0), {}, None

    def on_step_end(self, args, state, control, train_dataloader=None, **kwargs):
        sampler = getattr(train_dataloader, "batch_sampler", None)
        if hasattr(sampler, "order"):
            self._epoch_end[state.data_epoch] = state.batches_in_epoch * _per_step(sampler)

    def on_log(self, args, state, control, logs=None, train_dataloader=None, **kwargs):
        if logs is None or not self._advance(state, train_dataloader):
            return
        extra = self.tokens()
        logs.update(extra)
        # the Trainer appended this record to the history just before on_log
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)

    # ---- counting --------------------------------------------------------------------------------

    def _sampler(self, loader: Any) -> Any:
        sampler = getattr(loader, "batch_sampler", None)
        if sampler is not None and hasattr(sampler, "order") and sampler.num_samples == len(self.dataset):
            return sampler
        if not self._warned:
            logger.warning("tokens per source need lmtrain's resumable sampler over the mixture; not logging them")
            self._warned = True
        return None

    def _advance(self, state: Any, loader: Any) -> bool:
        """Count the blocks consumed from `self.position` up to the state's data position."""
        sampler = self._sampler(loader)
        if sampler is None:
            return False
        whole = len(sampler) * _per_step(sampler)  # samples of an epoch that ran to its end
        target = (int(state.data_epoch), int(state.batches_in_epoch) * _per_step(sampler))
        if target < self.position:  # the position went back (a new run on the same callback): recount
            self.blocks[:] = 0
            self.position = (0, 0)
        epoch, start = self.position
        for e in range(epoch, target[0] + 1):
            end = target[1] if e == target[0] else self._epoch_end.get(e, whole)
            first = start if e == epoch else 0
            if end > first:
                self._count(sampler, e, first, end)
        self.position = target
        self._epoch_end = {e: n for e, n in self._epoch_end.items() if e >= target[0]}
        return True

    def _count(self, sampler: Any, epoch: int, lo: int, hi: int) -> None:
        """Add the sources of samples [lo, hi) of `epoch`, over all ranks (ResumableBatchSampler's layout:
        global batch b is order[b*B*W : (b+1)*B*W], wrapping under torchrun, short on one process)."""
        n = int(sampler.num_samples)
        if sampler.world_size == 1:
            hi = min(hi, n)
        while lo < hi:
            end = min(hi, (lo // n + 1) * n)
            if lo % n == 0 and end - lo == n:  # a whole pass over the order, a permutation of every position
                self.blocks += self.dataset.schedule.counts(n)
            else:
                order = self._epoch_order(sampler, epoch)
                for a in range(lo, end, _CHUNK):
                    i = np.arange(a, min(a + _CHUNK, end), dtype=np.int64)
                    self.blocks += self.dataset.source_counts(order[i % n])
            lo = end

    def _epoch_order(self, sampler: Any, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            view = copy.copy(sampler)  # the live sampler's epoch belongs to the loop
            view.epoch = epoch
            self._order = (epoch, np.asarray(view.order(), dtype=np.int64))
        return self._order[1]


def _per_step(sampler: Any) -> int:
    """Samples per micro-batch over all ranks."""
    return int(sampler.batch_size) * int(getattr(sampler, "world_size", 1))


def log_keys(names: Sequence[str]) -> List[str]:
    """``tokens_<name>`` for each source, with characters metric stores refuse (MLflow takes letters, digits,
    ``_ - . / :`` and spaces; a glob's ``*`` is not one of them) written as ``_``, made unique."""
    keys: List[str] = []
    for name in names:
        base = "tokens_" + re.sub(r"[^A-Za-z0-9_\-./: ]", "_", name)
        key, k = base, 2
        while key in keys:
            key, k = f"{base}_{k}", k + 1
        keys.append(key)
    return keys


class StreamTokensCallback(TrainerCallback):
    """``tokens_<name>`` on every log record of a weighted :class:`~lmtrain.data.streaming.StreamingDataset`
    (and ``tokens_dropped`` with bos_aligned packing): its position holds each reader's count of blocks per
    source and of tokens cropped, so the counts are exact after a resume too."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.keys = log_keys(dataset.names)

    def attach(self, trainer: Any) -> "StreamTokensCallback":
        """Register as the trainer's first callback (before the loggers) and return self."""
        trainer.callback_handler.callbacks.insert(0, self)
        return self

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        extra = dict(zip(self.keys, self.dataset.tokens_per_source().values())) if len(self.keys) > 1 else {}
        if self.dataset.packing == "bos_aligned":
            extra["tokens_dropped"] = self.dataset.tokens_dropped()
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)
