"""LogWindow: the running loss, grad norm, NaN flags and token counts of one logging window."""

from __future__ import annotations

import math

import pytest
import torch

from lmtrain.distributed import Runtime
from lmtrain.training import window as window_module
from lmtrain.training.state import TrainState
from lmtrain.training.window import LogWindow

CPU = torch.device("cpu")
ONE = Runtime(device=CPU)
NO = torch.tensor(False)
YES = torch.tensor(True)


def t(x: float) -> torch.Tensor:
    return torch.tensor(float(x))


class Clock:
    """A stand-in for the time module: perf_counter returns what the test sets."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


class TwoRanks:
    """A runtime as rank 0 of two sees it, the other rank holding `other_loss` and `other_tokens`."""

    distributed = True

    def __init__(self, other_loss: float, other_tokens: int) -> None:
        self.other_loss, self.other_tokens = other_loss, other_tokens

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        value += self.other_loss
        return value

    def sum_int(self, value: int) -> int:
        return value + self.other_tokens


def steps(window: LogWindow, losses, first_step: int = 1, norms=None) -> None:
    for i, loss in enumerate(losses):
        norm = t(norms[i] if norms else 1.0)
        window.add(t(loss), norm, first_step + i, NO, lr=1e-3 * (i + 1))


def test_read_averages_step_losses_and_keeps_the_last_grad_norm_and_lr():
    window = LogWindow(CPU, TrainState())
    steps(window, [2.0, 4.0, 9.0], norms=[0.5, 0.25, 3.0])
    window.tokens = 96
    record = window.read(ONE)
    assert record["loss"] == pytest.approx(5.0)
    assert record["grad_norm"] == pytest.approx(3.0)
    assert record["tokens"] == 96
    assert "skipped_steps" not in record
    assert window.lr == pytest.approx(3e-3)


def test_tokens_per_second_is_tokens_over_the_window_time(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(window_module, "time", clock)
    window = LogWindow(CPU, TrainState())
    steps(window, [1.0])
    window.tokens = 1000
    clock.now += 4.0
    assert window.read(ONE)["tokens_per_second"] == 250.0
    window.reset(TrainState())
    window.tokens = 30
    clock.now += 0.5  # the clock restarts at reset
    assert window.read(ONE)["tokens_per_second"] == 60.0


def test_a_skipped_step_is_left_out_of_the_mean_and_counted():
    window = LogWindow(CPU, TrainState(nonfinite_steps=2))
    window.add(t(3.0), t(1.0), 1, NO)
    window.add(t(float("nan")), t(1.0), 2, YES)
    window.add(t(5.0), t(1.0), 3, NO)
    record = window.read(ONE)
    assert record["loss"] == pytest.approx(4.0)  # (3 + 5) / 2 steps that count
    assert record["skipped_steps"] == 3  # two before this run, one here
    assert window.total_loss(ONE) == pytest.approx(8.0)


def test_bad_step_is_the_first_non_finite_loss_or_gradient():
    window = LogWindow(CPU, TrainState())
    steps(window, [1.0, 2.0], first_step=1)
    assert window.bad_step() == -1
    window.add(t(1.0), t(float("inf")), 3, NO)  # finite loss, infinite gradient norm
    window.add(t(float("nan")), t(1.0), 4, NO)
    assert window.bad_step() == 3
    window.reset(TrainState())
    assert window.bad_step() == 3  # stays for the run, not for the window


def test_filtered_replaces_a_non_finite_micro_batch_loss_by_the_running_mean():
    window = LogWindow(CPU, TrainState())
    steps(window, [2.0, 4.0])  # window sum 6 over 2 steps
    so_far = t(0.5)  # this step's earlier micro-batches
    assert float(window.filtered(t(float("nan")), so_far)) == pytest.approx((6.0 + 0.5) / 3)
    assert float(window.filtered(t(float("-inf")), so_far)) == pytest.approx((6.0 + 0.5) / 3)
    assert float(window.filtered(t(1.25), so_far)) == 1.25


def test_filtered_keeps_the_loss_dtype():
    window = LogWindow(CPU, TrainState())
    out = window.filtered(torch.tensor(float("nan"), dtype=torch.bfloat16), t(0.0))
    assert out.dtype == torch.bfloat16 and float(out) == 0.0


def test_reset_starts_a_new_window_and_keeps_run_totals():
    state = TrainState()
    window = LogWindow(CPU, state)
    steps(window, [1.0, 3.0])
    window.tokens = 40
    window.add(t(float("nan")), t(1.0), 3, YES)
    window.reset(state)
    assert (window.steps, window.tokens, window.total_tokens) == (0, 0, 40)
    assert float(window.loss_sum) == 0.0 and int(window.skipped) == 0
    assert (state.window_loss_sum, state.window_steps, state.window_tokens) == (0.0, 0, 0)
    assert state.train_loss_sum == pytest.approx(4.0)
    assert state.nonfinite_steps == 1
    steps(window, [6.0], first_step=4)
    window.tokens = 12
    record = window.read(ONE)
    assert record["loss"] == pytest.approx(6.0)
    assert record["skipped_steps"] == 1
    assert window.total_loss(ONE) == pytest.approx(10.0)


def test_a_window_stored_in_the_state_continues_after_resume():
    """Checkpoint in the middle of a window: the resumed run logs what an uninterrupted one logs."""
    whole = LogWindow(CPU, TrainState())
    steps(whole, [1.0, 2.0, 4.0, 8.0, 16.0])
    whole.tokens = 50

    state = TrainState(global_step=3)
    first = LogWindow(CPU, state)
    steps(first, [1.0, 2.0, 4.0])
    first.tokens = 30
    first.store(state)
    assert (state.window_loss_sum, state.window_steps, state.window_tokens) == (7.0, 3, 30)

    second = LogWindow(CPU, state)  # a new process, built from the saved state
    assert second.first_step == 4
    steps(second, [8.0, 16.0], first_step=4)
    second.tokens += 20
    assert second.read(ONE)["loss"] == pytest.approx(whole.read(ONE)["loss"]) == pytest.approx(31.0 / 5)
    assert second.read(ONE)["tokens"] == 50
    assert second.total_loss(ONE) == pytest.approx(31.0)


def test_other_ranks_start_from_zero_so_the_all_reduce_adds_up():
    state = TrainState(window_loss_sum=7.0, train_loss_sum=20.0, window_steps=3)
    rank1 = LogWindow(CPU, state, rank=1)
    assert float(rank1.loss_sum) == 0.0 and float(rank1.all_loss_sum) == 0.0
    assert rank1.steps == 3  # step counts are not summed over ranks: every rank keeps them
    rank0 = LogWindow(CPU, state, rank=0)
    assert float(rank0.loss_sum) == 7.0 and float(rank0.all_loss_sum) == 20.0


def test_read_sums_over_ranks_without_touching_the_local_sums():
    window = LogWindow(CPU, TrainState())
    steps(window, [1.0, 3.0])  # this rank's share of the token-weighted step losses
    window.tokens = 10
    rt = TwoRanks(other_loss=2.0, other_tokens=14)
    record = window.read(rt)
    assert record["loss"] == pytest.approx((4.0 + 2.0) / 2)
    assert record["tokens"] == 24
    assert float(window.loss_sum) == 4.0  # the local accumulator is not the reduced value
    assert window.total_loss(rt) == pytest.approx(6.0)
    assert float(window.all_loss_sum) == 4.0
    state = TrainState()
    window.store(state, rt)
    assert state.window_loss_sum == pytest.approx(6.0) and state.train_loss_sum == pytest.approx(6.0)
    assert float(window.loss_sum) == 4.0


def test_an_empty_window_reads_without_dividing_by_zero():
    record = LogWindow(CPU, TrainState()).read(ONE)
    assert record["loss"] == 0.0 and record["tokens"] == 0
    assert math.isfinite(record["tokens_per_second"])


def test_a_skipped_step_before_a_checkpoint_is_still_left_out_after_resume():
    whole = LogWindow(CPU, TrainState())
    whole.add(t(3.0), t(1.0), 1, NO)
    whole.add(t(float("nan")), t(1.0), 2, YES)
    whole.add(t(5.0), t(1.0), 3, NO)
    assert whole.read(ONE)["loss"] == pytest.approx(4.0)

    state = TrainState(global_step=2)
    first = LogWindow(CPU, state)
    first.add(t(3.0), t(1.0), 1, NO)
    first.add(t(float("nan")), t(1.0), 2, YES)
    first.store(state)  # checkpoint after step 2
    second = LogWindow(CPU, state)
    second.add(t(5.0), t(1.0), 3, NO)
    record = second.read(ONE)
    assert record["skipped_steps"] == 1
    assert record["loss"] == pytest.approx(4.0)
