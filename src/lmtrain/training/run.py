"""`Trainer.train()`: set the run up, hand over to the loop, finish; and what the loop's control flags
trigger between steps (log, evaluate, save).

Functions over a `Trainer`, so that the facade stays thin while the Trainer methods transformers users
override (`_maybe_log_save_evaluate`, `_evaluate`, `_save_checkpoint`, `evaluate`, `log`...) are still
the ones called.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, NamedTuple, Optional

import torch

from ..data.streaming import stream_of
from ..distributed import full_state_dicts, load_full_state_dicts, shard_model, wrap_model
from ..errors import ConfigError, TrainingError
from . import checkpoint as ckpt
from . import optim
from .callbacks import callback_states, restore_callback_states
from .extras import activate_neftune, memory_tracker
from .flops import mfu_scale
from .loop import run_training
from .plan import RunPlan, describe_run, set_seed
from .signals import StopRequest
from .state import TrainState
from .steps import StepFeed
from .window import LogWindow

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

# TrainState fields that describe this run (its plan and process roles), not the saved progress
_RUN_FIELDS = (
    "max_steps",
    "num_train_epochs",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "train_batch_size",
    "is_world_process_zero",
    "is_local_process_zero",
    "is_hyper_param_search",
    "trial_name",
    "trial_params",
)


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: Dict[str, float]


def train(
    trainer: "Trainer", resume_from_checkpoint: Any = None, trial: Any = None, ignore_keys_for_eval: Any = None
) -> TrainOutput:
    """Plan, restore, train (halving the micro-batch on out-of-memory with auto_find_batch_size), finish."""
    tracker = memory_tracker(trainer.args)
    trainer.is_in_train, trainer.interrupted = True, None
    trainer._ignore_keys_for_eval = ignore_keys_for_eval
    _fresh_model_for_run(trainer, trial)
    args = trainer.args  # (after a trial replaced them)
    trainer.checkpointer = ckpt.Checkpointer(args, trainer.rt)
    trainer._train_batch_size = args.per_device_train_batch_size
    trainer._gradient_accumulation_steps = args.gradient_accumulation_steps
    resume = resolve_resume(trainer, resume_from_checkpoint)
    loader = trainer.get_train_dataloader()
    trainer._stream = stream_of(loader)
    plan = make_plan(trainer, loader)
    if args.fsdp and trainer.rt.distributed and not trainer.rt.fsdp:
        shard_model(trainer.model, trainer.rt)  # before the optimizer: it must hold the sharded parameters
    elif args.fsdp and not trainer.rt.distributed:
        trainer.rt.notes.append("fsdp (one process: run under torchrun to shard)")
    trainer.create_optimizer_and_scheduler(plan.total_steps)
    trainer.state = new_state(trainer, plan, trial)
    if resume is not None:
        restore(trainer, resume, plan)
    if trainer.rt.is_main:
        print(describe_run(plan, args, trainer.model, trainer.rt, resume, trainer.ignored_kwargs), flush=True)
    model = trainer.model_wrapped = wrap_model(trainer.model, trainer.rt, args)
    for name in ("model", "optimizer", "lr_scheduler"):
        setattr(trainer.callback_handler, name, getattr(trainer, name))
    trainer.callback_handler.train_dataloader = loader
    window = LogWindow(trainer.rt.device, trainer.state, trainer.rt.rank)
    window.nan_inf_filter = args.logging_nan_inf_filter and args.nan_policy == "ignore"
    trainer._last_logged_step = trainer.state.global_step
    trainer._mfu_scale = mfu_scale(trainer.model, plan.seq_len, trainer.rt)
    feed = StepFeed(trainer.state, plan.grad_accum)
    neftune = activate_neftune(trainer.model, args.neftune_noise_alpha)
    start = time.perf_counter()
    try:
        with StopRequest() as stop:
            begin = True
            while True:
                try:
                    run_training(trainer, model, loader, plan, window, feed, stop, begin=begin)
                    break
                except torch.cuda.OutOfMemoryError:
                    trainer.optimizer.zero_grad(set_to_none=True)
                    smaller = feed.halve_batch(trainer._train_batch_size) if args.auto_find_batch_size else 0
                    if not smaller:
                        raise
                    _smaller_batch(trainer, feed, smaller)
                    begin = False
                    loader = trainer.callback_handler.train_dataloader = trainer.get_train_dataloader()
                    trainer._stream = stream_of(loader)
                    plan = dataclasses.replace(make_plan(trainer, loader), total_steps=plan.total_steps)
    finally:
        if neftune is not None:
            neftune.remove()
    return finish_training(trainer, plan, window, time.perf_counter() - start, tracker)


def _fresh_model_for_run(trainer: "Trainer", trial: Any) -> None:
    """transformers re-creates the model (and its optimizer) for every run that has a model_init."""
    from .hpsearch import apply_trial

    if trainer.model_init is not None:
        set_seed(trainer.args.seed, deterministic=trainer.args.full_determinism)
        apply_trial(trainer, trial)
        trainer._set_model(trainer.call_model_init(trial))
        trainer.optimizer, trainer.lr_scheduler = None, None
    elif trial is not None:
        apply_trial(trainer, trial)
    if trainer._created_lr_scheduler:  # a second train(): a new schedule over the new run's steps
        trainer.lr_scheduler, trainer._created_lr_scheduler = None, False


def _smaller_batch(trainer: "Trainer", feed: StepFeed, micro_batch: int) -> None:
    """After an out-of-memory step: a smaller micro-batch, more accumulation (the user's args stay)."""
    trainer._train_batch_size = micro_batch
    trainer._gradient_accumulation_steps = feed.grad_accum
    if trainer.rt.is_main:
        print(
            f"out of memory: per_device_train_batch_size is now {trainer._train_batch_size} with "
            f"gradient_accumulation_steps {feed.grad_accum} (same effective batch); retrying step "
            f"{trainer.state.global_step + 1}",
            flush=True,
        )


def make_plan(trainer: "Trainer", loader: Any) -> RunPlan:
    return RunPlan.make(
        trainer.args,
        loader,
        trainer.train_dataset,
        trainer.rt.world_size,
        micro_batch=trainer._train_batch_size,
        grad_accum=trainer._gradient_accumulation_steps,
    )


def resolve_resume(trainer: "Trainer", resume: Any) -> Optional[str]:
    """The checkpoint to resume from; a fresh run into a folder with checkpoints warns (library) or
    refuses (CLI), naming the flags that continue or replace them."""
    args = trainer.args
    if resume is False:
        resume = None
    existing = trainer.checkpointer.list()
    fresh = resume is None and not args.resume_from_checkpoint and existing and not args.overwrite_output_dir
    if fresh and trainer.refuse_existing_checkpoints:
        raise ConfigError(
            f"{args.output_dir} already holds checkpoints (latest {os.path.basename(existing[-1])}); pass "
            f"--resume to continue it, or --overwrite_output_dir to start over."
        )
    if fresh and trainer.rt.is_main:
        print(
            f"warning: {args.output_dir} already holds {len(existing)} checkpoint(s); training from scratch "
            f"as transformers does (pass resume_from_checkpoint=True, or --resume_from_checkpoint "
            f"{existing[-1]}, to continue; --overwrite_output_dir to silence this).",
            file=sys.stderr,
        )
    return trainer.checkpointer.resolve(resume)


def new_state(trainer: "Trainer", plan: RunPlan, trial: Any) -> TrainState:
    rt = trainer.rt
    state = TrainState(
        max_steps=plan.total_steps,
        num_train_epochs=plan.num_epochs,
        logging_steps=plan.logging_steps,
        eval_steps=plan.eval_steps,
        save_steps=plan.save_steps,
        train_batch_size=plan.micro_batch,
        is_world_process_zero=rt.is_main,
        is_local_process_zero=rt.local_rank == 0,
    )
    state.is_hyper_param_search = trial is not None
    if trial is not None:
        from .hpsearch import trial_params

        state.trial_params = trial_params(trial)
        state.trial_name = trainer.hp_name(trial) if trainer.hp_name is not None else None
    state.stateful_callbacks = callback_states(trainer.callback_handler.callbacks, trainer.control)
    return state


def restore(trainer: "Trainer", resume: str, plan: RunPlan) -> None:
    """Load model, optimizer, scheduler, RNG and progress from `resume` (lmtrain's or transformers')."""
    args, rt, state = trainer.args, trainer.rt, trainer.state
    this_run = {k: v for k, v in state.state_dict().items() if k in _RUN_FIELDS}
    if rt.fsdp:  # full state dicts, scattered into the shards
        load_full_state_dicts(
            trainer.model, trainer.optimizer, ckpt.read_model_state(resume), ckpt.read_optimizer_state(resume), rt
        )
    trainer.checkpointer.load(
        resume,
        model=None if rt.fsdp else trainer.model,
        optimizer=None if rt.fsdp else trainer.optimizer,
        scheduler=trainer.lr_scheduler,
        scaler=rt.scaler,
        state=state,
        steps_per_epoch=plan.steps_per_epoch,
        grad_accum=plan.grad_accum,
    )
    # the saved counters and history continue; this run's plan and process roles are its own
    state.load_state_dict(this_run)
    if state.batches_in_epoch >= plan.batches_per_epoch:  # saved at an epoch's last step
        state.data_epoch, state.batches_in_epoch = state.data_epoch + 1, 0
    if args.ignore_data_skip:
        state.batches_in_epoch = 0
    position = trainer.checkpointer.data_position(resume)
    if trainer._stream is not None and position is not None and not args.ignore_data_skip:
        trainer._stream.load_state_dict(position)  # every lane continues where it was: nothing is replayed
    elif (trainer._stream is None) != (position is None) and not args.ignore_data_skip and rt.is_main:
        print(
            f"warning: {resume} was saved by a {'streamed' if position is not None else 'cached'} run and this "
            f"run {'streams' if trainer._stream is not None else 'reads a cache'}: the data order is not the saved "
            "run's (resume as the run was started for an exact continuation)",
            file=sys.stderr,
        )
    if state.best_model_checkpoint and not os.path.isdir(state.best_model_checkpoint):
        state.best_model_checkpoint = None  # rotated away since: forget it, as transformers does
    if args.restore_callback_states_from_checkpoint:
        restore_callback_states(state.stateful_callbacks, trainer.callback_handler, trainer.control)


def finish_training(trainer: "Trainer", plan: RunPlan, window: LogWindow, runtime: float, tracker: Any) -> TrainOutput:
    """transformers' order: the train metrics are logged, the best model loaded, then on_train_end."""
    state = trainer.state
    if trainer.interrupted is not None and trainer.rt.is_main:
        print(
            f"stopped by {trainer.interrupted} after step {state.global_step}; saved "
            f"{trainer.checkpointer.latest()}. Resume with `lmtrain train ... --resume` or "
            f"trainer.train(resume_from_checkpoint=True).",
            flush=True,
        )
    window.store(state, trainer.rt)
    state.num_input_tokens_seen += window.tokens  # the steps after the last log count too
    state.total_flos += 6.0 * trainer.num_parameters * window.tokens
    total_tokens = window.total_tokens + window.tokens
    steps_here = max(state.global_step - window.first_step + 1, 1)
    train_loss = window.total_loss(trainer.rt) / max(state.global_step, 1)
    samples = steps_here * plan.effective_batch
    metrics = {
        "train_runtime": round(runtime, 4),
        "train_samples_per_second": round(samples / runtime, 3) if runtime else 0.0,
        "train_steps_per_second": round(steps_here / runtime, 3) if runtime else 0.0,
        "train_tokens_per_second": round(total_tokens / runtime, 1) if runtime else 0.0,
        "total_flos": float(state.total_flos),
        "train_loss": train_loss,
    }
    if trainer._mfu_scale and runtime:
        metrics["train_mfu"] = round(metrics["train_tokens_per_second"] * trainer._mfu_scale, 4)
    if tracker is not None:
        tracker.stop_and_update_metrics(metrics)
    trainer.log(metrics)
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint and trainer.interrupted is None:
        ckpt.load_model_weights(trainer.model, state.best_model_checkpoint)
    trainer.checkpointer.finish(state)
    trainer.control = trainer._fire("on_train_end")
    trainer.is_in_train = False
    return TrainOutput(state.global_step, train_loss, metrics)


# ---- between steps: what the control flags trigger ---------------------------------------------


def maybe_log_save_evaluate(trainer: "Trainer", window: LogWindow) -> None:
    """Log, evaluate and save as the control flags say (set by DefaultFlowCallback and others)."""
    paused = time.perf_counter()
    control = trainer.control
    if control.should_log and trainer.state.global_step > trainer._last_logged_step:
        log_window(trainer, window)
    if control.should_evaluate:
        metrics = trainer._evaluate()
        new_best = trainer._determine_best_metric(metrics)
        if trainer.args.save_strategy == "best":
            trainer.control.should_save = new_best
    if trainer.control.should_save:
        trainer._save_checkpoint(window)
        trainer.control = trainer._fire("on_save")
    window.started += time.perf_counter() - paused  # throughput counts training time only


def evaluate_in_training(trainer: "Trainer", skip_scheduler: bool = False) -> Dict[str, float]:
    """Evaluation during training: also steps ReduceLROnPlateau and reports to a search trial."""
    metrics = trainer.evaluate(ignore_keys=trainer._ignore_keys_for_eval)
    if trainer._trial is not None:
        from .hpsearch import report_to_trial

        report_to_trial(trainer, metrics)
    if optim.is_plateau(trainer.lr_scheduler) and not skip_scheduler:
        name = trainer.args.metric_for_best_model or "loss"
        trainer.lr_scheduler.step(metrics[name if name.startswith("eval_") else f"eval_{name}"])
    return metrics


def log_window(trainer: "Trainer", window: LogWindow) -> None:
    """Read the device accumulators (the only host synchronisation of the step) and log them."""
    check_finite(trainer, window)
    record = window.read(trainer.rt)
    record["learning_rate"] = window.lr
    if trainer._mfu_scale:
        record["mfu"] = round(record["tokens_per_second"] * trainer._mfu_scale, 4)
    tokens = record.pop("tokens")
    trainer.state.num_input_tokens_seen += tokens
    trainer.state.total_flos += 6.0 * trainer.num_parameters * tokens
    trainer._last_logged_step = trainer.state.global_step
    trainer.log(record)
    window.reset(trainer.state)


def check_finite(trainer: "Trainer", window: LogWindow) -> None:
    """nan_policy=stop: fail on the first non-finite step, naming it; the last good checkpoint stays."""
    if trainer.args.nan_policy != "stop":
        return
    bad = window.bad_step()
    if bad >= 0:
        last = trainer.checkpointer.latest()
        raise TrainingError(
            f"the loss became NaN or infinite at step {bad}; lower the learning rate "
            f"(now {optim.current_lr(trainer.lr_scheduler):.3g}) or set max_grad_norm, then resume from "
            f"{last or 'the start'} (or pass --nan_policy skip)."
        )


def save_checkpoint(trainer: "Trainer", window: LogWindow) -> None:
    """Save checkpoint-<step> with the unfinished logging window and the callbacks' states (collective)."""
    if trainer.args.nan_policy == "stop" and window.bad_step() >= 0:
        check_finite(trainer, window)  # never save weights a NaN step touched: stop with the last good one
    window.store(trainer.state, trainer.rt)  # the running loss of this window travels with the checkpoint
    model_sd, optim_sd = full_state_dicts(trainer.model, trainer.optimizer, trainer.rt)  # FSDP: on all ranks
    trainer.state.stateful_callbacks = callback_states(trainer.callback_handler.callbacks, trainer.control)
    trainer.checkpointer.save(
        trainer.state,
        model=trainer.model,
        tokenizer=trainer.processing_class,
        optimizer=trainer.optimizer,
        scheduler=trainer.lr_scheduler,
        scaler=trainer.rt.scaler,
        model_state=model_sd,
        optimizer_state=optim_sd,
        data_position=trainer._stream.state_dict() if trainer._stream is not None else None,
    )
