"""Evaluation loop: token-weighted loss over the whole set, optional predictions and user metrics."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import numpy as np
import torch

from .data import batch_tokens, to_device
from .loss import count_label_tokens


class EvalPrediction:
    """What `compute_metrics` receives (transformers' name and fields)."""

    def __init__(self, predictions: Any, label_ids: Any, inputs: Any = None, losses: Any = None) -> None:
        self.predictions = predictions
        self.label_ids = label_ids
        self.inputs = inputs
        self.losses = losses

    def __iter__(self):
        return iter((self.predictions, self.label_ids))

    def __getitem__(self, i: int) -> Any:
        return (self.predictions, self.label_ids)[i]


class PredictionOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: Optional[Dict[str, float]]


class EvalLoopOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: Dict[str, float]
    num_samples: int


def _pad_concat(a: np.ndarray, b: np.ndarray, pad: int = -100) -> np.ndarray:
    """Concatenate along the batch axis, padding the second axis when lengths differ (like transformers)."""
    if a.ndim < 2 or a.shape[1:] == b.shape[1:]:
        return np.concatenate([a, b], axis=0)
    shape = (a.shape[0] + b.shape[0], max(a.shape[1], b.shape[1]), *a.shape[2:])
    out = np.full(shape, pad, dtype=np.result_type(a.dtype, b.dtype))
    out[: a.shape[0], : a.shape[1]] = a
    out[a.shape[0] :, : b.shape[1]] = b
    return out


@dataclass
class _Gatherer:
    """Collects tensors on the device, moving them to host numpy every `every` batches."""

    every: Optional[int]
    on_device: Optional[List[torch.Tensor]] = None
    on_host: Optional[np.ndarray] = None

    def add(self, t: torch.Tensor) -> None:
        if self.on_device is None:
            self.on_device = []
        self.on_device.append(t)

    def flush(self) -> None:
        for t in self.on_device or []:
            arr = t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
            self.on_host = arr if self.on_host is None else _pad_concat(self.on_host, arr)
        self.on_device = None

    def maybe_flush(self, batches_seen: int) -> None:
        if self.every and batches_seen % self.every == 0:
            self.flush()

    def result(self) -> Optional[np.ndarray]:
        self.flush()
        return self.on_host


def evaluation_loop(
    model: torch.nn.Module,
    dataloader: Any,
    *,
    device: torch.device,
    autocast: Callable[[], Any],
    shift: int,
    loss_fn: Callable[[torch.nn.Module, Dict[str, Any]], tuple],
    label_names: List[str],
    prediction_loss_only: bool,
    eval_accumulation_steps: Optional[int],
    compute_metrics: Optional[Callable[[EvalPrediction], Dict[str, float]]] = None,
    preprocess_logits_for_metrics: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    bytes_per_token: Optional[float] = None,
    metric_key_prefix: str = "eval",
    on_batch: Optional[Callable[[], None]] = None,
) -> EvalLoopOutput:
    """Run `model` over `dataloader` without gradients.

    `loss_fn(model, batch)` returns (sum of token losses, logits or None); sums and label-token counts
    stay on the device until the end, so the loss is exact and costs one synchronisation.
    """
    model.eval()
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    label_tokens = 0
    input_tokens = 0
    num_samples = 0
    want_preds = not prediction_loss_only
    preds, labels = _Gatherer(eval_accumulation_steps), _Gatherer(eval_accumulation_steps)
    label_key = label_names[0] if label_names else "labels"
    has_labels = False
    step = 0
    with torch.no_grad():
        for step, batch in enumerate(dataloader, start=1):
            host_labels = batch.get(label_key)
            num_samples += len(next(iter(batch.values())))
            input_tokens += batch_tokens(batch)
            batch = to_device(batch, device)
            with autocast():
                batch_loss, logits = loss_fn(model, batch)
            if host_labels is not None:
                has_labels = True
                label_tokens += count_label_tokens(host_labels, shift)
                loss_sum += batch_loss.double()
            if want_preds and logits is not None:
                if preprocess_logits_for_metrics is not None:
                    logits = preprocess_logits_for_metrics(logits, batch.get(label_key))
                preds.add(logits.detach())
                if host_labels is not None:
                    labels.add(batch[label_key].detach())
                preds.maybe_flush(step)
                labels.maybe_flush(step)
            if on_batch is not None:
                on_batch()
    runtime = time.perf_counter() - start
    metrics: Dict[str, float] = {}
    if has_labels and label_tokens > 0:
        loss = float(loss_sum) / label_tokens
        metrics["loss"] = loss
        metrics["perplexity"] = math.exp(loss) if loss < 700 else float("inf")
        if bytes_per_token:
            metrics["bits_per_byte"] = loss / math.log(2) / bytes_per_token
    predictions, label_ids = preds.result(), labels.result()
    if compute_metrics is not None and predictions is not None and label_ids is not None:
        metrics.update(compute_metrics(EvalPrediction(predictions=predictions, label_ids=label_ids)))
    metrics["runtime"] = round(runtime, 4)
    metrics["samples_per_second"] = round(num_samples / runtime, 3) if runtime > 0 else 0.0
    metrics["steps_per_second"] = round(step / runtime, 3) if runtime > 0 and num_samples else 0.0
    metrics["tokens_per_second"] = round(input_tokens / runtime, 1) if runtime > 0 else 0.0
    prefixed = {k if k.startswith(f"{metric_key_prefix}_") else f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
    return EvalLoopOutput(predictions, label_ids, prefixed, num_samples)
