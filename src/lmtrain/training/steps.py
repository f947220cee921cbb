"""Micro-batches grouped into optimizer steps, read from (and advancing) the run's data position."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch

from ..errors import LmtrainError
from .plan import RunPlan
from .state import TrainState


class StepFeed:
    """Yields (is the epoch's last step, the micro-batches of one optimizer step).

    The position lives in `state` (data_epoch, batches_in_epoch), so a checkpoint taken between two
    steps resumes at the next batch with an O(1) jump of the resumable sampler.
    """

    def __init__(self, state: TrainState, grad_accum: int, fire: Callable[[str], Any],
                 stop: Callable[[], bool]) -> None:
        self.state = state
        self.grad_accum = grad_accum
        self.fire = fire
        self.stop = stop
        self.step_start = (state.data_epoch, state.batches_in_epoch)

    def __call__(self, loader: Any, plan: RunPlan) -> Iterator[Tuple[bool, List[Dict[str, Any]]]]:
        state, ga = self.state, self.grad_accum
        sampler = getattr(loader, "batch_sampler", None)
        resumable = hasattr(sampler, "set_position")
        while True:
            epoch, skip = state.data_epoch, state.batches_in_epoch
            if resumable:
                sampler.set_position(epoch, skip)  # O(1) jump: no replay of consumed batches
            if skip == 0:
                self.fire("on_epoch_begin")
            it = iter(loader)
            if not resumable:
                for _ in range(skip):
                    next(it, None)
            group: List[Dict[str, Any]] = []
            self.step_start = (state.data_epoch, state.batches_in_epoch)
            for batch in it:
                group.append(batch)
                state.batches_in_epoch += 1
                if len(group) == ga:
                    yield state.batches_in_epoch >= plan.batches_per_epoch, group
                    group = []
                    self.step_start = (state.data_epoch, state.batches_in_epoch)
                    if self.stop():
                        return
            if group:  # the epoch's tail: a shorter step, still weighted by its own token count
                yield True, group
            if state.batches_in_epoch == 0:
                raise LmtrainError("the training dataloader yielded no batches; the dataset is empty.")
            state.data_epoch += 1
            state.batches_in_epoch = 0
            self.fire("on_epoch_end")
            if self.stop():
                return

    def halve_batch(self, args: Any) -> bool:
        """auto_find_batch_size: after an out-of-memory error, halve the micro-batch and double the
        accumulation (the effective batch stays), and rewind to the start of the failed step."""
        if not args.auto_find_batch_size or args.per_device_train_batch_size < 2:
            return False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        args.per_device_train_batch_size //= 2
        args.gradient_accumulation_steps *= 2
        self.grad_accum = args.gradient_accumulation_steps
        epoch, consumed = self.step_start
        # the order is one permutation per epoch: old micro-batch b holds the samples of new ones 2b, 2b+1
        self.state.data_epoch, self.state.batches_in_epoch = epoch, consumed * 2
        return True
