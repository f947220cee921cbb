"""`Trainer`: the transformers-compatible facade over lmtrain's loop.

The facade holds the pieces (model, data, optimizer, callbacks, state, checkpointer) and exposes
transformers' overridable methods (`compute_loss`, `training_step`, `prediction_step`,
`create_optimizer`, `create_scheduler`, `get_train_dataloader`, `log`, `evaluate`...). The work is done
elsewhere: `run.train` plans the run, restores a checkpoint and hands over to `loop.run_training`, which
calls those methods in transformers' event order; `predict` evaluates; `checkpoint.Checkpointer` owns
the checkpoints; device and precision differences live in `lmtrain.distributed.Runtime`.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from ..args import TrainingArguments
from ..data.loader import KeepColumns, drop_unused_columns, example_lengths, forward_columns, make_loader, to_device
from ..distributed import full_state_dicts, setup_runtime
from ..errors import ConfigError
from . import checkpoint as ckpt
from . import forward, optim, predict, run
from .callbacks import CallbackHandler, DefaultFlowCallback, TrainerControl
from .evaluate import EvalLoopOutput, PredictionOutput
from .extras import accepts_loss_kwargs, apply_log_level, default_collator
from .linear_ce import linear_cross_entropy_sum
from .loss import label_shift, token_loss_sum
from .plan import set_seed
from .reporting import JsonlLoggerCallback, ProgressCallback, reporting_callbacks
from .results import format_metrics, save_metrics, save_model_dir, write_model_card
from .run import TrainOutput
from .state import TrainState
from .window import LogWindow


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
        # the run's micro-batch and accumulation: the args' values until auto_find_batch_size halves them
        self._train_batch_size = self.args.per_device_train_batch_size
        self._gradient_accumulation_steps = self.args.gradient_accumulation_steps
        self.current_flos = 0.0
        self.is_in_train = False
        self.hp_search_backend: Any = None
        self.hp_name: Optional[Callable] = None
        self._trial: Any = None
        # set by hyperparameter_search (transformers' public names, and lmtrain's private ones)
        self.hp_space: Optional[Callable] = None
        self.compute_objective: Optional[Callable] = None
        self.objective: Any = None
        self._hp_space: Optional[Callable] = None
        self._compute_objective: Optional[Callable] = None
        self._search_output_dir: Optional[str] = None
        self.interrupted: Optional[str] = None
        self._last_logged_step = 0
        self._mfu_scale: Optional[float] = None  # model FLOPs per token / device peak, known once training starts
        self._ignore_keys_for_eval: Optional[List[str]] = None
        # compiled, the float32 upcast and the cross-entropy fuse: the fp32 logits are never stored
        self._loss_sum = torch.compile(token_loss_sum, dynamic=False) if self.args.torch_compile else token_loss_sum
        # loss_chunk_size: the head and the cross-entropy a chunk at a time (linear_ce), compiled likewise
        self._chunked_ce = (
            torch.compile(linear_cross_entropy_sum, dynamic=False)
            if self.args.torch_compile and self.args.loss_chunk_size
            else linear_cross_entropy_sum
        )
        self.state = TrainState(is_world_process_zero=self.rt.is_main, is_local_process_zero=self.rt.local_rank == 0)
        self.control = TrainerControl()
        default_cbs = [
            DefaultFlowCallback(),
            ProgressCallback(),
            JsonlLoggerCallback(),
            *reporting_callbacks(list(self.args.report_to or [])),  # (a list once the args are built)
        ]
        self.callback_handler = CallbackHandler(
            default_cbs + list(callbacks or []), self.model, self.processing_class, self.optimizer, self.lr_scheduler
        )
        self.ignored_kwargs = sorted(unused)
        self.refuse_existing_checkpoints = False  # the CLI refuses; the library warns, as transformers trains on
        self.checkpointer = ckpt.Checkpointer(self.args, self.rt)
        self._stream: Any = None  # the position keeper of a streamed training set (run.train sets it)
        self.control = self._fire("on_init_end")

    def _set_model(self, model: torch.nn.Module) -> None:
        args = self.args
        self.model = model.to(self.rt.device)
        self.model_wrapped = self.model
        config = getattr(self.model, "config", None)
        if config is not None and hasattr(config, "use_cache"):
            config.use_cache = args.use_cache
        if args.gradient_checkpointing and hasattr(self.model, "gradient_checkpointing_enable"):
            kwargs = (
                {"gradient_checkpointing_kwargs": args.gradient_checkpointing_kwargs}
                if args.gradient_checkpointing_kwargs
                else {}
            )
            getattr(self.model, "gradient_checkpointing_enable")(**kwargs)  # noqa: B009 (a transformers method)
        self.shift = label_shift(self.model)
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        self.model_accepts_loss_kwargs = accepts_loss_kwargs(self.model)

    # ---- transformers-compatible small API ------------------------------------------------------

    @property
    def _output_dir(self) -> str:
        return str(self.args.output_dir)  # (never None once the arguments are built)

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
        init = self.model_init
        if init is None:
            raise ConfigError("call_model_init needs a model_init: pass Trainer(model_init=...).")
        takes_trial = len(inspect.signature(init).parameters) >= 1
        model = init(trial) if takes_trial else init()
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
            count = getattr(self.model, "num_parameters")(exclude_embeddings=True)  # noqa: B009 (transformers')
            return 6 * inputs[main_input].numel() * count
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
            dataset,
            collator,
            batch_size,
            shuffle=shuffle,
            data_seed=args.data_seed if args.data_seed is not None else args.seed,  # (set in __post_init__)
            drop_last=args.dataloader_drop_last and train,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory and self.rt.device.type == "cuda",
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
            rank=self.rt.rank if train else 0,
            world_size=self.rt.world_size if train else 1,
            lengths=lengths,
            multiprocessing_context=args.dataloader_multiprocessing_context,
        )

    def get_train_dataloader(self) -> Any:
        if self.train_dataset is None:
            raise ConfigError("Trainer.train() needs a train_dataset.")
        return self._loader(self.train_dataset, self._train_batch_size, True, "training dataset")

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
            self.optimizer = optim.build_optimizer(
                model or self.model, self.args, self.rt.device, self.optimizer_cls_and_kwargs
            )
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

    def _overrides(self, name: str) -> bool:
        """Whether a subclass replaced method `name` (then transformers' route is taken)."""
        return getattr(type(self), name) is not getattr(Trainer, name)

    def _custom_loss(self) -> bool:
        return self.compute_loss_func is not None or self._overrides("compute_loss")

    def _forward(self, model: torch.nn.Module, inputs: Dict[str, Any]) -> Tuple[Optional[torch.Tensor], int, Any]:
        """(sum of token losses, label tokens or -1 when not counted here, outputs) for one batch."""
        return forward.loss_sum(self, model, inputs)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: Dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
    ):
        """Loss of one micro-batch, divided by the label tokens of the whole step (`num_items_in_batch`)."""
        return forward.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    def training_step(
        self,
        model: torch.nn.Module,
        inputs: Dict[str, Any],
        num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its share of the step loss (detached)."""
        return forward.training_step(self, model, inputs, num_items_in_batch)

    # ---- the run --------------------------------------------------------------------------------

    def train(
        self, resume_from_checkpoint: Any = None, trial: Any = None, ignore_keys_for_eval: Any = None, **kwargs: Any
    ) -> TrainOutput:
        """Train for max_steps (or num_train_epochs); resume from a checkpoint when given one (or True)."""
        return run.train(self, resume_from_checkpoint, trial, ignore_keys_for_eval)

    def _maybe_log_save_evaluate(self, window: LogWindow) -> None:
        """Log, evaluate and save as the control flags say (set by DefaultFlowCallback and others)."""
        run.maybe_log_save_evaluate(self, window)

    def _evaluate(self, skip_scheduler: bool = False) -> Dict[str, float]:
        """Evaluation during training: also steps ReduceLROnPlateau and reports to a search trial."""
        return run.evaluate_in_training(self, skip_scheduler)

    def _determine_best_metric(self, metrics: Dict[str, float]) -> bool:
        """Track metric_for_best_model in state.best_metric / best_global_step; True on a new best."""
        if not self.args.metric_for_best_model:
            return False
        return self.checkpointer.update_best(self.state, metrics)

    def _save_checkpoint(self, window: LogWindow) -> None:
        run.save_checkpoint(self, window)

    # ---- evaluation, prediction, saving ---------------------------------------------------------

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: Dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: Optional[List[str]] = None,
    ) -> Tuple[Any, Any, Any]:
        """(mean loss, predictions, labels) of one batch, through `compute_loss` (transformers' route)."""
        return predict.prediction_step(self, model, inputs, prediction_loss_only, ignore_keys)

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: Optional[bool] = None,
        ignore_keys: Optional[List[str]] = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        return predict.run_evaluation_loop(
            self, dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
        )

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: Optional[List[str]] = None, metric_key_prefix: str = "eval"
    ) -> Dict[str, float]:
        """Loss (token-weighted), perplexity, bits per byte (when known) and compute_metrics, all prefixed."""
        return predict.evaluate(self, eval_dataset, ignore_keys, metric_key_prefix)

    def predict(
        self, test_dataset: Any, ignore_keys: Optional[List[str]] = None, metric_key_prefix: str = "test"
    ) -> PredictionOutput:
        return predict.predict(self, test_dataset, ignore_keys, metric_key_prefix)

    def hyperparameter_search(
        self,
        hp_space: Optional[Callable] = None,
        compute_objective: Optional[Callable] = None,
        n_trials: int = 20,
        direction: Any = "minimize",
        backend: Any = None,
        hp_name: Optional[Callable] = None,
        **kwargs: Any,
    ) -> Any:
        """Search hyperparameters with optuna (transformers' API); needs `model_init`."""
        from .hpsearch import run_search

        return run_search(self, hp_space, compute_objective, n_trials, direction, backend, hp_name, **kwargs)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Save weights, config and tokenizer so `from_pretrained(output_dir)` loads them."""
        model_sd, _ = full_state_dicts(self.model, None, self.rt)  # FSDP: a collective, on every rank
        if self.rt.is_main:
            save_model_dir(self.model, output_dir or self._output_dir, self.processing_class, self.args, model_sd)
        self.rt.barrier()  # every rank returns once the model is on disk

    def save_state(self) -> None:
        if self.rt.is_main:
            os.makedirs(self._output_dir, exist_ok=True)
            self.state.save_to_json(os.path.join(self._output_dir, "trainer_state.json"))

    def log_metrics(self, split: str, metrics: Dict[str, float]) -> None:
        if self.rt.is_main:
            print(format_metrics(split, metrics))

    def save_metrics(self, split: str, metrics: Dict[str, float], combined: bool = True) -> None:
        """Write {split}_results.json (and merge into all_results.json), as transformers does."""
        if self.rt.is_main:
            save_metrics(self._output_dir, split, metrics, combined)

    def push_to_hub(self, *args: Any, **kwargs: Any) -> None:
        """lmtrain runs offline: nothing is pushed (start-up said so); the model stays in output_dir."""
        if self.rt.is_main:
            print(
                f"push_to_hub: not pushed (lmtrain runs without network); the model is in {self.args.output_dir}.",
                file=sys.stderr,
            )

    def create_model_card(self, **kwargs: Any) -> None:
        if self.rt.is_main:
            write_model_card(
                self._output_dir, self.state.log_history, self.state.global_step, self.state.epoch, **kwargs
            )
