"""Optimizer and learning-rate schedules (the transformers names, as plain LambdaLR functions)."""

from __future__ import annotations

import math
from functools import partial
from typing import Iterable, List

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..errors import ConfigError

_NO_DECAY = ("bias", "norm", "ln_", "layernorm", "LayerNorm")


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> List[dict]:
    """Weight decay on weight matrices only: biases, norm layers and 1-D parameters are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(key in name for key in _NO_DECAY):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, args, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused when every parameter lives on a CUDA device), or SGD/Adagrad when asked."""
    groups = parameter_groups(model, args.weight_decay)
    name = args.optim
    if name in ("adamw_torch", "adamw_torch_fused", "adamw_hf"):
        fused = device.type == "cuda" or name == "adamw_torch_fused"
        if fused and device.type not in ("cuda", "cpu", "mps", "xpu"):
            fused = False
        kwargs = dict(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        if fused:
            try:
                return torch.optim.AdamW(groups, fused=True, **kwargs)
            except (RuntimeError, TypeError):
                pass  # this torch build or device has no fused kernel: the foreach path is next best
        return torch.optim.AdamW(groups, foreach=True, **kwargs)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=args.learning_rate)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=args.learning_rate)
    raise ConfigError(f"optim={name!r} is not supported; use adamw_torch, adamw_torch_fused, sgd or adagrad.")


def _linear(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _cosine(step: int, warmup: int, total: int, cycles: float = 0.5) -> float:
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 2.0 * cycles * progress)))


def _cosine_restarts(step: int, warmup: int, total: int, cycles: int = 1) -> float:
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))


def _polynomial(step: int, warmup: int, total: int, lr_end_ratio: float = 1e-7 / 5e-5, power: float = 1.0) -> float:
    if step < warmup:
        return step / max(1, warmup)
    if step > total:
        return lr_end_ratio
    remaining = 1 - (step - warmup) / max(1, total - warmup)
    return (1 - lr_end_ratio) * remaining**power + lr_end_ratio


def _constant(step: int, warmup: int, total: int) -> float:
    return 1.0


def _constant_warmup(step: int, warmup: int, total: int) -> float:
    return step / max(1, warmup) if step < warmup else 1.0


def _inverse_sqrt(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    timescale = max(1, warmup)
    return 1.0 / math.sqrt((step + timescale - warmup) / timescale)


SCHEDULES = {
    "linear": _linear,
    "cosine": _cosine,
    "cosine_with_restarts": _cosine_restarts,
    "polynomial": _polynomial,
    "constant": _constant,
    "constant_with_warmup": _constant_warmup,
    "inverse_sqrt": _inverse_sqrt,
}


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int) -> LambdaLR:
    """A LambdaLR following schedule `name`: the multiplier at step s is SCHEDULES[name](s, warmup, total)."""
    if name not in SCHEDULES:
        raise ConfigError(f"lr_scheduler_type={name!r} is not supported; use one of {', '.join(SCHEDULES)}.")
    if name == "constant":
        warmup_steps = 0
    return LambdaLR(optimizer, partial(SCHEDULES[name], warmup=warmup_steps, total=total_steps))


def current_lr(scheduler_or_optimizer) -> float:
    """Learning rate of the first parameter group (what the logs report)."""
    if hasattr(scheduler_or_optimizer, "get_last_lr"):
        return float(scheduler_or_optimizer.get_last_lr()[0])
    return float(scheduler_or_optimizer.param_groups[0]["lr"])


def trainable_parameters(params: Iterable[torch.nn.Parameter]) -> int:
    return sum(p.numel() for p in params if p.requires_grad)
