"""The value types of `TrainingArguments` and how transformers' other spellings map onto them.

Enums (strategies, and the scheduler and optimizer names of the installed transformers), the reasons
given for transformers fields that change nothing in lmtrain, and the normalisation of the spellings
transformers accepted over its versions (4.x aliases, JSON strings, booleans for string options).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import TYPE_CHECKING, Any, List, Type, cast

from .errors import ConfigError
from .hf_fields import hf_enums


class IntervalStrategy(str, Enum):
    """When to evaluate, log or save: never, every N steps, or at the end of each epoch."""

    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"


class SaveStrategy(str, Enum):
    """When to save: as IntervalStrategy, plus `best` (whenever metric_for_best_model improves)."""

    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"
    BEST = "best"


class ParallelMode(str, Enum):
    NOT_DISTRIBUTED = "not_distributed"
    DISTRIBUTED = "distributed"


def _installed_enum(name: str, fallback: List[str]) -> Type[Enum]:
    """An enum with the members of the installed transformers' enum `name` (fallback when unreadable)."""
    values = hf_enums().get(name) or fallback
    # mypy types the functional Enum API with computed members as an Enum instance; it returns a class.
    return cast(Type[Enum], Enum(name, {v.upper(): v for v in values}, type=str, module=__name__))


if TYPE_CHECKING:
    # Their members are read from the installed transformers at import time, so mypy only knows them
    # as str enums (which lets `TrainingArguments` use them in annotations).
    class SchedulerType(str, Enum): ...

    class OptimizerNames(str, Enum): ...

else:
    SchedulerType = _installed_enum(
        "SchedulerType",
        ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"],
    )
    OptimizerNames = _installed_enum("OptimizerNames", ["adamw_torch", "adamw_torch_fused", "sgd", "adagrad"])


def _enum_value(value: Any, enum: Type[Enum], name: str) -> str:
    if isinstance(value, Enum):
        value = value.value
    allowed = [e.value for e in enum]
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}; pick one of those.")
    return value


# Why the transformers fields lmtrain does not declare have no effect here (said at start-up when set).
NO_EFFECT_REASONS = {
    "push_to_hub": "no network: lmtrain does not push to the Hub",
    "hub_": "no network: lmtrain does not push to the Hub",
    "trackio_": "trackio is not an lmtrain report_to target",
    "project": "trackio is not an lmtrain report_to target",
    "deepspeed": "DeepSpeed is not used; run under torchrun with --fsdp",
    "fsdp_config": "lmtrain's FSDP2 wrapping takes no config",
    "accelerator_config": "lmtrain does not run through accelerate",
    "parallelism_config": "tensor/context parallelism is not supported",
    "use_liger_kernel": "Liger kernels are not used",
    "liger_kernel_config": "Liger kernels are not used",
    "optim_target_modules": "GaLore/APOLLO target modules are not supported",
    "eval_use_gather_object": "evaluation is not sharded across ranks, nothing is gathered",
    "log_on_each_node": "only the main process logs",
    "save_on_each_node": "the main process saves; use a shared filesystem across nodes",
    "dataloader_in_order": "each rank reads its own shard of the data",
    "debug": "transformers' debug options are not supported",
}


def no_effect_reason(name: str) -> str:
    """Why transformers field `name` (one lmtrain does not declare) changes nothing in lmtrain."""
    for key, reason in NO_EFFECT_REASONS.items():
        if name == key or (key.endswith("_") and name.startswith(key)):
            return reason
    return "not used by lmtrain"


# transformers 4.x fields that are older spellings of declared ones (read in _normalise_transformers_fields),
# and include_tokens_per_second (lmtrain always reports tokens per second).
ALIASES = frozenset(
    {
        "include_inputs_for_metrics",
        "no_cuda",
        "per_gpu_train_batch_size",
        "per_gpu_eval_batch_size",
        "adafactor",
        "torchdynamo",
        "include_tokens_per_second",
    }
)


def normalise_transformers_fields(self: Any) -> None:
    """Spellings transformers accepts for the fields it added over the versions (called by
    TrainingArguments.__post_init__, on the arguments being built)."""
    import json

    if isinstance(self.lr_scheduler_kwargs, str):
        self.lr_scheduler_kwargs = json.loads(self.lr_scheduler_kwargs) if self.lr_scheduler_kwargs.strip() else {}
    for name in ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"):
        value = getattr(self, name, None)
        if isinstance(value, str):
            setattr(self, name, json.loads(value) if value.strip() else None)
    tokens_seen = getattr(self, "include_num_input_tokens_seen", "no")
    if isinstance(tokens_seen, bool) or str(tokens_seen).lower() in ("true", "false"):
        tokens_seen = "all" if str(tokens_seen).lower() == "true" else "no"
    self.include_num_input_tokens_seen = tokens_seen
    if getattr(self, "activation_checkpointing", None):  # transformers 5's name for it
        self.gradient_checkpointing = True
        self.gradient_checkpointing_kwargs = self.gradient_checkpointing_kwargs or getattr(
            self, "activation_checkpointing_kwargs", None
        )
    self.gradient_checkpointing = bool(self.gradient_checkpointing)
    if getattr(self, "torch_compile_mode", None) or getattr(self, "torch_compile_backend", None):
        self.torch_compile = True  # transformers: setting either turns compilation on
    if self.group_by_length:
        self.train_sampling_strategy = "group_by_length"
    if self.train_sampling_strategy not in ("random", "sequential", "group_by_length"):
        raise ConfigError(
            f"train_sampling_strategy={self.train_sampling_strategy!r} is not one of random, "
            f"sequential, group_by_length; pick one of those."
        )
    self.include_for_metrics = list(getattr(self, "include_for_metrics", None) or [])
    # transformers 4.x's older spellings of fields lmtrain declares under their newer names
    if getattr(self, "include_inputs_for_metrics", False) and "inputs" not in self.include_for_metrics:
        self.include_for_metrics.append("inputs")
    if getattr(self, "no_cuda", False):
        self.use_cpu = True
    for old, new in (
        ("per_gpu_train_batch_size", "per_device_train_batch_size"),
        ("per_gpu_eval_batch_size", "per_device_eval_batch_size"),
    ):
        if getattr(self, old, None):
            setattr(self, new, getattr(self, old))
    if getattr(self, "adafactor", False):
        self.optim = "adafactor"
    if getattr(self, "torchdynamo", None):
        self.torch_compile, self.torch_compile_backend = True, self.torchdynamo


def check_arguments(self: Any) -> None:
    """Reject contradictory settings of TrainingArguments `self` with one sentence that names the fix."""
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
        if self.save_strategy not in (self.eval_strategy, "best"):
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
    if self.loss_chunk_size < 0:
        raise ConfigError(f"loss_chunk_size must be >= 0 (0: full logits), got {self.loss_chunk_size}.")
    if self.dataloader_num_workers < 0:
        raise ConfigError(f"dataloader_num_workers must be >= 0, got {self.dataloader_num_workers}.")
    if isinstance(self.fsdp, str):  # transformers spells it "full_shard auto_wrap" etc.
        self.fsdp = self.fsdp.strip().lower() not in ("", "false", "no", "0")
    if self.nan_policy not in ("stop", "skip", "ignore"):
        raise ConfigError(f"nan_policy={self.nan_policy!r} is not one of stop, skip, ignore; pick one of those.")
    unknown = set(self.report_to) - {"all", "tensorboard", "wandb", "mlflow", "jsonl"}
    if unknown:
        raise ConfigError(
            f"report_to has unknown targets {sorted(unknown)}; use none, all, tensorboard, wandb or mlflow."
        )
