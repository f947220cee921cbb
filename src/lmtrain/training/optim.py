"""Optimizers, parameter groups and learning-rate schedules, exactly as transformers' Trainer builds them.

Names, kwargs and schedules come from the installed transformers (its enums, its
`Trainer.get_optimizer_cls_and_kwargs` and its `get_scheduler`), so every `optim` and
`lr_scheduler_type` it knows works here with the same numbers, and `optimizer.pt` / `scheduler.pt`
files move between the two trainers. transformers is imported lazily: the model that is being
trained has loaded it already, so this costs well under a second.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
from enum import Enum
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import torch

from ..errors import ConfigError

# An `optim` name that needs a package beyond torch: (pattern on the name, module to find, pip name).
# The first matching pattern wins, so the specific ones (galore_adamw_8bit, adamw_torch_8bit) come first.
_EXTRA_PACKAGES: Tuple[Tuple[str, str, str], ...] = (
    (r"galore", "galore_torch", "galore-torch"),
    (r"apollo", "apollo_torch", "apollo-torch"),
    (r"lomo", "lomo_optim", "lomo-optim"),
    (r"grokadamw", "grokadamw", "grokadamw"),
    (r"schedule_free", "schedulefree", "schedulefree"),
    (r"stable_adamw", "optimi", "torch-optimi"),
    (r"^adamw_torch_(4|8)bit$", "torchao", "torchao"),
    (r"anyprecision", "torchdistx", "torchdistx"),
    (r"xla", "torch_xla", "torch_xla"),
    (r"npu", "torch_npu", "torch-npu"),
    (r"apex", "apex", "apex"),
    (r"bnb|8bit|32bit|paged|lion|ademamix", "bitsandbytes", "bitsandbytes"),
)


def _value(name: Any) -> str:
    """The plain string of an enum member (lmtrain's or transformers') or of a string."""
    return str(name.value if isinstance(name, Enum) else name)


# ---- parameter groups -------------------------------------------------------------------------


def decay_parameter_names(model: torch.nn.Module) -> List[str]:
    """Names of the parameters that get weight decay: transformers' rule of the installed version.

    (LayerNorm modules and names matching bias/layernorm/rmsnorm/norm are excluded in recent versions.)
    """
    # transformers 4.46-5.x: parameters of nn.LayerNorm modules and names matching these patterns (lowercased)
    # get no decay. Written out here: importing transformers.trainer for it costs a second at start-up.
    patterns = [re.compile(p) for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")]

    def names(module: torch.nn.Module) -> List[str]:
        out = []
        for child_name, child in module.named_children():
            out += [
                f"{child_name}.{n}"
                for n in names(child)
                if not isinstance(child, torch.nn.LayerNorm)
                and not any(p.search(f"{child_name}.{n}".lower()) for p in patterns)
            ]
        return out + [k for k in module._parameters if not any(p.search(k.lower()) for p in patterns)]

    return names(model)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> List[dict]:
    """[decay group, no-decay group] of trainable parameters, in transformers' create_optimizer order.

    The same parameters in the same order is what lets an `optimizer.pt` move between the trainers.
    """
    decay = set(decay_parameter_names(model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]


# ---- optimizers --------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _transformers_defaults() -> Dict[str, Any]:
    """Default of every transformers.TrainingArguments field (for args objects that lack some)."""
    from transformers import TrainingArguments

    out = {}
    for f in dataclasses.fields(TrainingArguments):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


class _TransformersArgsView:
    """`args` as transformers' optimizer code reads it: its enum for `optim`, its defaults for absent fields."""

    def __init__(self, args: Any, optim: Any) -> None:
        self._args = args
        self.optim = optim
        from transformers.training_args import ParallelMode

        mode = getattr(args, "parallel_mode", None)
        if mode is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            mode = "distributed" if distributed and torch.distributed.get_world_size() > 1 else "not_distributed"
        self.parallel_mode: Union[ParallelMode, str]
        try:
            self.parallel_mode = ParallelMode(_value(mode))
        except ValueError:  # a mode transformers' handlers never test for
            self.parallel_mode = mode

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # _args itself while unpickling or copying: no recursion
            raise AttributeError(name)
        try:
            return getattr(self._args, name)
        except AttributeError:
            defaults = _transformers_defaults()
            if name in defaults:
                return defaults[name]
            raise


def optimizer_names() -> List[str]:
    """Every `optim` value the installed transformers knows."""
    from transformers.training_args import OptimizerNames

    return [m.value for m in OptimizerNames]


def _missing_package(name: str) -> Optional[str]:
    """The pip name of the package `optim=name` needs when it is not importable, else None."""
    for pattern, module, pip_name in _EXTRA_PACKAGES:
        if re.search(pattern, name):
            return None if importlib.util.find_spec(module) is not None else pip_name
    return None


def get_optimizer_cls_and_kwargs(args: Any, model: Optional[torch.nn.Module] = None) -> Tuple[Any, Dict[str, Any]]:
    """(optimizer class, kwargs) for `args.optim`, as transformers' `Trainer.get_optimizer_cls_and_kwargs`.

    `optim_args` ("k=v,k2=v2") is honoured as there. A name whose package is missing, or that the
    installed transformers does not know, raises ConfigError with the fix.
    """
    name = _value(getattr(args, "optim", "adamw_torch"))
    if name in ("adamw_torch", "adamw_torch_fused") and not getattr(args, "optim_args", None):
        # transformers' kwargs for torch's AdamW, without importing transformers.trainer (a second at start-up)
        kwargs: Dict[str, Any] = {
            "lr": args.learning_rate,
            "betas": (getattr(args, "adam_beta1", 0.9), getattr(args, "adam_beta2", 0.999)),
            "eps": getattr(args, "adam_epsilon", 1e-8),
        }
        return torch.optim.AdamW, {**kwargs, "fused": True} if name == "adamw_torch_fused" else kwargs
    from transformers import Trainer
    from transformers.training_args import OptimizerNames

    try:
        optim = OptimizerNames(name)
    except ValueError:
        raise ConfigError(f"optim={name!r} is not known; use one of {', '.join(optimizer_names())}.") from None
    package = _missing_package(name)
    if package is not None:
        raise ConfigError(f"optim={name!r} needs the {package} package: pip install {package}")
    try:
        view: Any = _TransformersArgsView(args, optim)  # duck-types the transformers.TrainingArguments it expects
        hf_model: Any = model  # typed PreTrainedModel there; lmtrain passes any nn.Module (or None)
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(view, hf_model)
    except (ImportError, ValueError, NotImplementedError) as e:
        # transformers' own message (a package version, optim_target_modules, ...), kept to one line
        message = " ".join(str(e).split())
        raise ConfigError(f"optim={name!r} cannot be used: {message}") from e
    return cls, kwargs


def _device_kernel(name: str, kwargs: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """lmtrain's AdamW kernel choice: fused on CUDA (also for plain adamw_torch), foreach otherwise."""
    kwargs = dict(kwargs)
    if name not in ("adamw_torch", "adamw_torch_fused") or "foreach" in kwargs:
        return kwargs
    fused = bool(kwargs.get("fused")) or device.type == "cuda"
    if fused and device.type not in ("cuda", "cpu", "mps", "xpu"):
        fused = False  # no fused AdamW kernel for this device type in any torch
    kwargs.pop("fused", None)
    kwargs["fused" if fused else "foreach"] = True
    return kwargs


def _is_factory(cls: Any) -> bool:
    """transformers >= 5 lets a handler return a factory (Muon, Dion) instead of an Optimizer class."""
    try:
        from transformers.trainer_optimizer import is_optimizer_factory
    except ImportError:  # transformers 4.x: handlers return classes only
        return False
    return is_optimizer_factory(cls)


def _keep_kernel_on_load(optimizer: torch.optim.Optimizer) -> None:
    """Loading a state dict replaces each group's options with the saved ones, including fused/foreach;
    keep this process's kernel choice so resuming from a checkpoint written elsewhere stays fused."""
    if not hasattr(optimizer, "register_load_state_dict_post_hook"):
        return
    chosen = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]

    def restore(opt: torch.optim.Optimizer) -> None:
        for group, kernel in zip(opt.param_groups, chosen):
            group.update(kernel)

    optimizer.register_load_state_dict_post_hook(restore)


def build_optimizer(
    model: torch.nn.Module,
    args: Any,
    device: torch.device,
    cls_and_kwargs: Optional[Tuple[Any, Dict[str, Any]]] = None,
) -> torch.optim.Optimizer:
    """The optimizer transformers' create_optimizer would build, with lmtrain's AdamW kernel choice.

    `cls_and_kwargs` (the Trainer's `optimizer_cls_and_kwargs`) is used as given instead of `args.optim`.
    """
    groups: Any = parameter_groups(model, getattr(args, "weight_decay", 0.0))
    name = _value(getattr(args, "optim", "adamw_torch"))
    if cls_and_kwargs is None:
        cls, kwargs = get_optimizer_cls_and_kwargs(args, model)
        kwargs = _device_kernel(name, kwargs, device)
    else:
        cls, kwargs = cls_and_kwargs[0], dict(cls_and_kwargs[1])
    if _is_factory(cls):
        return cls()(model, **kwargs)
    # Handlers that build their own groups (GaLore, APOLLO), take the model (LOMO) or are layer-wise
    # pass them in kwargs; transformers lets each replace the default groups, in this order.
    for key in ("params", "model", "optimizer_dict"):
        if key in kwargs:
            groups = kwargs.pop(key)
    try:
        optimizer = cls(groups, **kwargs)
    except (RuntimeError, TypeError):
        if cls_and_kwargs is not None or not kwargs.get("fused"):
            raise
        # this torch build or these parameters have no fused kernel: the foreach path is next best
        kwargs.pop("fused")
        optimizer = cls(groups, foreach=True, **kwargs)
    if "bitsandbytes" in str(cls) and kwargs.get("optim_bits") == 8:
        _embeddings_in_fp32(model)
    _keep_kernel_on_load(optimizer)
    return optimizer


def _embeddings_in_fp32(model: torch.nn.Module) -> None:
    """As transformers does for 8-bit bitsandbytes optimizers: embeddings keep 32-bit state."""
    import bitsandbytes

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})


# ---- schedules ---------------------------------------------------------------------------------


def scheduler_names() -> List[str]:
    """Every `lr_scheduler_type` the installed transformers knows."""
    from transformers.trainer_utils import SchedulerType

    return [m.value for m in SchedulerType]


def scheduler_kwargs(args: Any) -> Dict[str, Any]:
    """`lr_scheduler_kwargs` as a dict: JSON strings are parsed with transformers' value conversion."""
    raw = getattr(args, "lr_scheduler_kwargs", None)
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"lr_scheduler_kwargs is not valid JSON ({e}); pass e.g. '{{\"num_cycles\": 2}}'.") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"lr_scheduler_kwargs must be a JSON object, got {raw!r}.")
        try:
            from transformers.training_args import _convert_str_dict
        except ImportError:  # an older transformers leaves the values as they are
            return raw
        return _convert_str_dict(raw)
    return dict(raw)


def warmup_steps(args: Any, num_training_steps: int) -> int:
    """args.get_warmup_steps(total) when it exists, else transformers' rule: warmup_steps if >= 1,
    a warmup_steps below 1 as a fraction of the total, else ceil(warmup_ratio * total)."""
    if hasattr(args, "get_warmup_steps"):
        return int(args.get_warmup_steps(num_training_steps))
    steps = getattr(args, "warmup_steps", 0) or 0
    if steps >= 1:
        return int(steps)
    ratio = steps if steps > 0 else getattr(args, "warmup_ratio", 0.0) or 0.0
    return math.ceil(num_training_steps * ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, args: Any, num_training_steps: int) -> Any:
    """transformers' `get_scheduler` for `args.lr_scheduler_type`, with its kwargs and warmup."""
    from transformers.optimization import get_scheduler

    name = _value(getattr(args, "lr_scheduler_type", "linear"))
    if name not in scheduler_names():
        raise ConfigError(f"lr_scheduler_type={name!r} is not known; use one of {', '.join(scheduler_names())}.")
    kwargs = scheduler_kwargs(args)
    try:
        return get_scheduler(
            name,
            optimizer=optimizer,
            num_warmup_steps=warmup_steps(args, num_training_steps),
            num_training_steps=num_training_steps,
            scheduler_specific_kwargs=kwargs,
        )
    except (TypeError, ValueError) as e:
        message = " ".join(str(e).split())
        raise ConfigError(f"lr_scheduler_type={name!r} with lr_scheduler_kwargs={kwargs}: {message}") from e


def is_plateau(scheduler: Any) -> bool:
    """True for schedules stepped with an eval metric after evaluation, not once per optimizer step
    (ReduceLROnPlateau, and transformers' GreedyLR where it exists)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return True
    try:
        from transformers.optimization import GreedyLR
    except ImportError:
        return False
    return isinstance(scheduler, GreedyLR)


def current_lr(scheduler_or_optimizer: Any) -> float:
    """Learning rate of the first parameter group (what the logs report)."""
    if is_plateau(scheduler_or_optimizer):  # no get_last_lr on older torch; the optimizer holds the truth
        return float(scheduler_or_optimizer.optimizer.param_groups[0]["lr"])
    if hasattr(scheduler_or_optimizer, "get_last_lr"):
        return float(scheduler_or_optimizer.get_last_lr()[0])
    return float(scheduler_or_optimizer.param_groups[0]["lr"])


def trainable_parameters(params: Iterable[torch.nn.Parameter]) -> int:
    return sum(p.numel() for p in params if p.requires_grad)
