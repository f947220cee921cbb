"""The running figures of one logging window, kept on the device until a record is logged.

Nothing here reads a device value except `read()` and `store()`, which run on logging and saving
steps only: steady-state steps never wait for the device.
"""

from __future__ import annotations

import time
from typing import Any, Dict

import torch

from .state import TrainState


class LogWindow:
    """Loss sum, grad norm, NaN flags and token counts since the last logged record."""

    def __init__(self, device: torch.device, state: TrainState, rank: int = 0) -> None:
        # the saved sums are over all ranks; one rank carries them so that read()'s all-reduce adds up
        own = rank == 0
        self.loss_sum = torch.tensor(float(state.window_loss_sum) if own else 0.0, device=device)
        self.all_loss_sum = torch.tensor(float(state.train_loss_sum) if own else 0.0, device=device)
        self.skipped = torch.tensor(0, device=device)
        self.skipped_before = state.nonfinite_steps
        self.first_bad = torch.tensor(-1, device=device)
        self.grad_norm = torch.zeros((), device=device)
        self.steps = state.window_steps
        self.tokens = state.window_tokens
        self.total_tokens = 0
        self.first_step = state.global_step + 1
        self.started = time.perf_counter()
        self.lr = 0.0
        self.nan_inf_filter = False

    def add(
        self, step_loss: torch.Tensor, grad_norm: torch.Tensor, step: int, skipped: torch.Tensor, lr: float = 0.0
    ) -> None:
        """Account one optimizer step; `skipped` is a device bool (update not applied: NaN/inf); `lr` is
        the learning rate the step used (what transformers logs)."""
        bad = ~torch.isfinite(step_loss) | ~torch.isfinite(grad_norm)
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
        self.lr = lr
        counted = torch.where(skipped, torch.zeros_like(step_loss), step_loss)  # a skipped step is not averaged in
        self.loss_sum += counted
        self.all_loss_sum += counted
        self.skipped += skipped.to(self.skipped.dtype)
        self.grad_norm = grad_norm
        self.steps += 1

    def filtered(self, loss: torch.Tensor, step_so_far: torch.Tensor) -> torch.Tensor:
        """logging_nan_inf_filter, per micro-batch as transformers does it: a non-finite loss counts as the
        window's sum so far (this step's earlier micro-batches included) over its steps + 1. No sync."""
        mean = (self.loss_sum + step_so_far) / (self.steps + 1)
        return torch.where(torch.isfinite(loss), loss, mean.to(loss.dtype))

    def bad_step(self) -> int:
        """First step in this run whose loss or gradients were not finite (-1: none). Synchronises."""
        return int(self.first_bad)

    def read(self, rt: Any) -> Dict[str, Any]:
        loss = self.loss_sum.clone()
        if rt.distributed:  # each rank holds its share of the global token-weighted loss
            rt.all_reduce_sum(loss)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        tokens = rt.sum_int(self.tokens)
        skipped = int(self.skipped)
        record = {
            "loss": float(loss) / max(self.steps - skipped, 1),
            "grad_norm": float(self.grad_norm),
            "tokens_per_second": round(tokens / elapsed, 1),
            "tokens": tokens,
        }
        if skipped or self.skipped_before:
            record["skipped_steps"] = self.skipped_before + skipped
        return record

    def reset(self, state: TrainState) -> None:
        self.total_tokens += self.tokens
        self.skipped_before += int(self.skipped)
        self.skipped.zero_()
        self.loss_sum.zero_()
        self.steps = 0
        self.tokens = 0
        self.started = time.perf_counter()
        self.store(state, rt=None)

    def store(self, state: TrainState, rt: Any = None) -> None:
        """Copy the accumulators into the state, so a checkpoint carries the unfinished window."""
        loss, total = self.loss_sum.clone(), self.all_loss_sum.clone()
        if rt is not None and rt.distributed:
            rt.all_reduce_sum(loss)
            rt.all_reduce_sum(total)
        state.window_loss_sum = float(loss)
        state.window_steps = self.steps - int(self.skipped)  # a resumed window averages over these alone
        state.window_tokens = self.tokens
        state.train_loss_sum = float(total)
        state.nonfinite_steps = self.skipped_before + int(self.skipped)

    def total_loss(self, rt: Any) -> float:
        total = self.all_loss_sum.clone()
        if rt.distributed:
            rt.all_reduce_sum(total)
        return float(total)
