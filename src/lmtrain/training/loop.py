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

from typing import TYPE_CHECKING, Any, Dict, List, Tuple, Union

import torch

from ..data.loader import batch_tokens
from . import optim
from .loss import count_label_tokens
from .plan import RunPlan
from .signals import StopRequest
from .steps import StepFeed
from .window import LogWindow

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


def run_training(
    trainer: "Trainer",
    model: torch.nn.Module,
    loader: Any,
    plan: RunPlan,
    window: LogWindow,
    feed: StepFeed,
    stop: StopRequest,
    begin: bool = True,
) -> None:
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
        if trainer.interrupted is not None:
            break  # SIGTERM/SIGINT: the step's checkpoint is saved; no end-of-epoch evaluation on the way out
        trainer._fire_event("on_epoch_end")
        trainer._maybe_log_save_evaluate(window)
        if trainer.control.should_training_stop:
            break


def train_step(
    trainer: "Trainer",
    model: torch.nn.Module,
    micro_batches: List[Dict[str, Any]],
    plan: RunPlan,
    window: LogWindow,
    stop: StopRequest,
) -> None:
    """One optimizer step: forward/backward every micro-batch, step, then log/evaluate/save as flagged."""
    state = trainer.state
    trainer._fire_event("on_step_begin")
    num_items = label_tokens(trainer, micro_batches)
    trainer.current_gradient_accumulation_steps = len(micro_batches)
    step_loss = torch.zeros((), device=trainer.rt.device)
    # counted into the window once the step is done: a step that fails (out of memory) leaves no trace
    step_tokens = 0
    last = len(micro_batches) - 1
    for i, batch in enumerate(micro_batches):
        step_tokens += batch_tokens(batch)
        with trainer.rt.no_sync(model, last_micro_batch=i == last):
            # Trainer.training_step (trainer.py) is annotated Optional[int]; under torchrun the count is a tensor
            loss = trainer.training_step(model, trainer._prepare_inputs(batch), num_items)
            step_loss += window.filtered(loss, step_loss) if window.nan_inf_filter else loss
        if i < last:
            trainer._fire_event("on_substep_end")
            if trainer.control.should_epoch_stop or trainer.control.should_training_stop:
                window.tokens += step_tokens  # (transformers counts the input it read)
                return  # transformers leaves the step after this micro-batch: no optimizer step, no step end
    grad_norm, skipped, lr = optimizer_step(trainer, model)
    window.tokens += step_tokens
    window.add(step_loss, grad_norm, state.global_step + 1, skipped, lr)
    state.global_step += 1
    state.epoch = state.data_epoch + state.batches_in_epoch / max(plan.batches_per_epoch, 1)
    trainer._fire_event("on_step_end")
    if stop_requested(trainer, stop):  # SIGTERM/SIGINT: this step is done; save it and leave
        trainer.control.should_save = trainer.control.should_training_stop = True
    empty_every = trainer.args.torch_empty_cache_steps
    if empty_every and state.global_step % empty_every == 0 and torch.cuda.is_available():
        torch.cuda.empty_cache()
    trainer._maybe_log_save_evaluate(window)


def label_tokens(trainer: "Trainer", micro_batches: List[Dict[str, Any]]) -> Union[int, torch.Tensor]:
    """Label tokens of the whole step over all ranks, counted on the host copies of the batches.

    Under torchrun the sum over ranks is a device tensor (the all-reduce is queued, the host does
    not wait); with average_tokens_across_devices=False the count is this rank's own.
    """
    key = trainer.label_names[0]
    local = 0
    for b in micro_batches:
        labels = b.get(key)
        local += 1 if labels is None else count_label_tokens(labels, trainer.shift if labels.dim() > 1 else 0)
    if trainer.rt.distributed and trainer.args.average_tokens_across_devices:
        return trainer.rt.sum_on_device(local)
    return local


def stop_requested(trainer: "Trainer", stop: StopRequest) -> bool:
    """Whether to save and stop after this step on SIGTERM/SIGINT.

    Under torchrun every rank must stop after the same step, so the ranks agree through one
    all-reduce, on steps that log, evaluate or save (they synchronise anyway), not on every step.
    """
    if trainer.rt.distributed:
        control = trainer.control
        due = (
            control.should_log
            or control.should_evaluate
            or control.should_save
            or control.should_training_stop
            or trainer.args.logging_strategy == "no"
        )
        if not due:
            return False
        (stops,) = trainer.rt.sum_ints(int(stop.signal is not None))
        if stops and stop.signal is None:
            stop.signal = "SIGTERM (on another rank)"
    if stop.signal is not None:
        trainer.interrupted = stop.signal
    return trainer.interrupted is not None


def optimizer_step(trainer: "Trainer", model: torch.nn.Module) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """Unscale, clip, step, schedule. Returns (grad norm, skipped) as device tensors (no sync) and the
    learning rate the step used.

    With nan_policy="skip" a step whose gradients are not finite changes nothing: the fused AdamW
    kernels take the flag on the device (`found_inf`, as GradScaler uses them); other optimizers
    read it on the host, which is the one synchronisation that policy costs them.
    """
    scaler, opt = trainer.rt.scaler, trainer.optimizer
    if scaler is not None:
        scaler.unscale_(opt)
    params = [p for p in model.parameters() if p.grad is not None]
    if trainer.args.max_grad_norm and trainer.args.max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, trainer.args.max_grad_norm, foreach=True)
    elif params:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params if p.grad is not None]))
    else:
        norm = torch.zeros((), device=trainer.rt.device)
    skipped = torch.zeros((), dtype=torch.bool, device=trainer.rt.device)
    trainer.control = trainer._fire("on_pre_optimizer_step")
    if scaler is not None:
        scaler.step(opt)  # the scaler skips non-finite steps itself
        scaler.update()
    elif trainer.args.nan_policy == "skip":
        skipped = ~torch.isfinite(norm)
        if opt.defaults.get("fused"):
            opt.found_inf = skipped.float()
            opt.step()
            del opt.found_inf
        elif not bool(skipped):
            opt.step()
    else:
        opt.step()
    trainer.control = trainer._fire("on_optimizer_step")
    lr = optim.current_lr(trainer.lr_scheduler if trainer.lr_scheduler is not None else opt)
    if not optim.is_plateau(trainer.lr_scheduler):  # ReduceLROnPlateau steps after evaluations instead
        trainer.lr_scheduler.step()
    opt.zero_grad(set_to_none=True)
    if hasattr(norm, "full_tensor"):  # FSDP: the norm is a DTensor
        norm = norm.full_tensor()
    return norm.detach(), skipped, lr
