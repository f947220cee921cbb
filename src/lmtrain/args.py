"""`TrainingArguments`: the transformers names and defaults, checked once at construction.

Each field carries a docstring under it; `HfArgumentParser` turns those into ``--help`` text.
Fields that transformers has but lmtrain does not act on are not accepted silently: they are
absent, so a typo or an unsupported option fails with the closest valid names.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any, Iterator, List, Optional, Union

from .errors import ConfigError


class IntervalStrategy(str, Enum):
    """When to evaluate, log or save: never, every N steps, or at the end of each epoch."""

    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"


class ParallelMode(str, Enum):
    NOT_DISTRIBUTED = "not_distributed"
    DISTRIBUTED = "distributed"


class SchedulerType(str, Enum):
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    INVERSE_SQRT = "inverse_sqrt"


class OptimizerNames(str, Enum):
    ADAMW_TORCH = "adamw_torch"
    ADAMW_TORCH_FUSED = "adamw_torch_fused"
    ADAMW_HF = "adamw_hf"
    SGD = "sgd"
    ADAGRAD = "adagrad"


def _enum_value(value: Any, enum: type, name: str) -> str:
    if isinstance(value, Enum):
        value = value.value
    allowed = [e.value for e in enum]
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}; pick one of those.")
    return value


@dataclass
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

    num_train_epochs: float = 3.0
    """Passes over the training set (a fraction stops part-way); ignored when max_steps > 0."""
    max_steps: int = -1
    """Total optimizer steps; overrides num_train_epochs when > 0."""
    lr_scheduler_type: Union[SchedulerType, str] = "linear"
    """Learning-rate schedule: linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup, inverse_sqrt."""
    warmup_ratio: float = 0.0
    """Fraction of total steps used for linear warmup (used when warmup_steps is 0)."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0 to learning_rate."""

    logging_dir: Optional[str] = None
    """Directory for TensorBoard files (default: output_dir/runs)."""
    logging_strategy: Union[IntervalStrategy, str] = "steps"
    """When to log: no, steps (every logging_steps) or epoch."""
    logging_first_step: bool = False
    """Also log the first optimizer step."""
    logging_steps: float = 500
    """Log every N optimizer steps (a float below 1 is a fraction of all steps)."""
    nan_policy: str = "stop"
    """On a NaN/inf loss or gradient: stop (name the step, keep the last good checkpoint) or skip (no update, counted in the logs)."""
    logging_nan_inf_filter: bool = True
    """Accepted for compatibility; lmtrain reports non-finite losses instead of hiding them."""

    save_strategy: Union[IntervalStrategy, str] = "steps"
    """When to save a checkpoint: no, steps (every save_steps) or epoch."""
    save_steps: float = 500
    """Save every N optimizer steps (a float below 1 is a fraction of all steps)."""
    save_total_limit: Optional[int] = None
    """Keep at most this many checkpoints; the latest and the best are never deleted."""
    save_safetensors: bool = True
    """Write model weights as safetensors (else pytorch_model.bin)."""
    save_only_model: bool = False
    """Checkpoints hold only the model (no optimizer, scheduler or RNG state: they cannot be resumed)."""
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
    """Optimizer: adamw_torch (fused automatically on CUDA), adamw_torch_fused, adamw_hf, sgd, adagrad."""
    torch_compile: bool = False
    """Compile the model with torch.compile."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
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
    remove_unused_columns: bool = True
    """Drop dataset columns that the model's forward() does not accept."""
    label_names: Optional[List[str]] = None
    """Keys of the batch that hold labels (default: labels)."""
    group_by_length: bool = False
    """Accepted for compatibility; not used by lmtrain (packed blocks have one length)."""

    report_to: Union[None, str, List[str]] = "none"
    """Where to send logs besides the console and the JSONL file: none, all, tensorboard, wandb, mlflow."""
    run_name: Optional[str] = None
    """A name for this run in logs (default: output_dir)."""
    disable_tqdm: bool = False
    """No progress bar: plain log lines instead."""
    log_level: str = "passive"
    """Accepted for compatibility."""

    resume_from_checkpoint: Optional[str] = None
    """Checkpoint to resume from (used by scripts; `train(resume_from_checkpoint=...)` takes it too)."""
    fsdp: bool = False
    """Under torchrun, shard parameters, gradients and optimizer state with FSDP2 instead of DDP."""
    ddp_backend: Optional[str] = None
    """torch.distributed backend under torchrun (default: nccl on CUDA, gloo on CPU)."""
    local_rank: int = -1
    """Set by torchrun through the LOCAL_RANK variable; accepted for compatibility."""
    push_to_hub: bool = False
    """Not supported (no network): must stay false."""
    hub_model_id: Optional[str] = None
    """Not supported (no network)."""

    def __post_init__(self) -> None:
        if self.output_dir is None:
            self.output_dir = "trainer_output"
        self.output_dir = os.fspath(self.output_dir)
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
            self.evaluation_strategy = None
        self.eval_strategy = _enum_value(self.eval_strategy, IntervalStrategy, "eval_strategy")
        self.logging_strategy = _enum_value(self.logging_strategy, IntervalStrategy, "logging_strategy")
        self.save_strategy = _enum_value(self.save_strategy, IntervalStrategy, "save_strategy")
        self.lr_scheduler_type = _enum_value(self.lr_scheduler_type, SchedulerType, "lr_scheduler_type")
        self.optim = _enum_value(self.optim, OptimizerNames, "optim")
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
        if self.greater_is_better is None and self.metric_for_best_model is not None:
            self.greater_is_better = not self.metric_for_best_model.endswith(("loss", "perplexity", "bits_per_byte"))
        self._check()

    def _check(self) -> None:
        """Reject contradictory settings with one sentence that names the fix."""
        if self.bf16 and self.fp16:
            raise ConfigError("bf16 and fp16 are both set; choose one mixed-precision mode.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.learning_rate < 0 or not math.isfinite(self.learning_rate):
            raise ConfigError(f"learning_rate must be a finite number >= 0, got {self.learning_rate}.")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ConfigError(f"warmup_ratio must be between 0 and 1, got {self.warmup_ratio}.")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("Nothing to train: set max_steps > 0 or num_train_epochs > 0.")
        for strategy, steps in (("eval", self.eval_steps), ("logging", self.logging_steps), ("save", self.save_steps)):
            if getattr(self, f"{strategy}_strategy") == "steps" and (steps is None or steps <= 0):
                raise ConfigError(f"{strategy}_strategy='steps' needs {strategy}_steps > 0, got {steps}.")
        if self.load_best_model_at_end:
            if self.eval_strategy == "no":
                raise ConfigError("load_best_model_at_end needs evaluation: set eval_strategy to 'steps' or 'epoch'.")
            if self.save_strategy != self.eval_strategy:
                raise ConfigError(
                    f"load_best_model_at_end needs save_strategy to match eval_strategy "
                    f"(got save_strategy={self.save_strategy!r}, eval_strategy={self.eval_strategy!r}); set them equal."
                )
            if self.save_strategy == "steps" and self.save_steps % self.eval_steps != 0:
                raise ConfigError(
                    f"load_best_model_at_end needs save_steps ({self.save_steps}) to be a multiple of "
                    f"eval_steps ({self.eval_steps}), so every saved checkpoint has been evaluated."
                )
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ConfigError(f"save_total_limit must be at least 1 (or unset), got {self.save_total_limit}.")
        if self.dataloader_num_workers < 0:
            raise ConfigError(f"dataloader_num_workers must be >= 0, got {self.dataloader_num_workers}.")
        if isinstance(self.fsdp, str):  # transformers spells it "full_shard auto_wrap" etc.
            self.fsdp = self.fsdp.strip().lower() not in ("", "false", "no", "0")
        if self.nan_policy not in ("stop", "skip"):
            raise ConfigError(f"nan_policy={self.nan_policy!r} is not one of stop, skip; pick one of those.")
        if self.push_to_hub:
            raise ConfigError("push_to_hub is not supported by lmtrain (it runs without network); unset it.")
        unknown = set(self.report_to) - {"all", "tensorboard", "wandb", "mlflow", "jsonl"}
        if unknown:
            raise ConfigError(f"report_to has unknown targets {sorted(unknown)}; use none, all, tensorboard, wandb or mlflow.")

    # ---- derived values used by the trainer -------------------------------------------------

    @property
    def train_batch_size(self) -> int:
        """Per-device micro-batch size (transformers name)."""
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warmup steps: warmup_steps if set, else ceil(warmup_ratio * total)."""
        return self.warmup_steps if self.warmup_steps > 0 else math.ceil(num_training_steps * self.warmup_ratio)

    def non_default_fields(self) -> dict:
        """The fields whose value differs from the default (for the start-up summary)."""
        default = TrainingArguments(output_dir=self.output_dir)
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}

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
