"""Micro-batches grouped into optimizer steps, read from (and advancing) the run's data position."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional

import torch

from ..data.streaming import stream_of
from ..errors import LmtrainError
from .state import TrainState


class StepFeed:
    """Yields the micro-batches of each optimizer step of an epoch.

    The position lives in `state` (data_epoch, batches_in_epoch), so a checkpoint taken between two
    steps resumes at the next batch with an O(1) jump of the resumable sampler.
    """

    def __init__(self, state: TrainState, grad_accum: int) -> None:
        self.state = state
        self.grad_accum = grad_accum
        self.step_start = (state.data_epoch, state.batches_in_epoch)
        self.stream: Any = None  # what keeps a streamed dataset's position (see data.streaming.stream_of)
        self.stream_start: Optional[Dict[str, Any]] = None  # the stream's position at the start of the step

    def epoch(self, loader: Any) -> Iterator[List[Dict[str, Any]]]:
        """The micro-batch groups of the state's current epoch, from its current position on."""
        state, ga = self.state, self.grad_accum
        sampler: Any = getattr(loader, "batch_sampler", None)  # None (or without set_position): not resumable
        stream = self.stream = stream_of(loader)  # a stream resumes from its dataset's position: no skipping
        resumable = hasattr(sampler, "set_position") or stream is not None
        skip = state.batches_in_epoch
        if hasattr(sampler, "set_position"):
            sampler.set_position(state.data_epoch, skip)  # O(1) jump: no replay of consumed batches
        it = iter(loader)
        if not resumable:
            for _ in range(skip):
                next(it, None)
        group: List[Dict[str, Any]] = []
        self.step_start = (state.data_epoch, state.batches_in_epoch)
        self.stream_start = stream.state_dict() if stream is not None else None
        for batch in it:
            if stream is not None:
                stream.take_position(batch)
            group.append(batch)
            state.batches_in_epoch += 1
            if len(group) == ga:
                yield group
                group = []
                self.step_start = (state.data_epoch, state.batches_in_epoch)
                self.stream_start = stream.state_dict() if stream is not None else None
        if group:  # the epoch's tail: a shorter step, still weighted by its own token count
            yield group
        if state.batches_in_epoch == 0:
            raise LmtrainError("the training dataloader yielded no batches; the dataset is empty.")

    def halve_batch(self, micro_batch: int) -> int:
        """auto_find_batch_size, after an out-of-memory error at micro-batch size `micro_batch`: the smaller
        micro-batch to retry with (0: it cannot shrink). It is split by its smallest prime factor f (a
        halving when even), the accumulation grows f times so the effective batch stays, and the position
        rewinds to the start of the failed step. The caller keeps the new size (the user's args stay)."""
        factor = next((f for f in range(2, micro_batch + 1) if micro_batch % f == 0), 0)
        if not factor:
            return 0
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.grad_accum *= factor
        epoch, consumed = self.step_start
        if self.stream_start is not None and self.stream is not None:
            self.stream.load_state_dict(self.stream_start)  # a stream rewinds to its position too
        # the order is one permutation per epoch: old micro-batch b holds the samples of new ones fb .. fb+f-1
        self.state.data_epoch, self.state.batches_in_epoch = epoch, consumed * factor
        return micro_batch // factor
