"""`Trainer`: the transformers-compatible facade over lmtrain's loop.

The facade holds the pieces (model, data, optimizer, callbacks, state) and `train()` reads top to
bottom: plan the run, restore a checkpoint, then for each optimizer step call `training_step` on its
micro-batches, step the optimizer, and let `_after_step` log, evaluate and save. Device and precision
differences live in `lmtrain.distributed.Runtime`; checkpoints, evaluation and data order have their
own modules.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch

from ..args import TrainingArguments
from ..distributed import full_state_dicts, load_full_state_dicts, setup_runtime, shard_model, wrap_model
from ..errors import ConfigError, TrainingError
from . import checkpoint as ckpt
from .callbacks import (CallbackHandler, JsonlLoggerCallback, ProgressCallback, TrainerControl,
                        reporting_callbacks)
from .data import KeepColumns, batch_tokens, drop_unused_columns, forward_columns, make_loader, to_device
from .evaluate import EvalLoopOutput, PredictionOutput, evaluation_loop
from .loss import count_label_tokens, label_shift, output_logits, token_loss_sum
from .optim import build_optimizer, build_scheduler, current_lr
from .plan import RunPlan, describe_run, set_seed
from .results import format_metrics, save_metrics, write_model_card
from .signals import StopRequest
from .state import TrainState
from .steps import StepFeed
from .window import LogWindow
from .flops import mfu_scale


# TrainState fields that describe this run (its plan and process roles), not the saved progress
_RUN_FIELDS = ("max_steps", "num_train_epochs", "logging_steps", "eval_steps", "save_steps", "train_batch_size",
               "is_world_process_zero", "is_local_process_zero")


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: Dict[str, float]


class Trainer:
    """Train, evaluate and predict with a 🤗 transformers model (or any `nn.Module` returning logits)."""

    def __init__(
        self,
        model: Optional[torch.nn.Module] = None,
        args: Optional[TrainingArguments] = None,
        data_collator: Optional[Callable] = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        tokenizer: Any = None,
        model_init: Optional[Callable[[], torch.nn.Module]] = None,
        compute_metrics: Optional[Callable] = None,
        callbacks: Optional[List[Any]] = None,
        optimizers: Tuple[Any, Any] = (None, None),
        preprocess_logits_for_metrics: Optional[Callable] = None,
        processing_class: Any = None,
        **unused: Any,
    ) -> None:
        self.args = args if args is not None else TrainingArguments()
        self.rt = setup_runtime(self.args)
        set_seed(self.args.seed)  # before model_init, so a fresh model is reproducible
        if model is None:
            if model_init is None:
                raise ConfigError("Trainer needs a model: pass model=... or model_init=....")
            model = model_init()
        self.model_init = model_init
        self.model = model.to(self.rt.device)
        if self.args.gradient_checkpointing and hasattr(self.model, "gradient_checkpointing_enable"):
            self.model.gradient_checkpointing_enable()
        self.processing_class = processing_class if processing_class is not None else tokenizer
        self.data_collator = data_collator or _default_collator(self.processing_class)
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.compute_metrics = compute_metrics
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.optimizer, self.lr_scheduler = optimizers
        self.label_names = list(self.args.label_names or ["labels"])
        self.shift = label_shift(self.model)
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        # compiled, the float32 upcast and the cross-entropy fuse: the fp32 logits are never stored
        self._loss_sum = torch.compile(token_loss_sum, dynamic=False) if self.args.torch_compile else token_loss_sum
        self.state = TrainState(is_world_process_zero=self.rt.is_main, is_local_process_zero=self.rt.local_rank == 0)
        self.control = TrainerControl()
        default_cbs = [ProgressCallback(), JsonlLoggerCallback(), *reporting_callbacks(self.args.report_to)]
        self.callback_handler = CallbackHandler(default_cbs + list(callbacks or []), model=self.model,
                                                processing_class=self.processing_class)
        self.ignored_kwargs = sorted(unused)
        self.interrupted: Optional[str] = None
        self.control = self._fire("on_init_end")

    # ---- transformers-compatible small API ------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        return self.processing_class

    def add_callback(self, callback: Any) -> None:
        self.callback_handler.add(callback)

    def pop_callback(self, callback: Any) -> Any:
        return self.callback_handler.pop(callback)

    def remove_callback(self, callback: Any) -> None:
        self.callback_handler.remove(callback)

    def is_world_process_zero(self) -> bool:
        return self.rt.is_main

    def is_local_process_zero(self) -> bool:
        return self.rt.local_rank == 0

    def _fire(self, event: str, **kwargs: Any) -> TrainerControl:
        return self.callback_handler.fire(event, self.args, self.state, self.control, **kwargs)

    def _fire_event(self, event: str) -> None:
        self.control = self._fire(event)

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        """Record `logs` in the history and hand them to every callback (console, JSONL, TensorBoard)."""
        logs = dict(logs)
        if self.state.epoch is not None:
            logs.setdefault("epoch", round(self.state.epoch, 4))
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self._fire("on_log", logs=logs)

    # ---- data ---------------------------------------------------------------------------------

    def _loader(self, dataset: Any, batch_size: int, shuffle: bool, description: str) -> Any:
        """Training batches are sharded over ranks; evaluation reads the whole set on every rank."""
        args = self.args
        collator = self.data_collator
        if args.remove_unused_columns:
            dataset = drop_unused_columns(dataset, self.model, self.label_names, description)
            collator = KeepColumns(collator, forward_columns(self.model, self.label_names))
        return make_loader(
            dataset, collator, batch_size, shuffle=shuffle, data_seed=args.data_seed,
            drop_last=args.dataloader_drop_last and shuffle, num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory and self.rt.device.type == "cuda",
            persistent_workers=args.dataloader_persistent_workers, prefetch_factor=args.dataloader_prefetch_factor,
            rank=self.rt.rank if shuffle else 0, world_size=self.rt.world_size if shuffle else 1,
        )

    def get_train_dataloader(self) -> Any:
        if self.train_dataset is None:
            raise ConfigError("Trainer.train() needs a train_dataset.")
        return self._loader(self.train_dataset, self.args.per_device_train_batch_size, True, "training dataset")

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ConfigError("evaluation needs an eval_dataset: pass it to Trainer(...) or to evaluate(...).")
        return self._loader(dataset, self.args.per_device_eval_batch_size, False, "evaluation dataset")

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        return self.get_eval_dataloader(test_dataset)

    # ---- optimisation -------------------------------------------------------------------------

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        if self.optimizer is None:
            self.optimizer = build_optimizer(self.model, self.args, self.rt.device)
        if self.lr_scheduler is None:
            self.lr_scheduler = build_scheduler(self.optimizer, self.args.lr_scheduler_type,
                                                self.args.get_warmup_steps(num_training_steps), num_training_steps)

    def _forward(self, model: torch.nn.Module, inputs: Dict[str, Any]) -> Tuple[torch.Tensor, int, Any]:
        """(sum of token losses, label tokens, outputs) for one batch.

        Language-model batches (labels shaped like input_ids) get the loss from the logits, so it can
        be summed; other models compute their own mean loss, which is weighted back by its item count.
        """
        key = self.label_names[0]
        labels = inputs.get(key)
        ids = inputs.get("input_ids")
        if labels is not None and ids is not None and labels.shape == ids.shape:
            outputs = model(**{k: v for k, v in inputs.items() if k != key})
            return self._loss_sum(output_logits(outputs), labels, self.shift), -1, outputs
        outputs = model(**inputs)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        if labels is None:
            return loss, 1, outputs
        items = count_label_tokens(labels, 0)
        return loss * items, items, outputs

    def compute_loss(self, model: torch.nn.Module, inputs: Dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Optional[int] = None):
        """Loss of one micro-batch, divided by the label tokens of the whole step (`num_items_in_batch`)."""
        loss_sum, items, outputs = self._forward(model, inputs)
        if num_items_in_batch is None:
            key = self.label_names[0]
            num_items_in_batch = items if items >= 0 else count_label_tokens(inputs[key].cpu(), self.shift)
        loss = loss_sum / max(int(num_items_in_batch), 1)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model: torch.nn.Module, inputs: Dict[str, Any],
                      num_items_in_batch: Optional[int] = None) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its share of the step loss (detached)."""
        model.train()
        with self.rt.autocast():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        # DDP averages gradients over ranks; the loss is already over the global token count, so undo that.
        self.rt.backward(loss * self.rt.world_size if self.rt.distributed else loss)
        return loss.detach()

    def _label_tokens(self, micro_batches: List[Dict[str, Any]], stop: StopRequest) -> int:
        """Label tokens of the whole step over all ranks (counted on the host copies).

        Under torchrun the same all-reduce carries the stop flag, so that a SIGTERM seen by any rank
        stops every rank after the same step.
        """
        key = self.label_names[0]
        local = 0
        for b in micro_batches:
            labels = b.get(key)
            local += 1 if labels is None else count_label_tokens(labels, self.shift if labels.dim() > 1 else 0)
        total, stops = self.rt.sum_ints(local, int(stop.signal is not None))
        if stops and stop.signal is None:
            stop.signal = "SIGTERM (on another rank)"
        return total

    def _optimizer_step(self, model: torch.nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
        """Unscale, clip, step, schedule. Returns (grad norm, skipped) as device tensors: no sync.

        With nan_policy="skip" a step whose gradients are not finite changes nothing: the fused AdamW
        kernels take the flag on the device (`found_inf`, as GradScaler uses them); other optimizers
        read it on the host, which is the one synchronisation that policy costs them.
        """
        scaler, opt = self.rt.scaler, self.optimizer
        if scaler is not None:
            scaler.unscale_(opt)
        params = [p for p in model.parameters() if p.grad is not None]
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm, foreach=True)
        elif params:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))
        else:
            norm = torch.zeros((), device=self.rt.device)
        skipped = torch.zeros((), dtype=torch.bool, device=self.rt.device)
        self.control = self._fire("on_pre_optimizer_step")
        if scaler is not None:
            scaler.step(opt)  # the scaler skips non-finite steps itself
            scaler.update()
        elif self.args.nan_policy == "skip":
            skipped = ~torch.isfinite(norm)
            if opt.defaults.get("fused"):
                opt.found_inf = skipped.float()
                opt.step()
                del opt.found_inf
            elif not bool(skipped):
                opt.step()
        else:
            opt.step()
        self.control = self._fire("on_optimizer_step")
        self.lr_scheduler.step()
        opt.zero_grad(set_to_none=True)
        if hasattr(norm, "full_tensor"):  # FSDP: the norm is a DTensor
            norm = norm.full_tensor()
        return norm.detach(), skipped

    # ---- the loop -------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: Any = None, trial: Any = None, ignore_keys_for_eval: Any = None,
              **kwargs: Any) -> TrainOutput:
        """Train for max_steps (or num_train_epochs); resume from a checkpoint when given one (or True)."""
        args = self.args
        resume = ckpt.resolve_resume(resume_from_checkpoint, self.args, self.rt.is_main)
        loader = self.get_train_dataloader()
        plan = RunPlan.make(args, loader, self.train_dataset, world_size=self.rt.world_size)
        if args.fsdp and self.rt.distributed and not self.rt.fsdp:
            shard_model(self.model, self.rt)  # before the optimizer: it must hold the sharded parameters
        elif args.fsdp and not self.rt.distributed:
            self.rt.notes.append("fsdp (one process: run under torchrun to shard)")
        self.create_optimizer_and_scheduler(plan.total_steps)
        self.state = TrainState(max_steps=plan.total_steps, num_train_epochs=plan.num_epochs,
                                logging_steps=plan.logging_steps, eval_steps=plan.eval_steps,
                                save_steps=plan.save_steps, train_batch_size=args.per_device_train_batch_size,
                                is_world_process_zero=self.rt.is_main, is_local_process_zero=self.rt.local_rank == 0)
        this_run = {k: v for k, v in self.state.state_dict().items() if k in _RUN_FIELDS}
        if resume is not None:
            if self.rt.fsdp:  # full state dicts, scattered into the shards
                load_full_state_dicts(self.model, self.optimizer, ckpt.read_model_state(resume),
                                      ckpt.read_optimizer_state(resume), self.rt)
            else:
                ckpt.load_model_weights(self.model, resume)
            ckpt.load_training_state(resume, optimizer=None if self.rt.fsdp else self.optimizer,
                                     scheduler=self.lr_scheduler, scaler=self.rt.scaler, state=self.state,
                                     steps_per_epoch=plan.steps_per_epoch, grad_accum=args.gradient_accumulation_steps)
            # the saved counters and history continue; this run's plan and process roles are its own
            self.state.load_state_dict(this_run)
        if self.rt.is_main:
            print(describe_run(plan, args, self.model, self.rt, resume, self.ignored_kwargs), flush=True)
        model = wrap_model(self.model, self.rt, compile=args.torch_compile)
        self.model_wrapped = model
        window = LogWindow(self.rt.device, self.state, self.rt.rank)
        self._mfu_scale = mfu_scale(self.model, plan.seq_len, self.rt)
        feed = StepFeed(self.state, args.gradient_accumulation_steps, self._fire_event,
                        lambda: self.control.should_training_stop or self.state.global_step >= plan.total_steps)
        self.control = self._fire("on_train_begin")
        start = time.perf_counter()
        with StopRequest() as stop:
            while True:
                try:
                    self._loop(model, feed(loader, plan), plan, window, stop)
                    break
                except torch.cuda.OutOfMemoryError:
                    self.optimizer.zero_grad(set_to_none=True)
                    if not feed.halve_batch(args):
                        raise
                    if self.rt.is_main:
                        print(f"out of memory: per_device_train_batch_size is now {args.per_device_train_batch_size}"
                              f" with gradient_accumulation_steps {args.gradient_accumulation_steps} (same effective "
                              f"batch); retrying step {self.state.global_step + 1}", flush=True)
                    loader = self.get_train_dataloader()
                    plan = dataclasses.replace(RunPlan.make(args, loader, self.train_dataset, self.rt.world_size),
                                               total_steps=plan.total_steps)
        runtime = time.perf_counter() - start
        if window.steps:
            self._log_window(window)
        self._fire("on_train_end")
        if stop.signal is not None:
            self._stopped_by_signal(stop.signal)
        if args.load_best_model_at_end and self.state.best_model_checkpoint and stop.signal is None:
            ckpt.load_model_weights(self.model, self.state.best_model_checkpoint)
        return self._train_output(plan, window, runtime)

    def _loop(self, model: torch.nn.Module, steps: Iterator, plan: RunPlan, window: LogWindow,
              stop: StopRequest) -> None:
        """One optimizer step per iteration: forward/backward every micro-batch, step, then log/eval/save."""
        if self.state.global_step >= plan.total_steps:
            return  # resumed from the final checkpoint: nothing left to do
        for epoch_end, micro_batches in steps:
            self.control = self._fire("on_step_begin")
            num_items = self._label_tokens(micro_batches, stop)
            step_loss = torch.zeros((), device=self.rt.device)
            for i, batch in enumerate(micro_batches):
                window.tokens += batch_tokens(batch)
                with self.rt.no_sync(model, last_micro_batch=i == len(micro_batches) - 1):
                    step_loss += self.training_step(model, to_device(batch, self.rt.device), num_items)
                self.control = self._fire("on_substep_end") if i < len(micro_batches) - 1 else self.control
            grad_norm, skipped = self._optimizer_step(model)
            window.add(step_loss, grad_norm, self.state.global_step + 1, skipped)
            self.state.global_step += 1
            self.state.epoch = self.state.data_epoch + self.state.batches_in_epoch / max(plan.batches_per_epoch, 1)
            self.control = self._fire("on_step_end")
            if stop.signal is not None:  # SIGTERM/SIGINT: this step is done; save it and leave
                self.control.should_save = self.control.should_training_stop = True
            self._after_step(plan, window, epoch_end)
            if self.control.should_training_stop or self.state.global_step >= plan.total_steps:
                break

    def _stopped_by_signal(self, name: str) -> None:
        self.interrupted = name
        if self.rt.is_main:
            where = ckpt.latest_checkpoint(self.args.output_dir)
            print(f"stopped by {name} after step {self.state.global_step}; saved {where}. Resume with "
                  f"`lmtrain train ... --resume` or trainer.train(resume_from_checkpoint=True).", flush=True)

    def _after_step(self, plan: RunPlan, window: "LogWindow", epoch_end: bool) -> None:
        """Decide, from the strategies and the callbacks' control flags, whether to log, evaluate, save."""
        args, step = self.args, self.state.global_step
        last = step >= plan.total_steps
        if plan.due("logging", step, epoch_end) or (args.logging_first_step and step == 1) \
                or (last and args.logging_strategy != "no"):
            self.control.should_log = True
        if plan.due("eval", step, epoch_end) and step > args.eval_delay:
            self.control.should_evaluate = True
        if plan.due("save", step, epoch_end) or (last and args.save_strategy != "no"):
            self.control.should_save = True
        if self.control.should_log:
            self._log_window(window)
        paused = time.perf_counter()
        metrics = None
        if self.control.should_evaluate and self.eval_dataset is not None:
            metrics = self.evaluate()
        if self.control.should_save:
            self._save_checkpoint(window, metrics)
        window.started += time.perf_counter() - paused  # throughput counts training time only
        self.control._new_step()

    def _log_window(self, window: LogWindow) -> None:
        """Read the device accumulators (the only host synchronisation of the step) and log them."""
        self._check_finite(window)
        record = window.read(self.rt)
        record["learning_rate"] = current_lr(self.lr_scheduler)
        if getattr(self, "_mfu_scale", None):
            record["mfu"] = round(record["tokens_per_second"] * self._mfu_scale, 4)
        tokens = record.pop("tokens")
        self.state.num_input_tokens_seen += tokens
        self.state.total_flos += 6.0 * self.num_parameters * tokens
        self.log(record)
        window.reset(self.state)

    def _check_finite(self, window: LogWindow) -> None:
        """nan_policy=stop: fail on the first non-finite step, naming it; the last good checkpoint stays."""
        if self.args.nan_policy != "stop":
            return
        bad = window.bad_step()
        if bad >= 0:
            last = ckpt.latest_checkpoint(self.args.output_dir)
            raise TrainingError(
                f"the loss became NaN or infinite at step {bad}; lower the learning rate "
                f"(now {current_lr(self.lr_scheduler):.3g}) or set max_grad_norm, then resume from "
                f"{last or 'the start'} (or pass --nan_policy skip)."
            )

    def _save_checkpoint(self, window: "LogWindow", metrics: Optional[Dict[str, float]]) -> None:
        if self.args.nan_policy == "stop" and window.bad_step() >= 0:
            self._check_finite(window)  # never save weights a NaN step touched: stop with the last good one
        window.store(self.state, self.rt)  # the running loss of this window travels with the checkpoint
        if metrics is not None and self.args.metric_for_best_model:
            ckpt.update_best(self.state, self.args, metrics)
        step, out = self.state.global_step, self.args.output_dir
        model_sd, optim_sd = full_state_dicts(self.model, self.optimizer, self.rt)  # FSDP: gathered on all ranks
        rank_files = [] if self.rt.is_main else [ckpt.write_rank_rng(out, step, self.rt.rank)]
        self.rt.barrier()  # every rank's RNG file exists before rank 0 seals the checkpoint
        if self.rt.is_main:
            rank_files = [ckpt.rank_rng_path(out, step, r) for r in range(1, self.rt.world_size)]
            if self.state.best_global_step == step:  # set before saving: the checkpoint's state names itself
                self.state.best_model_checkpoint = os.path.join(out, f"{ckpt.PREFIX}-{step}")
            self.state.stateful_callbacks = ckpt.callback_states(
                getattr(self.callback_handler, "callbacks", []), self.control)
            ckpt.save_checkpoint(
                out, step, model=self.model, tokenizer=self.processing_class, optimizer=self.optimizer,
                scheduler=self.lr_scheduler, scaler=self.rt.scaler, state=self.state, args=self.args,
                other_ranks_rng=rank_files, model_state=model_sd, optimizer_state=optim_sd,
            )
            ckpt.rotate_checkpoints(out, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.rt.barrier()
        self.control = self._fire("on_save")

    def _train_output(self, plan: RunPlan, window: "LogWindow", runtime: float) -> TrainOutput:
        state = self.state
        steps_here = max(state.global_step - window.first_step + 1, 1)
        train_loss = window.total_loss(self.rt) / max(state.global_step, 1)
        samples = steps_here * plan.effective_batch
        metrics = {
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(samples / runtime, 3) if runtime else 0.0,
            "train_steps_per_second": round(steps_here / runtime, 3) if runtime else 0.0,
            "train_tokens_per_second": round(window.total_tokens / runtime, 1) if runtime else 0.0,
            "total_flos": float(state.total_flos),
            "train_loss": train_loss,
            "epoch": state.epoch,
        }
        if getattr(self, "_mfu_scale", None) and runtime:
            metrics["train_mfu"] = round(metrics["train_tokens_per_second"] * self._mfu_scale, 4)
        self.log(metrics)
        return TrainOutput(state.global_step, train_loss, metrics)

    # ---- evaluation, prediction, saving ---------------------------------------------------------

    def _eval_loss_fn(self, model: torch.nn.Module, batch: Dict[str, Any]) -> Tuple[torch.Tensor, Any]:
        loss_sum, _items, outputs = self._forward(model, batch)
        try:
            logits = output_logits(outputs)
        except (KeyError, IndexError, AttributeError):
            logits = None
        return loss_sum.detach(), logits

    def _evaluation_loop(self, dataset: Any, prefix: str, prediction_loss_only: Optional[bool] = None) -> EvalLoopOutput:
        loader = self.get_eval_dataloader(dataset)
        only_loss = self.args.prediction_loss_only if prediction_loss_only is None else prediction_loss_only
        if self.compute_metrics is None and prefix == "eval":
            only_loss = True  # nothing would read the logits: do not gather them
        out = evaluation_loop(
            self.model, loader, device=self.rt.device, autocast=self.rt.autocast, shift=self.shift,
            loss_fn=self._eval_loss_fn, label_names=self.label_names, prediction_loss_only=only_loss,
            eval_accumulation_steps=self.args.eval_accumulation_steps, compute_metrics=self.compute_metrics,
            preprocess_logits_for_metrics=self.preprocess_logits_for_metrics,
            bytes_per_token=getattr(dataset if dataset is not None else self.eval_dataset, "bytes_per_token", None),
            metric_key_prefix=prefix,
            on_batch=lambda: self._fire("on_prediction_step", eval_dataloader=loader),
        )
        return out

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> Dict[str, float]:
        """Token-weighted loss, perplexity, bits per byte (when known) and compute_metrics, all prefixed."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, dict):
            metrics: Dict[str, float] = {}
            for name, ds in dataset.items():
                metrics.update(self.evaluate(ds, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        metrics = self._evaluation_loop(dataset, metric_key_prefix).metrics
        metrics["epoch"] = self.state.epoch
        self.log(metrics)
        self.control = self._fire("on_evaluate", metrics=metrics)
        return metrics

    def predict(self, test_dataset: Any, ignore_keys: Any = None, metric_key_prefix: str = "test") -> PredictionOutput:
        out = self._evaluation_loop(test_dataset, metric_key_prefix, prediction_loss_only=False)
        self.control = self._fire("on_predict", metrics=out.metrics)
        return PredictionOutput(out.predictions, out.label_ids, out.metrics)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Save weights, config and tokenizer so `from_pretrained(output_dir)` loads them."""
        model_sd, _ = full_state_dicts(self.model, None, self.rt)  # FSDP: a collective, on every rank
        if self.rt.is_main:
            out = output_dir or self.args.output_dir
            os.makedirs(out, exist_ok=True)
            ckpt.save_model_files(self.model, out, safe_serialization=self.args.save_safetensors, state_dict=model_sd)
            if self.processing_class is not None and hasattr(self.processing_class, "save_pretrained"):
                self.processing_class.save_pretrained(out)
            with open(os.path.join(out, "training_args.json"), "w", encoding="utf-8") as f:
                f.write(self.args.to_json_string() + "\n")
        self.rt.barrier()  # every rank returns once the model is on disk

    def save_state(self) -> None:
        if self.rt.is_main:
            os.makedirs(self.args.output_dir, exist_ok=True)
            self.state.save_to_json(os.path.join(self.args.output_dir, "trainer_state.json"))

    def log_metrics(self, split: str, metrics: Dict[str, float]) -> None:
        if self.rt.is_main:
            print(format_metrics(split, metrics))

    def save_metrics(self, split: str, metrics: Dict[str, float], combined: bool = True) -> None:
        """Write {split}_results.json (and merge into all_results.json), as transformers does."""
        if self.rt.is_main:
            save_metrics(self.args.output_dir, split, metrics, combined)

    def create_model_card(self, **kwargs: Any) -> None:
        if self.rt.is_main:
            write_model_card(self.args.output_dir, self.state.log_history, self.state.global_step,
                             self.state.epoch, **kwargs)


def _default_collator(processing_class: Any) -> Callable:
    """transformers' choice: pad with the tokenizer when it can, else stack."""
    from ..data.collators import DataCollatorWithPadding, default_data_collator

    if processing_class is not None and getattr(processing_class, "pad_token", None) is not None:
        return DataCollatorWithPadding(processing_class)
    return default_data_collator
