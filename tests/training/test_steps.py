"""StepFeed: micro-batches grouped into optimizer steps, the data position in the state, and the rewind
after an out-of-memory error (auto_find_batch_size)."""

from __future__ import annotations

import pytest
import torch

from lmtrain.data.loader import make_loader
from lmtrain.errors import LmtrainError
from lmtrain.training.state import TrainState
from lmtrain.training.steps import StepFeed


class Counting:
    """A plain (not resumable) loader over 0..n-1 that counts the batches it hands out."""

    def __init__(self, n: int) -> None:
        self.n, self.read = n, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i in range(self.n):
            self.read += 1
            yield i


class SpySampler:
    def __init__(self) -> None:
        self.calls = []
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.calls.append((epoch, start))
        self.start = start


class ResumableLoader:
    """A loader whose batch sampler jumps: iterating yields only the batches from the set position."""

    def __init__(self, n: int) -> None:
        self.n, self.batch_sampler, self.read = n, SpySampler(), 0

    def __iter__(self):
        for i in range(self.batch_sampler.start, self.n):
            self.read += 1
            yield i


def index_loader(n: int, batch_size: int, seed: int = 3):
    """The Trainer's resumable, shuffled loader over rows that carry their own index."""
    rows = [{"idx": i} for i in range(n)]
    return make_loader(
        rows,
        lambda feats: {"idx": torch.tensor([f["idx"] for f in feats])},
        batch_size,
        shuffle=True,
        data_seed=seed,
        drop_last=False,
        num_workers=0,
        pin_memory=False,
    )


def ids(groups):
    """Sample indices of each step, flattened over its micro-batches."""
    return [[i for b in g for i in b["idx"].tolist()] for g in groups]


# ---- grouping -------------------------------------------------------------------------------------


def test_groups_micro_batches_and_yields_a_short_tail():
    state = TrainState()
    feed = StepFeed(state, grad_accum=3)
    seen = []
    for group in feed.epoch(Counting(7)):
        seen.append((list(group), state.batches_in_epoch, feed.step_start))
    # each step is yielded once its batches are consumed; step_start is where that step began
    assert seen == [([0, 1, 2], 3, (0, 0)), ([3, 4, 5], 6, (0, 3)), ([6], 7, (0, 6))]


def test_accumulation_of_one_yields_every_batch_alone():
    state = TrainState(data_epoch=2)
    groups = list(StepFeed(state, 1).epoch(Counting(3)))
    assert groups == [[0], [1], [2]]
    assert (state.data_epoch, state.batches_in_epoch) == (2, 3)


def test_plain_loader_resumes_by_skipping_consumed_batches():
    state = TrainState(data_epoch=1, batches_in_epoch=4)
    loader = Counting(9)
    feed = StepFeed(state, grad_accum=3)
    groups = list(feed.epoch(loader))
    assert groups == [[4, 5, 6], [7, 8]]
    assert loader.read == 9  # the four consumed batches were read again and dropped
    assert state.batches_in_epoch == 9


def test_resumable_loader_jumps_without_replaying():
    state = TrainState(data_epoch=5, batches_in_epoch=4)
    loader = ResumableLoader(8)
    groups = list(StepFeed(state, grad_accum=2).epoch(loader))
    assert loader.batch_sampler.calls == [(5, 4)]
    assert groups == [[4, 5], [6, 7]]
    assert loader.read == 4


def test_resuming_the_real_sampler_continues_the_same_shuffled_order():
    full_state = TrainState(data_epoch=1)
    full = ids(StepFeed(full_state, 2).epoch(index_loader(11, 2)))
    assert sorted(i for step in full for i in step) == list(range(11))  # one permutation of the set
    assert full != [list(range(k, min(k + 4, 11))) for k in range(0, 11, 4)]  # and shuffled
    resumed_state = TrainState(data_epoch=1, batches_in_epoch=2)  # saved after the first step
    resumed = ids(StepFeed(resumed_state, 2).epoch(index_loader(11, 2)))
    assert resumed == full[1:]
    assert resumed_state.batches_in_epoch == full_state.batches_in_epoch == 6


def test_an_empty_loader_is_an_error():
    with pytest.raises(LmtrainError, match="yielded no batches"):
        list(StepFeed(TrainState(), 2).epoch([]))


def test_an_epoch_already_read_to_its_end_yields_nothing():
    state = TrainState(batches_in_epoch=3)  # resumed exactly at the end of an epoch
    assert list(StepFeed(state, 2).epoch(Counting(3))) == []


# ---- out of memory: halve the micro-batch, rewind to the failed step ------------------------------


def test_halve_batch_doubles_accumulation_and_rewinds_to_the_failed_step():
    state = TrainState(data_epoch=2)
    feed = StepFeed(state, grad_accum=2)
    steps = feed.epoch(Counting(10))
    next(steps)  # step 1: batches 0, 1
    next(steps)  # step 2: batches 2, 3 -- say it runs out of memory
    assert feed.halve_batch(micro_batch=8)
    assert feed.grad_accum == 4
    # batches 0..1 of size 8 hold the samples of batches 0..3 of size 4
    assert (state.data_epoch, state.batches_in_epoch) == (2, 4)


def test_halve_batch_of_one_gives_up_and_changes_nothing():
    state = TrainState(data_epoch=1, batches_in_epoch=6)
    feed = StepFeed(state, grad_accum=2)
    assert not feed.halve_batch(micro_batch=1)
    assert feed.grad_accum == 2
    assert (state.data_epoch, state.batches_in_epoch) == (1, 6)


def _retry_after_oom(n: int, batch: int, ga: int, failed_step: int):
    """Run steps with `batch` until `failed_step` fails, halve, and read the rest of the epoch again."""
    state = TrainState(data_epoch=0)
    feed = StepFeed(state, ga)
    before = []
    for k, group in enumerate(feed.epoch(index_loader(n, batch)), start=1):
        if k == failed_step:
            break
        before.append(group)
    full = ids(StepFeed(TrainState(), ga).epoch(index_loader(n, batch)))
    assert feed.halve_batch(micro_batch=batch)
    after = ids(feed.epoch(index_loader(n, batch // 2)))
    return ids(before), after, full, feed


def test_after_halving_each_step_reads_the_same_samples_as_before():
    before, after, full, feed = _retry_after_oom(n=24, batch=4, ga=2, failed_step=2)
    assert feed.grad_accum == 4
    assert before == full[:1]
    assert after == full[1:]  # the failed step is retried with the same samples, then the rest of the epoch


def test_after_halving_an_odd_micro_batch_no_sample_is_read_twice():
    before, after, full, feed = _retry_after_oom(n=12, batch=3, ga=1, failed_step=3)
    trained = [i for step in before for i in step]
    retried = [i for step in after for i in step]
    assert not set(trained) & set(retried)
    assert sorted(trained + retried) == list(range(12))
