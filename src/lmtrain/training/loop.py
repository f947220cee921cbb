"""The training loop, in transformers' event order, as one function over a `Trainer`.

    on_train_begin -> [eval_on_start] -> for each epoch:
        on_epoch_begin -> for each optimizer step:
            on_step_begin -> training_step per micro-batch (on_substep_end between them)
            -> on_pre_optimizer_step -> step -> on_optimizer_step -> on_step_end -> log / evaluate / save
        on_epoch_end -> log / evaluate / save

The flags that decide logging, evaluation and saving are set by `DefaultFlowCallback` (and any other
callback) in on_step_end / on_epoch_end; the loop only acts on them. Every Trainer method it calls
(`training_step`, `log`, `evaluate`, `compute_loss` inside them...) may be overridden by a subclass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List

import torch

from .data import batch_tokens
from .plan import RunPlan
from .signals import StopRequest
from .steps import StepFeed
from .window import LogWindow

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


def run_training(trainer: "Trainer", model: torch.nn.Module, loader: Any, plan: RunPlan, window: LogWindow,
                 feed: StepFeed, stop: StopRequest, begin: bool = True) -> None:
    """Train from the state's data position until max_steps, the last epoch, or a stop flag."""
    state, args = trainer.state, trainer.args
    if begin:
        trainer._fire_event("on_train_begin")
        if args.eval_on_start:
            trainer._evaluate(skip_scheduler=True)
    if state.global_step >= plan.total_steps:
        return  # resumed from the final checkpoint: nothing left to do
    for _epoch in range(state.data_epoch, plan.num_epochs):
        trainer._fire_event("on_epoch_begin")
        for micro_batches in feed.epoch(loader):
            train_step(trainer, model, micro_batches, plan, window, stop)
            if trainer.control.should_epoch_stop or trainer.control.should_training_stop:
                break
        epoch_stopped = trainer.control.should_epoch_stop and not trainer.control.should_training_stop
        if state.batches_in_epoch >= plan.batches_per_epoch or epoch_stopped:
            # the epoch is done (or a callback ended it: transformers' next epoch starts a new pass)
            state.data_epoch, state.batches_in_epoch = state.data_epoch + 1, 0
        if stop.signal is not None:
            break  # SIGTERM/SIGINT: the step's checkpoint is saved; no end-of-epoch evaluation on the way out
        trainer._fire_event("on_epoch_end")
        trainer._maybe_log_save_evaluate(window)
        if trainer.control.should_training_stop:
            break


def train_step(trainer: "Trainer", model: torch.nn.Module, micro_batches: List[Dict[str, Any]], plan: RunPlan,
               window: LogWindow, stop: StopRequest) -> None:
    """One optimizer step: forward/backward every micro-batch, step, then log/evaluate/save as flagged."""
    state = trainer.state
    trainer._fire_event("on_step_begin")
    num_items = trainer._label_tokens(micro_batches, stop)
    trainer.current_gradient_accumulation_steps = len(micro_batches)
    step_loss = torch.zeros((), device=trainer.rt.device)
    last = len(micro_batches) - 1
    for i, batch in enumerate(micro_batches):
        window.tokens += batch_tokens(batch)
        with trainer.rt.no_sync(model, last_micro_batch=i == last):
            loss = trainer.training_step(model, trainer._prepare_inputs(batch), num_items)
            step_loss += window.filtered(loss, step_loss) if window.nan_inf_filter else loss
        if i < last:
            trainer._fire_event("on_substep_end")
            if trainer.control.should_epoch_stop or trainer.control.should_training_stop:
                return  # transformers leaves the step after this micro-batch: no optimizer step, no step end
    grad_norm, skipped, lr = trainer._optimizer_step(model)
    window.add(step_loss, grad_norm, state.global_step + 1, skipped, lr)
    state.global_step += 1
    state.epoch = state.data_epoch + state.batches_in_epoch / max(plan.batches_per_epoch, 1)
    trainer._fire_event("on_step_end")
    if stop.signal is not None:  # SIGTERM/SIGINT: this step is done; save it and leave
        trainer.control.should_save = trainer.control.should_training_stop = True
    empty_every = trainer.args.torch_empty_cache_steps
    if empty_every and state.global_step % empty_every == 0 and torch.cuda.is_available():
        torch.cuda.empty_cache()
    trainer._maybe_log_save_evaluate(window)
