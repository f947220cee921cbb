"""`Trainer`: the transformers-compatible facade over lmtrain's loop.

The facade holds the pieces (model, data, optimizer, callbacks, state) and exposes transformers'
overridable methods (`compute_loss`, `training_step`, `prediction_step`, `create_optimizer`,
`create_scheduler`, `get_train_dataloader`, `log`, `evaluate`...). `train()` plans the run, restores a
checkpoint and hands over to `loop.run_training`, which calls those methods in transformers' event
order. Device and precision differences live in `lmtrain.distributed.Runtime`; checkpoints, evaluation,
data order and hyperparameter search have their own modules.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from ..args import TrainingArguments
from ..distributed import full_state_dicts, load_full_state_dicts, setup_runtime, shard_model, wrap_model
from ..errors import ConfigError, TrainingError
from . import checkpoint as ckpt
from . import optim
from .callbacks import (CallbackHandler, DefaultFlowCallback, TrainerControl, callback_states,
                        restore_callback_states)
from .data import KeepColumns, drop_unused_columns, example_lengths, forward_columns, make_loader, to_device
from .extras import accepts_loss_kwargs, activate_neftune, apply_log_level, default_collator, memory_tracker
from .evaluate import (EvalLoopOutput, PredictionOutput, StepOutput, _detach, evaluation_loop, find_batch_size,
                       outputs_to_predictions)
from .flops import mfu_scale
from .loop import run_training
from .loss import count_label_tokens, label_shift, output_logits, token_loss_sum
from .plan import RunPlan, describe_run, set_seed
from .reporting import JsonlLoggerCallback, ProgressCallback, reporting_callbacks
from .results import format_metrics, save_metrics, write_model_card
from .signals import StopRequest
from .state import TrainState
from .steps import StepFeed
from .window import LogWindow

# TrainState fields that describe this run (its plan and process roles), not the saved progress
_RUN_FIELDS = ("max_steps", "num_train_epochs", "logging_steps", "eval_steps", "save_steps", "train_batch_size",
               "is_world_process_zero", "is_local_process_zero", "is_hyper_param_search", "trial_name", "trial_params")


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: Dict[str, float]


def _overrides(obj: Any, name: str) -> bool:
    """Whether a subclass of Trainer replaced method `name`."""
    return getattr(type(obj), name) is not getattr(Trainer, name)


class Trainer:
    """Train, evaluate and predict with a 🤗 transformers model (or any `nn.Module` returning logits)."""

    def __init__(
        self,
        model: Optional[torch.nn.Module] = None,
        args: Optional[TrainingArguments] = None,
        data_collator: Optional[Callable] = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        model_init: Optional[Callable[..., torch.nn.Module]] = None,
        compute_loss_func: Optional[Callable] = None,
        compute_metrics: Optional[Callable] = None,
        callbacks: Optional[List[Any]] = None,
        optimizers: Tuple[Any, Any] = (None, None),
        optimizer_cls_and_kwargs: Optional[Tuple[type, Dict[str, Any]]] = None,
        preprocess_logits_for_metrics: Optional[Callable] = None,
        tokenizer: Any = None,
        **unused: Any,
    ) -> None:
        self.args = args if args is not None else TrainingArguments()
        self.rt = setup_runtime(self.args)
        apply_log_level(self.args, self.rt.is_main)
        set_seed(self.args.seed, deterministic=self.args.full_determinism)  # before model_init: reproducible
        self.model_init = model_init
        if model is None:
            if model_init is None:
                raise ConfigError("Trainer needs a model: pass model=... or model_init=....")
            model = self.call_model_init()
        self._set_model(model)
        self.processing_class = processing_class if processing_class is not None else tokenizer
        self.data_collator = data_collator or default_collator(self.processing_class)
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.compute_metrics = compute_metrics
        self.compute_loss_func = compute_loss_func
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.optimizer, self.lr_scheduler = optimizers
        self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
        self._created_lr_scheduler = False
        self.label_names = list(self.args.label_names or ["labels"])
        # None: decide from the model (transformers' rule); True/False: what a custom compute_loss returns
        self.loss_is_scaled_for_ga: Optional[bool] = None
        self.current_gradient_accumulation_steps = self.args.gradient_accumulation_steps
        self.current_flos = 0.0
        self.is_in_train = False
        self.hp_search_backend: Any = None
        self.hp_name: Optional[Callable] = None
        self._trial: Any = None
        self.interrupted: Optional[str] = None
        self._last_logged_step = 0
        # compiled, the float32 upcast and the cross-entropy fuse: the fp32 logits are never stored
        self._loss_sum = torch.compile(token_loss_sum, dynamic=False) if self.args.torch_compile else token_loss_sum
        self.state = TrainState(is_world_process_zero=self.rt.is_main, is_local_process_zero=self.rt.local_rank == 0)
        self.control = TrainerControl()
        default_cbs = [DefaultFlowCallback(), ProgressCallback(), JsonlLoggerCallback(),
                       *reporting_callbacks(self.args.report_to)]
        self.callback_handler = CallbackHandler(default_cbs + list(callbacks or []), self.model,
                                                self.processing_class, self.optimizer, self.lr_scheduler)
        self.ignored_kwargs = sorted(unused)
        self.refuse_existing_checkpoints = False  # the CLI refuses; the library warns, as transformers trains on
        self.control = self._fire("on_init_end")

    def _set_model(self, model: torch.nn.Module) -> None:
        args = self.args
        self.model = model.to(self.rt.device)
        self.model_wrapped = self.model
        config = getattr(self.model, "config", None)
        if config is not None and hasattr(config, "use_cache"):
            config.use_cache = args.use_cache
        if args.gradient_checkpointing and hasattr(self.model, "gradient_checkpointing_enable"):
            kwargs = {"gradient_checkpointing_kwargs": args.gradient_checkpointing_kwargs} \
                if args.gradient_checkpointing_kwargs else {}
            self.model.gradient_checkpointing_enable(**kwargs)
        self.shift = label_shift(self.model)
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        self.model_accepts_loss_kwargs = accepts_loss_kwargs(self.model)

    # ---- transformers-compatible small API ------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        return self.processing_class

    def add_callback(self, callback: Any) -> None:
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: Any) -> Any:
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback: Any) -> None:
        self.callback_handler.remove_callback(callback)

    def is_world_process_zero(self) -> bool:
        return self.rt.is_main

    def is_local_process_zero(self) -> bool:
        return self.rt.local_rank == 0

    def call_model_init(self, trial: Any = None) -> torch.nn.Module:
        """`model_init()` or `model_init(trial)`, as transformers calls it."""
        takes_trial = len(inspect.signature(self.model_init).parameters) >= 1
        model = self.model_init(trial) if takes_trial else self.model_init()
        if model is None:
            raise ConfigError("model_init returned None; it must return a model.")
        return model

    def get_num_trainable_parameters(self) -> int:
        return optim.trainable_parameters(self.model.parameters())

    def get_learning_rates(self) -> List[float]:
        if self.optimizer is None:
            raise ConfigError("the optimizer is not created yet; call create_optimizer() or train() first.")
        return [group["lr"] for group in self.optimizer.param_groups]

    def num_examples(self, dataloader: Any) -> int:
        """Examples a dataloader reads: the dataset's length, else batches x batch size."""
        try:
            return len(dataloader.dataset)
        except (TypeError, AttributeError):
            return len(dataloader) * self.args.per_device_train_batch_size

    def floating_point_ops(self, inputs: Dict[str, Any]) -> int:
        """Forward+backward FLOPs of a batch, as transformers: 6 x input tokens x non-embedding parameters
        (0 for a model without `num_parameters`)."""
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input in inputs and hasattr(self.model, "num_parameters"):
            return 6 * inputs[main_input].numel() * self.model.num_parameters(exclude_embeddings=True)
        return 0

    def store_flos(self) -> None:
        """transformers keeps per-step FLOPs apart; lmtrain adds them to state.total_flos when it logs."""

    def _fire(self, event: str, **kwargs: Any) -> TrainerControl:
        return self.callback_handler.fire(event, self.args, self.state, self.control, **kwargs)

    def _fire_event(self, event: str) -> None:
        self.control = self._fire(event)

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        """Record `logs` in the history and hand them to every callback (console, JSONL, TensorBoard)."""
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        if self.args.include_num_input_tokens_seen != "no":
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self._fire("on_log", logs=logs)

    # ---- data ---------------------------------------------------------------------------------

    def _loader(self, dataset: Any, batch_size: int, train: bool, description: str) -> Any:
        """Training batches are sharded over ranks; evaluation reads the whole set on every rank."""
        args = self.args
        collator = self.data_collator
        if args.remove_unused_columns:
            dataset = drop_unused_columns(dataset, self.model, self.label_names, description)
            collator = KeepColumns(collator, forward_columns(self.model, self.label_names))
        shuffle = train and args.train_sampling_strategy != "sequential"
        lengths = None
        if train and args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "__len__"):
            lengths = example_lengths(dataset, args.length_column_name)
        return make_loader(
            dataset, collator, batch_size, shuffle=shuffle, data_seed=args.data_seed,
            drop_last=args.dataloader_drop_last and train, num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory and self.rt.device.type == "cuda",
            persistent_workers=args.dataloader_persistent_workers, prefetch_factor=args.dataloader_prefetch_factor,
            rank=self.rt.rank if train else 0, world_size=self.rt.world_size if train else 1, lengths=lengths,
            multiprocessing_context=args.dataloader_multiprocessing_context,
        )

    def get_train_dataloader(self) -> Any:
        if self.train_dataset is None:
            raise ConfigError("Trainer.train() needs a train_dataset.")
        return self._loader(self.train_dataset, self.args.per_device_train_batch_size, True, "training dataset")

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        if isinstance(eval_dataset, str):  # transformers: the name of one of a dict of eval datasets
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ConfigError("evaluation needs an eval_dataset: pass it to Trainer(...) or to evaluate(...).")
        return self._loader(dataset, self.args.per_device_eval_batch_size, False, "evaluation dataset")

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        return self.get_eval_dataloader(test_dataset)

    def _prepare_inputs(self, inputs: Dict[str, Any]) -> Dict[str, Any]:
        return to_device(inputs, self.rt.device)

    # ---- optimisation -------------------------------------------------------------------------

    get_optimizer_cls_and_kwargs = staticmethod(optim.get_optimizer_cls_and_kwargs)

    def get_decay_parameter_names(self, model: torch.nn.Module) -> List[str]:
        return optim.decay_parameter_names(model)

    def create_optimizer(self, model: Optional[torch.nn.Module] = None) -> torch.optim.Optimizer:
        """The optimizer of `args.optim` (or `optimizer_cls_and_kwargs`), unless one was passed in."""
        if self.optimizer is None:
            self.optimizer = optim.build_optimizer(model or self.model, self.args, self.rt.device,
                                                   self.optimizer_cls_and_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Optional[torch.optim.Optimizer] = None) -> Any:
        """The schedule of `args.lr_scheduler_type` (with lr_scheduler_kwargs), unless one was passed in."""
        if self.lr_scheduler is None:
            self.lr_scheduler = optim.build_scheduler(optimizer or self.optimizer, self.args, num_training_steps)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self.create_optimizer()
        self.create_scheduler(num_training_steps=num_training_steps, optimizer=self.optimizer)

    def _custom_loss(self) -> bool:
        return self.compute_loss_func is not None or _overrides(self, "compute_loss")

    def _forward(self, model: torch.nn.Module, inputs: Dict[str, Any]) -> Tuple[torch.Tensor, int, Any]:
        """(sum of token losses, label tokens or -1 when not counted here, outputs) for one batch.

        Language-model batches (labels shaped like input_ids), and any batch under label smoothing, get
        the loss from the logits, so it can be summed; other models compute their own mean loss, which
        is weighted back by its item count.
        """
        key = self.label_names[0]
        labels = inputs.get(key)
        ids = inputs.get("input_ids")
        smoothing = self.args.label_smoothing_factor
        if labels is not None and ((ids is not None and labels.shape == ids.shape) or smoothing):
            outputs = model(**{k: v for k, v in inputs.items() if k != key})
            shift = self.shift if labels.dim() > 1 else 0
            return self._loss_sum(output_logits(outputs), labels, shift, smoothing), -1, outputs
        outputs = model(**inputs)
        if isinstance(outputs, dict) and "loss" not in outputs:  # no labels, no loss: predictions only
            return None, 1, outputs
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        if labels is None:
            return loss, 1, outputs
        items = count_label_tokens(labels, 0)
        return loss * items, items, outputs

    def compute_loss(self, model: torch.nn.Module, inputs: Dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Optional[int] = None):
        """Loss of one micro-batch, divided by the label tokens of the whole step (`num_items_in_batch`).

        With `compute_loss_func`, the model runs without labels and the function computes the loss from
        (outputs, labels, num_items_in_batch=...), as in transformers.
        """
        if self.compute_loss_func is not None:
            inputs = dict(inputs)
            labels = inputs.pop(self.label_names[0], None)
            outputs = model(**inputs)
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
            return (loss, outputs) if return_outputs else loss
        loss_sum, items, outputs = self._forward(model, inputs)
        if loss_sum is None:
            raise ConfigError(f"the model did not return a loss, only {', '.join(outputs.keys())}; pass labels "
                              f"(named in label_names) or override compute_loss.")
        if num_items_in_batch is None or (not self.model_accepts_loss_kwargs and _overrides(self, "compute_loss")):
            # transformers' default compute_loss gives a model that takes no loss kwargs its own batch mean
            # (and training_step divides it by the micro-batches): a subclass calling super() gets the same
            labels = inputs.get(self.label_names[0])
            num_items_in_batch = items if items >= 0 else count_label_tokens(
                labels.cpu(), self.shift if labels.dim() > 1 else 0)
        loss = loss_sum / max(int(num_items_in_batch), 1)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model: torch.nn.Module, inputs: Dict[str, Any],
                      num_items_in_batch: Optional[int] = None) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its share of the step loss (detached)."""
        model.train()
        if callable(getattr(self.optimizer, "train", None)):  # schedule-free optimizers switch modes
            self.optimizer.train()
        custom = self._custom_loss()
        if custom and isinstance(num_items_in_batch, int):
            # transformers hands a custom loss a tensor (.item(), .to() work); a 0-d CPU one costs no sync
            num_items_in_batch = torch.tensor(num_items_in_batch)
        with self.rt.autocast():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if custom:
            # transformers' rule: a loss not already normalised over the step is divided by the micro-batches
            scaled = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else (
                self.model_accepts_loss_kwargs or self.compute_loss_func is not None)
            if not scaled:
                loss = loss / self.current_gradient_accumulation_steps
            self.rt.backward(loss)
        else:
            # DDP averages gradients over ranks; the loss is already over the global token count, so undo that.
            spread = self.rt.distributed and self.args.average_tokens_across_devices
            self.rt.backward(loss * self.rt.world_size if spread else loss)
        return loss.detach()

    def _label_tokens(self, micro_batches: List[Dict[str, Any]], stop: StopRequest) -> int:
        """Label tokens of the whole step over all ranks (counted on the host copies).

        Under torchrun the same all-reduce carries the stop flag, so that a SIGTERM seen by any rank
        stops every rank after the same step. With average_tokens_across_devices=False the count is
        this rank's own.
        """
        key = self.label_names[0]
        local = 0
        for b in micro_batches:
            labels = b.get(key)
            local += 1 if labels is None else count_label_tokens(labels, self.shift if labels.dim() > 1 else 0)
        total, stops = self.rt.sum_ints(local, int(stop.signal is not None))
        if stops and stop.signal is None:
            stop.signal = "SIGTERM (on another rank)"
        return total if self.args.average_tokens_across_devices else local

    def _optimizer_step(self, model: torch.nn.Module) -> Tuple[torch.Tensor, torch.Tensor, float]:
        """Unscale, clip, step, schedule. Returns (grad norm, skipped) as device tensors (no sync) and the
        learning rate the step used.

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
        lr = optim.current_lr(self.lr_scheduler if self.lr_scheduler is not None else opt)
        if not optim.is_plateau(self.lr_scheduler):  # ReduceLROnPlateau steps after evaluations instead
            self.lr_scheduler.step()
        opt.zero_grad(set_to_none=True)
        if hasattr(norm, "full_tensor"):  # FSDP: the norm is a DTensor
            norm = norm.full_tensor()
        return norm.detach(), skipped, lr

    # ---- the run --------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: Any = None, trial: Any = None, ignore_keys_for_eval: Any = None,
              **kwargs: Any) -> TrainOutput:
        """Train for max_steps (or num_train_epochs); resume from a checkpoint when given one (or True)."""
        from .hpsearch import apply_trial

        args = self.args
        self.is_in_train = True
        self._ignore_keys_for_eval = ignore_keys_for_eval
        tracker = memory_tracker(args)
        if self.model_init is not None:  # transformers re-creates the model for every run
            set_seed(args.seed, deterministic=args.full_determinism)
            apply_trial(self, trial)
            self._set_model(self.call_model_init(trial))
            self.optimizer, self.lr_scheduler = None, None
        elif trial is not None:
            apply_trial(self, trial)
        if self._created_lr_scheduler:  # a second train(): a new schedule over the new run's steps
            self.lr_scheduler, self._created_lr_scheduler = None, False
        resume = self._resolve_resume(resume_from_checkpoint)
        loader = self.get_train_dataloader()
        plan = RunPlan.make(args, loader, self.train_dataset, world_size=self.rt.world_size)
        if args.fsdp and self.rt.distributed and not self.rt.fsdp:
            shard_model(self.model, self.rt)  # before the optimizer: it must hold the sharded parameters
        elif args.fsdp and not self.rt.distributed:
            self.rt.notes.append("fsdp (one process: run under torchrun to shard)")
        self.create_optimizer_and_scheduler(plan.total_steps)
        self.state = self._new_state(plan, trial)
        if resume is not None:
            self._restore(resume, plan)
        if self.rt.is_main:
            print(describe_run(plan, args, self.model, self.rt, resume, self.ignored_kwargs), flush=True)
        model = wrap_model(self.model, self.rt, args)
        self.model_wrapped = model
        for name in ("model", "optimizer", "lr_scheduler"):
            setattr(self.callback_handler, name, getattr(self, name))
        self.callback_handler.train_dataloader = loader
        window = LogWindow(self.rt.device, self.state, self.rt.rank)
        window.nan_inf_filter = args.logging_nan_inf_filter and args.nan_policy == "ignore"
        self._last_logged_step = self.state.global_step
        self._mfu_scale = mfu_scale(self.model, plan.seq_len, self.rt)
        feed = StepFeed(self.state, args.gradient_accumulation_steps)
        neftune = activate_neftune(self.model, args.neftune_noise_alpha)
        start = time.perf_counter()
        try:
            with StopRequest() as stop:
                begin = True
                while True:
                    try:
                        run_training(self, model, loader, plan, window, feed, stop, begin=begin)
                        break
                    except torch.cuda.OutOfMemoryError:
                        self.optimizer.zero_grad(set_to_none=True)
                        if not feed.halve_batch(args):
                            raise
                        if self.rt.is_main:
                            print(f"out of memory: per_device_train_batch_size is now "
                                  f"{args.per_device_train_batch_size} with gradient_accumulation_steps "
                                  f"{args.gradient_accumulation_steps} (same effective batch); retrying step "
                                  f"{self.state.global_step + 1}", flush=True)
                        begin = False
                        loader = self.get_train_dataloader()
                        plan = dataclasses.replace(RunPlan.make(args, loader, self.train_dataset, self.rt.world_size),
                                                   total_steps=plan.total_steps)
        finally:
            if neftune is not None:
                neftune.remove()
        return self._finish_training(plan, window, time.perf_counter() - start, stop, tracker)

    def _resolve_resume(self, resume: Any) -> Optional[str]:
        """The checkpoint to resume from; a fresh run into a folder with checkpoints warns (library) or
        refuses (CLI), naming the flags that continue or replace them."""
        args = self.args
        if resume is False:
            resume = None
        existing = ckpt.list_checkpoints(args.output_dir)
        fresh = resume is None and not args.resume_from_checkpoint and existing and not args.overwrite_output_dir
        if fresh and self.refuse_existing_checkpoints:
            raise ConfigError(
                f"{args.output_dir} already holds checkpoints (latest {os.path.basename(existing[-1])}); pass "
                f"--resume to continue it, or --overwrite_output_dir to start over.")
        if fresh and self.rt.is_main:
            print(f"warning: {args.output_dir} already holds {len(existing)} checkpoint(s); training from scratch "
                  f"as transformers does (pass resume_from_checkpoint=True, or --resume_from_checkpoint "
                  f"{existing[-1]}, to continue; --overwrite_output_dir to silence this).", file=sys.stderr)
        return ckpt.resolve_resume(resume, args, self.rt.is_main)

    def _new_state(self, plan: RunPlan, trial: Any) -> TrainState:
        args = self.args
        state = TrainState(max_steps=plan.total_steps, num_train_epochs=plan.num_epochs,
                           logging_steps=plan.logging_steps, eval_steps=plan.eval_steps,
                           save_steps=plan.save_steps, train_batch_size=args.per_device_train_batch_size,
                           is_world_process_zero=self.rt.is_main, is_local_process_zero=self.rt.local_rank == 0)
        state.is_hyper_param_search = trial is not None
        if trial is not None:
            from .hpsearch import trial_params

            state.trial_params = trial_params(trial)
            state.trial_name = self.hp_name(trial) if self.hp_name is not None else None
        state.stateful_callbacks = callback_states(self.callback_handler.callbacks, self.control)
        return state

    def _restore(self, resume: str, plan: RunPlan) -> None:
        """Load model, optimizer, scheduler, RNG and progress from `resume` (lmtrain's or transformers')."""
        args = self.args
        this_run = {k: v for k, v in self.state.state_dict().items() if k in _RUN_FIELDS}
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
        if self.state.batches_in_epoch >= plan.batches_per_epoch:  # saved at an epoch's last step
            self.state.data_epoch, self.state.batches_in_epoch = self.state.data_epoch + 1, 0
        if args.ignore_data_skip:
            self.state.batches_in_epoch = 0
        if self.state.best_model_checkpoint and not os.path.isdir(self.state.best_model_checkpoint):
            self.state.best_model_checkpoint = None  # rotated away since: forget it, as transformers does
        if args.restore_callback_states_from_checkpoint:
            restore_callback_states(self.state.stateful_callbacks, self.callback_handler, self.control)

    def _maybe_log_save_evaluate(self, window: LogWindow) -> None:
        """Log, evaluate and save as the control flags say (set by DefaultFlowCallback and others)."""
        paused = time.perf_counter()
        if self.control.should_log and self.state.global_step > self._last_logged_step:
            self._log_window(window)
        if self.control.should_evaluate:
            metrics = self._evaluate()
            new_best = self._determine_best_metric(metrics)
            if self.args.save_strategy == "best":
                self.control.should_save = new_best
        if self.control.should_save:
            self._save_checkpoint(window)
            self.control = self._fire("on_save")
        window.started += time.perf_counter() - paused  # throughput counts training time only

    def _evaluate(self, skip_scheduler: bool = False) -> Dict[str, float]:
        """Evaluation during training: also steps ReduceLROnPlateau and reports to a search trial."""
        metrics = self.evaluate(ignore_keys=getattr(self, "_ignore_keys_for_eval", None))
        if self._trial is not None:
            from .hpsearch import report_to_trial

            report_to_trial(self, metrics)
        if optim.is_plateau(self.lr_scheduler) and not skip_scheduler:
            name = self.args.metric_for_best_model or "loss"
            self.lr_scheduler.step(metrics[name if name.startswith("eval_") else f"eval_{name}"])
        return metrics

    def _determine_best_metric(self, metrics: Dict[str, float]) -> bool:
        """Track metric_for_best_model in state.best_metric / best_global_step; True on a new best."""
        if not self.args.metric_for_best_model:
            return False
        return ckpt.update_best(self.state, self.args, metrics)

    def _log_window(self, window: LogWindow) -> None:
        """Read the device accumulators (the only host synchronisation of the step) and log them."""
        self._check_finite(window)
        record = window.read(self.rt)
        record["learning_rate"] = window.lr
        if getattr(self, "_mfu_scale", None):
            record["mfu"] = round(record["tokens_per_second"] * self._mfu_scale, 4)
        tokens = record.pop("tokens")
        self.state.num_input_tokens_seen += tokens
        self.state.total_flos += 6.0 * self.num_parameters * tokens
        self._last_logged_step = self.state.global_step
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
                f"(now {optim.current_lr(self.lr_scheduler):.3g}) or set max_grad_norm, then resume from "
                f"{last or 'the start'} (or pass --nan_policy skip)."
            )

    def _save_checkpoint(self, window: LogWindow) -> None:
        if self.args.nan_policy == "stop" and window.bad_step() >= 0:
            self._check_finite(window)  # never save weights a NaN step touched: stop with the last good one
        window.store(self.state, self.rt)  # the running loss of this window travels with the checkpoint
        step, out = self.state.global_step, self.args.output_dir
        model_sd, optim_sd = full_state_dicts(self.model, self.optimizer, self.rt)  # FSDP: gathered on all ranks
        rank_files = [] if self.rt.is_main else [ckpt.write_rank_rng(out, step, self.rt.rank)]
        self.rt.barrier()  # every rank's RNG file exists before rank 0 seals the checkpoint
        if self.rt.is_main:
            rank_files = [ckpt.rank_rng_path(out, step, r) for r in range(1, self.rt.world_size)]
            best = self.state.best_global_step
            if best and (best == step or os.path.isdir(os.path.join(out, f"{ckpt.PREFIX}-{best}"))):
                # set before saving: the checkpoint's state names itself when it is the best
                self.state.best_model_checkpoint = os.path.join(out, f"{ckpt.PREFIX}-{best}")
            self.state.stateful_callbacks = callback_states(self.callback_handler.callbacks, self.control)
            ckpt.save_checkpoint(
                out, step, model=self.model, tokenizer=self.processing_class, optimizer=self.optimizer,
                scheduler=self.lr_scheduler, scaler=self.rt.scaler, state=self.state, args=self.args,
                other_ranks_rng=rank_files, model_state=model_sd, optimizer_state=optim_sd,
            )
            ckpt.rotate_checkpoints(out, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.rt.barrier()

    def _finish_training(self, plan: RunPlan, window: LogWindow, runtime: float, stop: StopRequest,
                         tracker: Any) -> TrainOutput:
        """transformers' order: the train metrics are logged, the best model loaded, then on_train_end."""
        state = self.state
        if stop.signal is not None:
            self._stopped_by_signal(stop.signal)
        window.store(state, self.rt)
        state.num_input_tokens_seen += window.tokens  # the steps after the last log count too
        state.total_flos += 6.0 * self.num_parameters * window.tokens
        total_tokens = window.total_tokens + window.tokens
        steps_here = max(state.global_step - window.first_step + 1, 1)
        train_loss = window.total_loss(self.rt) / max(state.global_step, 1)
        samples = steps_here * plan.effective_batch
        metrics = {
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(samples / runtime, 3) if runtime else 0.0,
            "train_steps_per_second": round(steps_here / runtime, 3) if runtime else 0.0,
            "train_tokens_per_second": round(total_tokens / runtime, 1) if runtime else 0.0,
            "total_flos": float(state.total_flos),
            "train_loss": train_loss,
        }
        if getattr(self, "_mfu_scale", None) and runtime:
            metrics["train_mfu"] = round(metrics["train_tokens_per_second"] * self._mfu_scale, 4)
        if tracker is not None:
            tracker.stop_and_update_metrics(metrics)
        self.log(metrics)
        if self.args.load_best_model_at_end and state.best_model_checkpoint and stop.signal is None:
            ckpt.load_model_weights(self.model, state.best_model_checkpoint)
        if self.rt.is_main and state.best_model_checkpoint and self.args.save_total_limit == 1:
            ckpt.keep_only(self.args.output_dir, state.best_model_checkpoint)  # transformers: the best one stays
        self.control = self._fire("on_train_end")
        self.is_in_train = False
        return TrainOutput(state.global_step, train_loss, metrics)

    def _stopped_by_signal(self, name: str) -> None:
        self.interrupted = name
        if self.rt.is_main:
            where = ckpt.latest_checkpoint(self.args.output_dir)
            print(f"stopped by {name} after step {self.state.global_step}; saved {where}. Resume with "
                  f"`lmtrain train ... --resume` or trainer.train(resume_from_checkpoint=True).", flush=True)

    # ---- evaluation, prediction, saving ---------------------------------------------------------

    def prediction_step(self, model: torch.nn.Module, inputs: Dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: Optional[List[str]] = None) -> Tuple[Any, Any, Any]:
        """(mean loss, predictions, labels) of one batch, through `compute_loss` (transformers' route)."""
        has_labels = bool(self.label_names) and all(inputs.get(k) is not None for k in self.label_names)
        inputs = self._prepare_inputs(inputs)
        if ignore_keys is None:
            config = getattr(self.model, "config", None)
            ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", ["cache"]) or []) if config is not None \
                else []
        labels = self._batch_labels(inputs) if has_labels else None
        with torch.no_grad(), self.rt.autocast():
            if has_labels:
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True,
                                                  num_items_in_batch=self._eval_items(inputs))
                loss = loss.detach().mean()
            else:
                loss, outputs = None, model(**inputs)
        if prediction_loss_only:
            return loss, None, None
        return loss, outputs_to_predictions(outputs, has_labels, ignore_keys), labels

    def _batch_labels(self, inputs: Dict[str, Any]) -> Any:
        """The batch's labels as transformers returns them: one tensor, or a tuple for several label_names."""
        labels = tuple(_detach(inputs.get(k)) for k in self.label_names)
        return labels[0] if len(labels) == 1 else labels

    def _eval_items(self, inputs: Dict[str, Any]) -> Any:
        """transformers' num_items_in_batch in evaluation: the batch's label tokens, when the model or
        compute_loss_func normalises by it (else None)."""
        labels = inputs.get("labels")
        if not isinstance(labels, torch.Tensor) or not (self.model_accepts_loss_kwargs or self.compute_loss_func):
            return None
        if self.shift and labels.dim() > 1:
            labels = labels[..., self.shift:]
        return labels.ne(-100).sum()

    def _fast_eval_step(self, model: torch.nn.Module, batch: Dict[str, Any]) -> StepOutput:
        """lmtrain's own step: a token-weighted loss sum, logits as predictions."""
        with self.rt.autocast():
            loss_sum, items, outputs = self._forward(model, batch)
        labels = batch.get(self.label_names[0])
        has_labels = labels is not None and all(batch.get(k) is not None for k in self.label_names)
        if labels is None:
            weight, loss_sum = 0, None
        else:
            weight = items if items >= 0 else count_label_tokens(labels, self.shift if labels.dim() > 1 else 0)
        if self._only_loss:
            return StepOutput(loss_sum, weight, None, None)
        if items >= 0:  # the model computed its own loss: its outputs' other entries are the predictions
            logits = outputs_to_predictions(outputs, labels is not None, self._fast_ignore)
        else:  # the forward ran without labels: every output but ignore_keys (the logits, usually alone)
            logits = outputs_to_predictions(outputs, isinstance(outputs, dict), self._fast_ignore)
        return StepOutput(loss_sum, weight, logits, self._batch_labels(batch) if has_labels else None)

    def _compat_eval_step(self, model: torch.nn.Module, batch: Dict[str, Any]) -> StepOutput:
        """transformers' route (an overridden compute_loss/prediction_step): each batch's mean loss weighted
        by its number of examples, as transformers' evaluation_loop averages them."""
        loss, logits, labels = self.prediction_step(model, batch, self._only_loss, ignore_keys=self._ignore_keys)
        size = find_batch_size(batch) or 1
        return StepOutput(None if loss is None else loss * size, size, logits, labels)

    def evaluation_loop(self, dataloader: Any, description: str, prediction_loss_only: Optional[bool] = None,
                        ignore_keys: Optional[List[str]] = None, metric_key_prefix: str = "eval") -> EvalLoopOutput:
        args = self.args
        self._only_loss = args.prediction_loss_only if prediction_loss_only is None else prediction_loss_only
        self._ignore_keys = ignore_keys  # None: prediction_step picks the model's keys_to_ignore_at_inference
        config = getattr(self.model, "config", None)
        self._fast_ignore = list(ignore_keys if ignore_keys is not None else getattr(
            config, "keys_to_ignore_at_inference", ["cache"]) if config is not None else [])
        if not self.is_in_train and (args.bf16_full_eval or args.fp16_full_eval):
            self.model.to(dtype=torch.bfloat16 if args.bf16_full_eval else torch.float16)
        compat = self._custom_loss() or _overrides(self, "prediction_step")
        if callable(getattr(self.optimizer, "eval", None)):  # schedule-free: evaluate the averaged weights
            self.optimizer.eval()
        self.callback_handler.eval_dataloader = dataloader
        dataset = getattr(dataloader, "dataset", None)
        dataset = getattr(dataset, "dataset", dataset)  # lmtrain's seeded wrapper
        return evaluation_loop(
            self.model, dataloader, device=self.rt.device,
            step=self._compat_eval_step if compat else self._fast_eval_step,
            prediction_loss_only=self._only_loss, eval_accumulation_steps=args.eval_accumulation_steps,
            compute_metrics=self.compute_metrics, preprocess_logits_for_metrics=self.preprocess_logits_for_metrics,
            bytes_per_token=getattr(dataset, "bytes_per_token", None), metric_key_prefix=metric_key_prefix,
            on_batch=lambda: self._fire_event("on_prediction_step"), concat_batches=args.eval_do_concat_batches,
            include_for_metrics=args.include_for_metrics, batch_eval_metrics=args.batch_eval_metrics,
            nan_inf_filter=args.logging_nan_inf_filter,
            main_input_name=getattr(self.model, "main_input_name", "input_ids"),
            keep_predictions=description == "Prediction",
        )

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Optional[List[str]] = None,
                 metric_key_prefix: str = "eval") -> Dict[str, float]:
        """Loss (token-weighted), perplexity, bits per byte (when known) and compute_metrics, all prefixed."""
        override = eval_dataset is not None
        dataset = eval_dataset if override else self.eval_dataset
        if isinstance(dataset, dict):
            metrics: Dict[str, float] = {}
            for name, ds in dataset.items():
                metrics.update(self.evaluate(ds if override else name, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        tracker = memory_tracker(self.args)
        loader = self.get_eval_dataloader(dataset)
        only_loss = True if self.compute_metrics is None else None  # nothing would read the predictions
        metrics = self.evaluation_loop(loader, "Evaluation", only_loss, ignore_keys, metric_key_prefix).metrics
        self.log(metrics)
        self.control = self._fire("on_evaluate", metrics=metrics)
        if tracker is not None:
            tracker.stop_and_update_metrics(metrics)
        return metrics

    def predict(self, test_dataset: Any, ignore_keys: Optional[List[str]] = None,
                metric_key_prefix: str = "test") -> PredictionOutput:
        tracker = memory_tracker(self.args)
        loader = self.get_test_dataloader(test_dataset)
        out = self.evaluation_loop(loader, "Prediction", None, ignore_keys, metric_key_prefix)
        self.control = self._fire("on_predict", metrics=out.metrics)
        if tracker is not None:
            tracker.stop_and_update_metrics(out.metrics)
        return PredictionOutput(out.predictions, out.label_ids, out.metrics)

    def hyperparameter_search(self, hp_space: Optional[Callable] = None, compute_objective: Optional[Callable] = None,
                              n_trials: int = 20, direction: Any = "minimize", backend: Any = None,
                              hp_name: Optional[Callable] = None, **kwargs: Any) -> Any:
        """Search hyperparameters with optuna (transformers' API); needs `model_init`."""
        from .hpsearch import run_search

        return run_search(self, hp_space, compute_objective, n_trials, direction, backend, hp_name, **kwargs)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Save weights, config and tokenizer so `from_pretrained(output_dir)` loads them."""
        model_sd, _ = full_state_dicts(self.model, None, self.rt)  # FSDP: a collective, on every rank
        if self.rt.is_main:
            out = output_dir or self.args.output_dir
            os.makedirs(out, exist_ok=True)
            ckpt.save_model_files(self.model, out, safe_serialization=self.args.save_safetensors, state_dict=model_sd)
            if self.processing_class is not None and hasattr(self.processing_class, "save_pretrained"):
                self.processing_class.save_pretrained(out)
            ckpt.save_args(self.args, out)
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

    def push_to_hub(self, *args: Any, **kwargs: Any) -> None:
        """lmtrain runs offline: nothing is pushed (start-up said so); the model stays in output_dir."""
        if self.rt.is_main:
            print(f"push_to_hub: not pushed (lmtrain runs without network); the model is in "
                  f"{self.args.output_dir}.", file=sys.stderr)

    def create_model_card(self, **kwargs: Any) -> None:
        if self.rt.is_main:
            write_model_card(self.args.output_dir, self.state.log_history, self.state.global_step,
                             self.state.epoch, **kwargs)
