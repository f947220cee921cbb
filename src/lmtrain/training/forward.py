"""One micro-batch: the forward, its token-weighted loss, the backward.

The bodies of `Trainer._forward`, `Trainer.compute_loss` and `Trainer.training_step`. A language-model
batch gets the sum of its token losses from the logits (or from the chunked head with
loss_chunk_size), divided by the label tokens of the whole optimizer step, so the step's loss does not
depend on how it is split into micro-batches or ranks. A custom loss (compute_loss_func, an overridden
compute_loss) follows transformers' rules instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

import torch

from ..errors import ConfigError
from .linear_ce import lm_loss_sum_fused
from .loss import count_label_tokens, output_logits

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


def loss_sum(
    trainer: "Trainer", model: torch.nn.Module, inputs: Dict[str, Any]
) -> Tuple[Optional[torch.Tensor], int, Any]:
    """(sum of token losses, label tokens or -1 when not counted here, outputs) for one batch.

    The loss is None when the model returned none (a batch without labels).

    Language-model batches (labels shaped like input_ids), and any batch under label smoothing, get
    the loss from the logits, so it can be summed; other models compute their own mean loss, which
    is weighted back by its item count.
    """
    key = trainer.label_names[0]
    labels = inputs.get(key)
    ids = inputs.get("input_ids")
    smoothing = trainer.args.label_smoothing_factor
    if labels is not None and ((ids is not None and labels.shape == ids.shape) or smoothing):
        features = {k: v for k, v in inputs.items() if k != key}
        shift = trainer.shift if labels.dim() > 1 else 0
        if trainer.args.loss_chunk_size > 0 and model.training:  # evaluation keeps the logits: metrics read them
            fused = lm_loss_sum_fused(
                model, features, labels, shift, smoothing, trainer.args.loss_chunk_size, trainer._chunked_ce
            )
            if fused is not None:  # None: not a model whose head can be fused; the full logits below
                return fused[0], -1, fused[1]
        outputs = model(**features)
        return trainer._loss_sum(output_logits(outputs), labels, shift, smoothing), -1, outputs
    outputs = model(**inputs)
    if isinstance(outputs, dict) and "loss" not in outputs:  # no labels, no loss: predictions only
        return None, 1, outputs
    loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
    if labels is None:
        return loss, 1, outputs
    items = count_label_tokens(labels, 0)
    return loss * items, items, outputs


def compute_loss(
    trainer: "Trainer",
    model: torch.nn.Module,
    inputs: Dict[str, Any],
    return_outputs: bool = False,
    num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
):
    """Loss of one micro-batch, divided by the label tokens of the whole step (`num_items_in_batch`).

    With `compute_loss_func`, the model runs without labels and the function computes the loss from
    (outputs, labels, num_items_in_batch=...), as in transformers.
    """
    if trainer.compute_loss_func is not None:
        inputs = dict(inputs)
        labels = inputs.pop(trainer.label_names[0], None)
        outputs = model(**inputs)
        loss = trainer.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        return (loss, outputs) if return_outputs else loss
    loss_sum, items, outputs = trainer._forward(model, inputs)
    if loss_sum is None:
        raise ConfigError(
            f"the model did not return a loss, only {', '.join(outputs.keys())}; pass labels "
            f"(named in label_names) or override compute_loss."
        )
    if num_items_in_batch is None or (not trainer.model_accepts_loss_kwargs and trainer._overrides("compute_loss")):
        # transformers' default compute_loss gives a model that takes no loss kwargs its own batch mean
        # (and training_step divides it by the micro-batches): a subclass calling super() gets the same
        labels = inputs.get(trainer.label_names[0])
        if items >= 0:
            num_items_in_batch = items
        else:
            assert labels is not None  # items < 0: the loss was computed from the labels
            num_items_in_batch = count_label_tokens(labels.cpu(), trainer.shift if labels.dim() > 1 else 0)
    if isinstance(num_items_in_batch, torch.Tensor):  # (under torchrun the count stays on the device)
        loss = loss_sum / num_items_in_batch.to(loss_sum.device).clamp(min=1)
    else:
        loss = loss_sum / max(int(num_items_in_batch), 1)
    return (loss, outputs) if return_outputs else loss


def training_step(
    trainer: "Trainer",
    model: torch.nn.Module,
    inputs: Dict[str, Any],
    num_items_in_batch: Optional[Union[int, torch.Tensor]] = None,
) -> torch.Tensor:
    """Forward and backward of one micro-batch; returns its share of the step loss (detached)."""
    model.train()
    if callable(getattr(trainer.optimizer, "train", None)):  # schedule-free optimizers switch modes
        trainer.optimizer.train()
    custom = trainer._custom_loss()
    if custom and isinstance(num_items_in_batch, int):
        # transformers hands a custom loss a tensor (.item(), .to() work); a 0-d CPU one costs no sync
        num_items_in_batch = torch.tensor(num_items_in_batch)
    with trainer.rt.autocast():
        # Trainer.compute_loss (trainer.py) is annotated Optional[int] but is given the tensor count too
        loss = trainer.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
    if custom:
        # transformers' rule: a loss not already normalised over the step is divided by the micro-batches
        scaled = (
            trainer.loss_is_scaled_for_ga
            if trainer.loss_is_scaled_for_ga is not None
            else (trainer.model_accepts_loss_kwargs or trainer.compute_loss_func is not None)
        )
        if not scaled:
            loss = loss / trainer.current_gradient_accumulation_steps
        trainer.rt.backward(loss)
    else:
        # DDP averages gradients over ranks; the loss is already over the global token count, so undo that.
        spread = trainer.rt.distributed and trainer.args.average_tokens_across_devices
        trainer.rt.backward(loss * trainer.rt.world_size if spread else loss)
    return loss.detach()
