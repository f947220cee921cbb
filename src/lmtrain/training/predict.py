"""The Trainer's evaluation and prediction: which step a batch goes through, and the metrics.

lmtrain's own step sums token losses (so `eval_loss` does not depend on the batch size); a Trainer
subclass that overrides `compute_loss` or `prediction_step` gets transformers' route instead, each
batch's mean loss weighted by its number of examples, as transformers averages them.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch

from ..data.collators import IGNORE_INDEX
from .evaluate import (
    EvalLoopOutput,
    PredictionOutput,
    StepOutput,
    _detach,
    evaluation_loop,
    find_batch_size,
    outputs_to_predictions,
)
from .extras import memory_tracker
from .loss import count_label_tokens

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


def _inference_keys(model: torch.nn.Module) -> List[str]:
    """Outputs that are not predictions (the model config's keys_to_ignore_at_inference)."""
    config = getattr(model, "config", None)
    return list(getattr(config, "keys_to_ignore_at_inference", ["cache"]) or []) if config is not None else []


def prediction_step(
    trainer: "Trainer",
    model: torch.nn.Module,
    inputs: Dict[str, Any],
    prediction_loss_only: bool,
    ignore_keys: Optional[List[str]] = None,
) -> Tuple[Any, Any, Any]:
    """(mean loss, predictions, labels) of one batch, through `compute_loss` (transformers' route)."""
    has_labels = bool(trainer.label_names) and all(inputs.get(k) is not None for k in trainer.label_names)
    inputs = trainer._prepare_inputs(inputs)
    if ignore_keys is None:
        ignore_keys = _inference_keys(trainer.model)
    labels = batch_labels(trainer, inputs) if has_labels else None
    with torch.no_grad(), trainer.rt.autocast():
        if has_labels:
            loss, outputs = trainer.compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=eval_items(trainer, inputs)
            )
            loss = loss.detach().mean()
        else:
            loss, outputs = None, model(**inputs)
    if prediction_loss_only:
        return loss, None, None
    return loss, outputs_to_predictions(outputs, has_labels, ignore_keys), labels


def batch_labels(trainer: "Trainer", inputs: Dict[str, Any]) -> Any:
    """The batch's labels as transformers returns them: one tensor, or a tuple for several label_names."""
    labels = tuple(_detach(inputs.get(k)) for k in trainer.label_names)
    return labels[0] if len(labels) == 1 else labels


def eval_items(trainer: "Trainer", inputs: Dict[str, Any]) -> Any:
    """transformers' num_items_in_batch in evaluation: the batch's label tokens, when the model or
    compute_loss_func normalises by it (else None)."""
    labels = inputs.get("labels")
    if not isinstance(labels, torch.Tensor) or not (trainer.model_accepts_loss_kwargs or trainer.compute_loss_func):
        return None
    if trainer.shift and labels.dim() > 1:
        labels = labels[..., trainer.shift :]
    return labels.ne(IGNORE_INDEX).sum()


def fast_eval_step(
    trainer: "Trainer", only_loss: bool, ignore_keys: List[str], model: torch.nn.Module, batch: Dict[str, Any]
) -> StepOutput:
    """lmtrain's own step: a token-weighted loss sum, logits as predictions."""
    loss_sum: Optional[torch.Tensor]
    with trainer.rt.autocast():
        loss_sum, items, outputs = trainer._forward(model, batch)
    labels = batch.get(trainer.label_names[0])
    has_labels = labels is not None and all(batch.get(k) is not None for k in trainer.label_names)
    if labels is None:
        weight, loss_sum = 0, None
    else:
        weight = items if items >= 0 else count_label_tokens(labels, trainer.shift if labels.dim() > 1 else 0)
    if only_loss:
        return StepOutput(loss_sum, weight, None, None)
    if items >= 0:  # the model computed its own loss: its outputs' other entries are the predictions
        logits = outputs_to_predictions(outputs, labels is not None, ignore_keys)
    else:  # the forward ran without labels: every output but ignore_keys (the logits, usually alone)
        logits = outputs_to_predictions(outputs, isinstance(outputs, dict), ignore_keys)
    return StepOutput(loss_sum, weight, logits, batch_labels(trainer, batch) if has_labels else None)


def compat_eval_step(
    trainer: "Trainer", only_loss: bool, ignore_keys: Optional[List[str]], model: torch.nn.Module, batch: Dict[str, Any]
) -> StepOutput:
    """transformers' route (an overridden compute_loss/prediction_step): each batch's mean loss weighted
    by its number of examples, as transformers' evaluation_loop averages them."""
    loss, logits, labels = trainer.prediction_step(model, batch, only_loss, ignore_keys=ignore_keys)
    size = find_batch_size(batch) or 1
    return StepOutput(None if loss is None else loss * size, size, logits, labels)


def run_evaluation_loop(
    trainer: "Trainer",
    dataloader: Any,
    description: str,
    prediction_loss_only: Optional[bool] = None,
    ignore_keys: Optional[List[str]] = None,
    metric_key_prefix: str = "eval",
) -> EvalLoopOutput:
    args = trainer.args
    only_loss = args.prediction_loss_only if prediction_loss_only is None else prediction_loss_only
    if not trainer.is_in_train and (args.bf16_full_eval or args.fp16_full_eval):
        trainer.model.to(dtype=torch.bfloat16 if args.bf16_full_eval else torch.float16)
    if trainer._custom_loss() or trainer._overrides("prediction_step"):
        # (ignore_keys None: prediction_step picks the model's keys_to_ignore_at_inference)
        step = functools.partial(compat_eval_step, trainer, only_loss, ignore_keys)
    else:
        keys = list(ignore_keys) if ignore_keys is not None else _inference_keys(trainer.model)
        step = functools.partial(fast_eval_step, trainer, only_loss, keys)
    if callable(getattr(trainer.optimizer, "eval", None)):  # schedule-free: evaluate the averaged weights
        trainer.optimizer.eval()
    trainer.callback_handler.eval_dataloader = dataloader
    dataset = getattr(dataloader, "dataset", None)
    dataset = getattr(dataset, "dataset", dataset)  # lmtrain's seeded wrapper
    return evaluation_loop(
        trainer.model,
        dataloader,
        device=trainer.rt.device,
        step=step,
        prediction_loss_only=only_loss,
        eval_accumulation_steps=args.eval_accumulation_steps,
        compute_metrics=trainer.compute_metrics,
        preprocess_logits_for_metrics=trainer.preprocess_logits_for_metrics,
        bytes_per_token=getattr(dataset, "bytes_per_token", None),
        metric_key_prefix=metric_key_prefix,
        on_batch=lambda: trainer._fire_event("on_prediction_step"),
        concat_batches=args.eval_do_concat_batches,
        include_for_metrics=args.include_for_metrics,
        batch_eval_metrics=args.batch_eval_metrics,
        nan_inf_filter=args.logging_nan_inf_filter,
        main_input_name=getattr(trainer.model, "main_input_name", "input_ids"),
        keep_predictions=description == "Prediction",
    )


def evaluate(
    trainer: "Trainer",
    eval_dataset: Any = None,
    ignore_keys: Optional[List[str]] = None,
    metric_key_prefix: str = "eval",
) -> Dict[str, float]:
    """Loss (token-weighted), perplexity, bits per byte (when known) and compute_metrics, all prefixed."""
    override = eval_dataset is not None
    dataset = eval_dataset if override else trainer.eval_dataset
    if isinstance(dataset, dict):
        metrics: Dict[str, float] = {}
        for name, ds in dataset.items():
            metrics.update(trainer.evaluate(ds if override else name, ignore_keys, f"{metric_key_prefix}_{name}"))
        return metrics
    tracker = memory_tracker(trainer.args)
    loader = trainer.get_eval_dataloader(dataset)
    only_loss = True if trainer.compute_metrics is None else None  # nothing would read the predictions
    metrics = trainer.evaluation_loop(loader, "Evaluation", only_loss, ignore_keys, metric_key_prefix).metrics
    trainer.log(metrics)
    trainer.control = trainer._fire("on_evaluate", metrics=metrics)
    if tracker is not None:
        tracker.stop_and_update_metrics(metrics)
    return metrics


def predict(
    trainer: "Trainer", test_dataset: Any, ignore_keys: Optional[List[str]] = None, metric_key_prefix: str = "test"
) -> PredictionOutput:
    tracker = memory_tracker(trainer.args)
    loader = trainer.get_test_dataloader(test_dataset)
    out = trainer.evaluation_loop(loader, "Prediction", None, ignore_keys, metric_key_prefix)
    trainer.control = trainer._fire("on_predict", metrics=out.metrics)
    if tracker is not None:
        tracker.stop_and_update_metrics(out.metrics)
    return PredictionOutput(out.predictions, out.label_ids, out.metrics)
