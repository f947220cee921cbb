"""The plan of a run (steps, epochs, intervals) and the one summary printed before the first step."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np
import torch

from ..errors import ConfigError


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices), as transformers.set_seed does."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)


def _interval(value: Optional[float], total: int) -> Optional[int]:
    """transformers semantics: a value below 1 is a fraction of the total steps."""
    if value is None:
        return None
    return max(1, math.ceil(value * total)) if value < 1 else int(value)


@dataclass
class RunPlan:
    """How many steps and epochs this run takes and when it logs, evaluates and saves."""

    batches_per_epoch: int
    """Micro-batches per epoch on this process."""
    steps_per_epoch: int
    total_steps: int
    num_epochs: int
    effective_batch: int
    """Sequences per optimizer step over all processes."""
    seq_len: Optional[int]
    logging_steps: Optional[int]
    eval_steps: Optional[int]
    save_steps: Optional[int]
    strategies: dict
    micro_batch: int = 1
    """Sequences per micro-batch on this process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""

    @classmethod
    def make(
        cls,
        args: Any,
        loader: Any,
        dataset: Any,
        world_size: int = 1,
        micro_batch: Optional[int] = None,
        grad_accum: Optional[int] = None,
    ) -> "RunPlan":
        """The plan for `args`; `micro_batch`/`grad_accum` replace theirs (auto_find_batch_size's halving)."""
        ga = grad_accum or args.gradient_accumulation_steps
        micro_batch = micro_batch or args.per_device_train_batch_size
        try:
            batches = len(loader)
        except TypeError:
            batches = 0
        if batches == 0 and args.max_steps <= 0:
            raise ConfigError("the training dataset has no length (an IterableDataset): set max_steps.")
        steps_per_epoch = max(1, math.ceil(batches / ga)) if batches else args.max_steps
        total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        return cls(
            batches_per_epoch=batches or total * ga,
            micro_batch=micro_batch,
            grad_accum=ga,
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            num_epochs=math.ceil(total / steps_per_epoch),
            effective_batch=micro_batch * ga * world_size,
            seq_len=_seq_len(dataset),
            logging_steps=_interval(args.logging_steps, total),
            eval_steps=_interval(args.eval_steps, total),
            save_steps=_interval(args.save_steps, total),
            strategies={"logging": args.logging_strategy, "eval": args.eval_strategy, "save": args.save_strategy},
        )

    def due(self, kind: str, step: int, epoch_end: bool) -> bool:
        """Whether `kind` (logging, eval, save) happens after optimizer step `step`."""
        strategy = self.strategies[kind]
        if strategy == "epoch":
            return epoch_end
        if strategy == "steps":
            every = getattr(self, f"{kind}_steps")
            return bool(every) and step % every == 0
        return False

    @property
    def tokens_per_step(self) -> Optional[int]:
        return self.effective_batch * self.seq_len if self.seq_len else None


def _seq_len(dataset: Any) -> Optional[int]:
    """Length of the first example's input_ids (blocks all have it); None when unknown."""
    try:
        first = dataset[0]
        return len(first["input_ids"])
    except Exception:
        return None


def ineffective_settings(args: Any, plan: RunPlan, rt: Any) -> List[str]:
    """Arguments set away from their default that change nothing in this run."""
    changed = args.non_default_fields()
    out = []

    def note(name: str, why: str) -> None:
        if name in changed:
            out.append(f"{name} ({why})")

    if args.max_steps > 0:
        note("num_train_epochs", "max_steps is set")
    if args.warmup_steps > 0:
        note("warmup_ratio", "warmup_steps is set")
    if args.eval_strategy != "steps":
        note("eval_steps", f"eval_strategy is {args.eval_strategy!r}")
    if args.save_strategy != "steps":
        note("save_steps", f"save_strategy is {args.save_strategy!r}")
    if args.save_strategy == "no":
        note("save_total_limit", "save_strategy is 'no'")
    if args.logging_strategy != "steps":
        note("logging_steps", f"logging_strategy is {args.logging_strategy!r}")
    if not args.load_best_model_at_end and args.save_strategy == "no":
        note("metric_for_best_model", "nothing is saved")
    if args.dataloader_num_workers == 0:
        note("dataloader_persistent_workers", "dataloader_num_workers is 0")
        note("dataloader_prefetch_factor", "dataloader_num_workers is 0")
    if rt.device.type != "cuda":
        note("dataloader_pin_memory", "not on CUDA")
        note("tf32", "not on CUDA")
    if args.prediction_loss_only:
        note("eval_accumulation_steps", "prediction_loss_only is set")
    if "tensorboard" not in args.report_to and "all" not in args.report_to:
        note("logging_dir", "report_to has no tensorboard")
    if args.nan_policy != "ignore":
        note("logging_nan_inf_filter", f"nan_policy={args.nan_policy!r} never averages a non-finite loss in")
    note("do_train", "read by scripts, not by the Trainer")
    note("do_eval", "read by scripts, not by the Trainer")
    note("do_predict", "read by scripts, not by the Trainer")
    from ..args import no_effect_reason, undeclared_fields

    for name in undeclared_fields(changed):  # transformers fields lmtrain accepts but does not act on
        out.append(f"{name} ({no_effect_reason(name)})")
    return out


def describe_run(
    plan: RunPlan, args: Any, model: torch.nn.Module, rt: Any, resume: Optional[str], ignored_kwargs: List[str]
) -> str:
    """The start-up summary: batch, tokens per step, steps, warmup, parameters, ineffective settings."""
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    precision = {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[rt.amp_dtype]
    lines = [
        f"lmtrain: {type(model).__name__} with {params / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable) "
        f"on {rt.device.type}{f' x{rt.world_size} processes' if rt.distributed else ''}, {precision}",
        f"  effective batch {plan.effective_batch} = {plan.micro_batch} per device x "
        f"{plan.grad_accum} accumulation x {rt.world_size} process(es)"
        + (f"; {plan.tokens_per_step:,} tokens per optimizer step" if plan.tokens_per_step else ""),
        f"  {plan.total_steps} optimizer steps ({plan.steps_per_epoch} per epoch, {plan.num_epochs} epoch(s)), "
        f"warmup {args.get_warmup_steps(plan.total_steps)} steps, {args.lr_scheduler_type} schedule, "
        f"peak lr {args.learning_rate:g}",
    ]
    if resume:
        lines.append(f"  resuming from {resume}")
    ineffective = ineffective_settings(args, plan, rt) + [f"{k} (not used by lmtrain)" for k in ignored_kwargs]
    ineffective += rt.notes
    if ineffective:
        lines.append("  set but without effect here: " + "; ".join(ineffective))
    return "\n".join(lines)
