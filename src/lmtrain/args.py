"""`TrainingArguments`: the transformers names and defaults, checked once at construction.

Each field carries a docstring under it; `HfArgumentParser` turns those into ``--help`` text.
Every other field of the installed transformers' `TrainingArguments` is added from its source (see
`hf_fields`), so a script written for any transformers 4.46+ constructs these arguments unchanged.
Those lmtrain acts on are listed in `IMPLEMENTED_HF_FIELDS`; any other one set away from its default
is named once in the start-up summary ("set but without effect here"), never silently ignored.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Union

from .arg_types import (  # noqa: F401 (re-exported: part of this module's API)
    ALIASES,
    NO_EFFECT_REASONS,
    IntervalStrategy,
    OptimizerNames,
    ParallelMode,
    SaveStrategy,
    SchedulerType,
    _enum_value,
    check_arguments,
    no_effect_reason,
    normalise_transformers_fields,
)
from .errors import ConfigError
from .hf_fields import hf_training_fields

if TYPE_CHECKING:  # the type checker sees the declared fields; the dataclass is made once the rest are added
    from dataclasses import dataclass as _declared
else:

    def _declared(cls: type) -> type:
        return cls


@_declared
class TrainingArguments:
    """Settings of a training run, with the names and defaults of `transformers.TrainingArguments`."""

    output_dir: Optional[str] = None
    """Where checkpoints, logs and the final model are written (default: `trainer_output`)."""
    overwrite_output_dir: bool = False
    """Train into an output_dir that already holds checkpoints, ignoring them."""

    do_train: bool = False
    """Run training (used by scripts; the Trainer itself does not read it)."""
    do_eval: bool = False
    """Run evaluation on the validation set (used by scripts)."""
    do_predict: bool = False
    """Run predictions on the test set (used by scripts)."""

    eval_strategy: Union[IntervalStrategy, str] = "no"
    """When to evaluate during training: no, steps (every eval_steps) or epoch."""
    evaluation_strategy: Optional[Union[IntervalStrategy, str]] = None
    """Older name of eval_strategy; accepted so existing scripts keep working."""
    eval_steps: Optional[float] = None
    """Evaluate every N optimizer steps (a float below 1 is a fraction of all steps); default logging_steps."""
    eval_delay: float = 0
    """Do not evaluate before this many steps (or epochs, with eval_strategy=epoch)."""

    per_device_train_batch_size: int = 8
    """Examples per device per micro-batch during training."""
    per_device_eval_batch_size: int = 8
    """Examples per device per batch during evaluation."""
    gradient_accumulation_steps: int = 1
    """Micro-batches summed into one optimizer step."""
    eval_accumulation_steps: Optional[int] = None
    """Move predictions to the CPU every N eval batches, so large eval sets do not fill device memory."""
    prediction_loss_only: bool = False
    """In evaluate/predict, compute only the loss: no logits are gathered."""
    eval_on_start: bool = False
    """Evaluate once before the first training step (a sanity check of the evaluation)."""
    eval_do_concat_batches: bool = True
    """Concatenate the predictions of all eval batches (false: a list with one array per batch)."""
    include_for_metrics: List[str] = field(default_factory=list)
    """Also give compute_metrics the "inputs" and/or "loss" (per example) in EvalPrediction."""
    batch_eval_metrics: bool = False
    """Call compute_metrics on every eval batch with compute_result=False, and True on the last one."""

    learning_rate: float = 5e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """Decoupled weight decay, applied to all weights except biases and norm layers."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value (0 disables clipping)."""
    label_smoothing_factor: float = 0.0
    """Label smoothing epsilon in the token-weighted loss (0: none), as transformers' LabelSmoother."""
    average_tokens_across_devices: bool = True
    """Under torchrun, divide the step's loss by the label tokens of all ranks (false: by each rank's own)."""
    loss_chunk_size: int = 0
    """0: the loss reads the model's full logits. N > 0: training computes the head and the cross-entropy N tokens at a time (the vocabulary-wide logits are never held whole), for causal and masked LMs with a plain linear head; other models use the full logits."""
    neftune_noise_alpha: Optional[float] = None
    """NEFTune: add uniform noise of this scale to the input embeddings while training (None: off)."""

    num_train_epochs: float = 3.0
    """Passes over the training set (a fraction stops part-way); ignored when max_steps > 0."""
    max_steps: int = -1
    """Total optimizer steps; overrides num_train_epochs when > 0."""
    lr_scheduler_type: Union[SchedulerType, str] = "linear"
    """Learning-rate schedule, any of transformers' (linear, cosine, cosine_with_min_lr, warmup_stable_decay, reduce_lr_on_plateau, ...)."""
    lr_scheduler_kwargs: Optional[Union[dict, str]] = None
    """Extra arguments of the schedule, as a dict or JSON (e.g. {"min_lr_rate": 0.1} for cosine_with_min_lr)."""
    warmup_ratio: float = 0.0
    """Fraction of total steps used for linear warmup (used when warmup_steps is 0)."""
    warmup_steps: float = 0
    """Steps of linear warmup from 0 to learning_rate (a value below 1 is a fraction of all steps)."""

    logging_dir: Optional[str] = None
    """Directory for TensorBoard files (default: output_dir/runs)."""
    logging_strategy: Union[IntervalStrategy, str] = "steps"
    """When to log: no, steps (every logging_steps) or epoch."""
    logging_first_step: bool = False
    """Also log the first optimizer step."""
    include_num_input_tokens_seen: Union[str, bool] = "no"
    """Add num_input_tokens_seen to every log record: all (every input token), non_padding, or no."""
    skip_memory_metrics: bool = True
    """False: add memory use (transformers' TrainerMemoryTracker) to the train/eval metrics."""
    logging_steps: float = 500
    """Log every N optimizer steps (a float below 1 is a fraction of all steps)."""
    nan_policy: str = "stop"
    """lmtrain's own: on a NaN/inf loss or gradient, stop (name the step, keep the last good checkpoint), skip (no update, counted in the logs) or ignore (step anyway, as transformers does)."""
    logging_nan_inf_filter: bool = True
    """As transformers: a non-finite step loss is logged as the window's mean so far, and eval_loss averages finite batch losses only."""

    save_strategy: Union[SaveStrategy, str] = "steps"
    """When to save a checkpoint: no, steps (every save_steps), epoch, or best (when metric_for_best_model improves)."""
    save_steps: float = 500
    """Save every N optimizer steps (a float below 1 is a fraction of all steps)."""
    save_total_limit: Optional[int] = None
    """Keep at most this many checkpoints; the latest and the best are never deleted."""
    save_safetensors: bool = True
    """Write model weights as safetensors (else pytorch_model.bin)."""
    save_only_model: bool = False
    """Checkpoints hold only the model (no optimizer, scheduler or RNG state: they cannot be resumed)."""
    restore_callback_states_from_checkpoint: bool = False
    """On resume, restore the state of stateful callbacks (EarlyStoppingCallback...) from the checkpoint."""
    ignore_data_skip: bool = False
    """On resume, start the interrupted epoch from its first batch instead of where the run stopped."""
    load_best_model_at_end: bool = False
    """At the end, load the checkpoint with the best metric_for_best_model."""
    metric_for_best_model: Optional[str] = None
    """Metric that picks the best checkpoint (default: loss)."""
    greater_is_better: Optional[bool] = None
    """Whether a larger metric_for_best_model is better (default: false for losses)."""

    seed: int = 42
    """Random seed for model initialisation, shuffling and masking."""
    data_seed: Optional[int] = None
    """Seed for the data order only (default: seed)."""
    full_determinism: bool = False
    """Use deterministic algorithms everywhere (slower)."""

    bf16: bool = False
    """Train in bfloat16 mixed precision."""
    fp16: bool = False
    """Train in float16 mixed precision with a loss scaler."""
    tf32: Optional[bool] = None
    """Allow TF32 matmuls on Ampere or newer GPUs (default: on for CUDA)."""
    optim: Union[OptimizerNames, str] = "adamw_torch"
    """Optimizer, any of transformers' names whose package is installed (adamw_torch, fused automatically on CUDA; adafactor, sgd, ...)."""
    optim_args: Optional[str] = None
    """Extra optimizer arguments as "key=value,key2=value2"."""
    torch_compile: bool = False
    """Compile the model with torch.compile."""
    gradient_checkpointing: Optional[bool] = False
    """Recompute activations in the backward pass to save memory."""
    gradient_checkpointing_kwargs: Optional[Union[dict, str]] = None
    """Arguments of the model's gradient_checkpointing_enable (e.g. {"use_reentrant": false})."""
    activation_checkpointing: Optional[bool] = None
    """transformers 5's name for gradient_checkpointing (either turns it on)."""
    activation_checkpointing_kwargs: Optional[Union[dict, str]] = None
    """transformers 5's name for gradient_checkpointing_kwargs."""
    torch_compile_backend: Optional[str] = None
    """torch.compile backend (setting it turns torch_compile on)."""
    torch_compile_mode: Optional[str] = None
    """torch.compile mode, e.g. max-autotune (setting it turns torch_compile on)."""
    torch_empty_cache_steps: Optional[int] = None
    """Empty the CUDA cache every N steps (lowers peak memory, costs some speed)."""
    use_cache: bool = False
    """Set the model config's use_cache for training (the key/value cache is rarely useful while training)."""
    bf16_full_eval: bool = False
    """Outside training, evaluate with the model cast to bfloat16."""
    fp16_full_eval: bool = False
    """Outside training, evaluate with the model cast to float16."""
    use_cpu: bool = False
    """Train on the CPU even when an accelerator is present."""
    auto_find_batch_size: bool = False
    """On out-of-memory, halve the batch and double gradient accumulation, then go on."""

    dataloader_num_workers: int = 0
    """Worker processes that load batches (0: load in the main process)."""
    dataloader_drop_last: bool = False
    """Drop the last incomplete training batch of each epoch."""
    dataloader_pin_memory: bool = True
    """Pin host memory for faster copies to the GPU."""
    dataloader_persistent_workers: bool = False
    """Keep loader workers alive between epochs."""
    dataloader_prefetch_factor: Optional[int] = None
    """Batches each worker loads ahead."""
    dataloader_multiprocessing_context: Optional[str] = None
    """Start method of loader workers: fork, spawn or forkserver (default: the platform's)."""
    remove_unused_columns: bool = True
    """Drop dataset columns that the model's forward() does not accept."""
    label_names: Optional[List[str]] = None
    """Keys of the batch that hold labels (default: labels)."""
    train_sampling_strategy: str = "random"
    """Order of training examples: random, sequential, or group_by_length (similar lengths share a batch)."""
    length_column_name: str = "length"
    """Column with precomputed example lengths for group_by_length (else len(input_ids))."""
    group_by_length: bool = False
    """Batch examples of similar length together (transformers 4.x name of train_sampling_strategy='group_by_length')."""

    report_to: Union[None, str, List[str]] = "none"
    """Where to send logs besides the console and the JSONL file: none, all, tensorboard, wandb, mlflow."""
    run_name: Optional[str] = None
    """A name for this run in logs (default: output_dir)."""
    disable_tqdm: bool = False
    """No progress bar: plain log lines instead."""
    log_level_replica: str = "warning"
    """Verbosity of transformers' logger on the other processes under torchrun."""
    log_level: str = "passive"
    """Verbosity of transformers' logger on the main process: debug, info, warning, error, critical or passive (leave it)."""

    resume_from_checkpoint: Optional[str] = None
    """Checkpoint to resume from (used by scripts; `train(resume_from_checkpoint=...)` takes it too)."""
    fsdp: bool = False
    """Under torchrun, shard parameters, gradients and optimizer state with FSDP2 instead of DDP."""
    ddp_backend: Optional[str] = None
    """torch.distributed backend under torchrun (default: nccl on CUDA, gloo on CPU)."""
    ddp_timeout: int = 1800
    """Seconds a collective may wait under torchrun before the process group gives up."""
    ddp_find_unused_parameters: Optional[bool] = None
    """DDP's find_unused_parameters (default: false; true with gradient checkpointing off and unused weights)."""
    ddp_bucket_cap_mb: Optional[int] = None
    """DDP gradient bucket size in MiB."""
    ddp_broadcast_buffers: Optional[bool] = None
    """DDP's broadcast_buffers."""
    ddp_static_graph: Optional[bool] = None
    """DDP's static_graph."""
    local_rank: int = -1
    """Set by torchrun through the LOCAL_RANK variable; accepted for compatibility."""
    enable_jit_checkpoint: bool = False
    """Save a checkpoint on SIGTERM before exiting (lmtrain always does; accepted for transformers 5 scripts)."""

    def __post_init__(self) -> None:
        self._set_by_user = self._changed_fields()  # before the defaults below are filled in
        if self.output_dir is None:
            self.output_dir = "trainer_output"
        self.output_dir = os.fspath(self.output_dir)
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
            self.evaluation_strategy = None
        self.eval_strategy = _enum_value(self.eval_strategy, IntervalStrategy, "eval_strategy")
        self.logging_strategy = _enum_value(self.logging_strategy, IntervalStrategy, "logging_strategy")
        self.save_strategy = _enum_value(self.save_strategy, SaveStrategy, "save_strategy")
        self.lr_scheduler_type = _enum_value(self.lr_scheduler_type, SchedulerType, "lr_scheduler_type")
        self.optim = _enum_value(self.optim, OptimizerNames, "optim")
        normalise_transformers_fields(self)
        if self.eval_strategy == "steps" and not self.eval_steps:
            self.eval_steps = self.logging_steps
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        self.report_to = [r for r in (self.report_to or []) if r != "none"]
        if self.logging_dir is None:
            self.logging_dir = os.path.join(self.output_dir, "runs")
        if self.data_seed is None:
            self.data_seed = self.seed
        if self.metric_for_best_model is None and self.load_best_model_at_end:
            self.metric_for_best_model = "loss"
        if self.save_strategy == "best" and self.metric_for_best_model is None:
            raise ConfigError("save_strategy='best' needs metric_for_best_model (e.g. 'loss'); set it.")
        if self.greater_is_better is None and self.metric_for_best_model is not None:
            self.greater_is_better = not self.metric_for_best_model.endswith(("loss", "perplexity", "bits_per_byte"))
        check_arguments(self)

    # ---- derived values used by the trainer -------------------------------------------------

    @property
    def train_batch_size(self) -> int:
        """Per-device micro-batch size (transformers name)."""
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warmup steps: warmup_steps (a value below 1 is a fraction of the total), else warmup_ratio * total."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        ratio = self.warmup_steps if self.warmup_steps > 0 else self.warmup_ratio
        return math.ceil(num_training_steps * ratio)

    def non_default_fields(self) -> dict:
        """The fields the user set away from their declared default (subclasses' own fields included)."""
        changed = getattr(self, "_set_by_user", None)
        if changed is None:
            changed = self._changed_fields()
        return {name: getattr(self, name) for name in changed}

    def _changed_fields(self) -> list:
        out = []
        for f in fields(self):
            if f.default is not MISSING:
                default = f.default
            elif f.default_factory is not MISSING:
                default = f.default_factory()
            else:
                continue
            value = getattr(self, f.name, default)
            if isinstance(default, Enum):
                default = default.value
            if value != default:
                out.append(f.name)
        return out

    # ---- process facts that transformers' example scripts read --------------------------------

    @property
    def world_size(self) -> int:
        return int(os.environ.get("WORLD_SIZE", 1))

    @property
    def process_index(self) -> int:
        return int(os.environ.get("RANK", 0))

    @property
    def local_process_index(self) -> int:
        return int(os.environ.get("LOCAL_RANK", 0))

    @property
    def should_log(self) -> bool:
        return self.process_index == 0

    @property
    def should_save(self) -> bool:
        return self.process_index == 0

    @property
    def device(self):
        from .distributed import pick_device

        return pick_device(self.use_cpu, self.local_process_index)

    @property
    def n_gpu(self) -> int:
        return 1 if self.device.type == "cuda" else 0

    @property
    def parallel_mode(self) -> "ParallelMode":
        return ParallelMode.DISTRIBUTED if self.world_size > 1 else ParallelMode.NOT_DISTRIBUTED

    def get_process_log_level(self) -> int:
        import logging

        return logging.INFO if self.should_log else logging.WARNING

    @contextlib.contextmanager
    def main_process_first(self, local: bool = True, desc: str = "work") -> Iterator[None]:
        """Let rank 0 do `desc` first (dataset caching) while the other ranks wait, as transformers does."""
        import torch.distributed as dist

        active = dist.is_available() and dist.is_initialized() and self.world_size > 1
        is_main = (self.local_process_index if local else self.process_index) == 0
        if active and not is_main:
            dist.barrier()
        yield
        if active and is_main:
            dist.barrier()

    def to_dict(self) -> dict:
        """Plain JSON-able dict of all fields."""
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(self).items()}

    def to_json_string(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ---- the rest of the installed transformers' TrainingArguments -----------------------------------

_LMTRAIN_DECLARED = frozenset(TrainingArguments.__dict__.get("__annotations__", {}))


def undeclared_fields(names: Any) -> List[str]:
    """Of `names`, the transformers fields lmtrain accepts without acting on them (in the given order)."""
    return [n for n in names if n not in _LMTRAIN_DECLARED and n not in ALIASES and n in hf_training_fields()]


def _copier(value: Any) -> Callable[[], Any]:
    """A default factory: a fresh copy of a mutable default for every instance."""
    return lambda: type(value)(value)


def _add_transformers_fields(cls: type) -> type:
    """Declare, on the undecorated class, every transformers field it lacks; then make it a dataclass."""
    annotations = dict(cls.__dict__.get("__annotations__", {}))
    for name, hf in hf_training_fields().items():
        if name in annotations:
            continue
        annotations[name] = hf.type
        default = hf.default
        if isinstance(default, (list, dict)):
            setattr(cls, name, field(default_factory=_copier(default), metadata={"help": hf.help}))
        else:
            setattr(cls, name, field(default=default, metadata={"help": hf.help}))
    cls.__annotations__ = annotations
    return dataclass(cls)


_add_transformers_fields(TrainingArguments)  # (dataclass() decorates the class in place)
IMPLEMENTED_HF_FIELDS = frozenset(
    name
    for name in TrainingArguments.__dict__.get("__annotations__", {})
    if name in hf_training_fields() and (name in _LMTRAIN_DECLARED or name in ALIASES)
)
