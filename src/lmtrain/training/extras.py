"""Small pieces of transformers' Trainer set-up that are not the loop: the default collator, whether a
model normalises its own loss, NEFTune, the memory tracker and the log level."""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable, Optional

import torch

from ..args import TrainingArguments
from ..distributed import unwrap


def default_collator(processing_class: Any) -> Callable:
    """transformers' choice: pad with the tokenizer when it can, else stack."""
    from ..data.collators import DataCollatorWithPadding, default_data_collator

    if processing_class is not None and getattr(processing_class, "pad_token", None) is not None:
        return DataCollatorWithPadding(processing_class)
    return default_data_collator


def accepts_loss_kwargs(model: torch.nn.Module) -> bool:
    """transformers' model_accepts_loss_kwargs: the model normalises its loss by num_items_in_batch."""
    model = unwrap(model)
    explicit = getattr(model, "accepts_loss_kwargs", None)
    if explicit is not None:
        return bool(explicit)
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind == p.VAR_KEYWORD or p.name == "num_items_in_batch" for p in params)


def activate_neftune(model: torch.nn.Module, alpha: Optional[float]) -> Any:
    """NEFTune: uniform noise of scale alpha/sqrt(length*width) on the input embeddings in training."""
    if not alpha:
        return None
    inner: Any = unwrap(model)  # a transformers model (nn.Module's stubs type its methods as Tensor | Module)
    embeddings = inner.get_input_embeddings()

    def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if module.training:
            magnitude = alpha / (output.size(1) * output.size(2)) ** 0.5
            output = output + torch.zeros_like(output).uniform_(-magnitude, magnitude)
        return output

    return embeddings.register_forward_hook(hook)


def memory_tracker(args: TrainingArguments) -> Any:
    """transformers' TrainerMemoryTracker when skip_memory_metrics=False (imported only then: it is slow)."""
    if args.skip_memory_metrics:
        return None
    from transformers.trainer_utils import TrainerMemoryTracker

    tracker = TrainerMemoryTracker(skip_memory_metrics=False)
    # the tracker names its stage after the function that calls start()/stop: tell it ours
    stage = tracker.stages.get(sys._getframe(1).f_code.co_name, "train")
    tracker.stages = {**tracker.stages, "_memory_tracker": stage, "_finish_training": "train"}
    tracker.start()
    return tracker


def apply_log_level(args: TrainingArguments, is_main: bool) -> None:
    """log_level (main process) / log_level_replica (others) set transformers' logger, as in transformers."""
    level = args.log_level if is_main else args.log_level_replica
    if level and level != "passive":
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity({"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}[level])
