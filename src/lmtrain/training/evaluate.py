"""Evaluation loop: loss over the whole set, optional predictions and user metrics.

The loop takes a `step` function: for one batch it returns the batch's loss *sum* and the weight it
stands for, plus predictions and labels. lmtrain's own step gives (sum of token losses, label tokens),
so `eval_loss` is token-weighted and does not depend on the batch size; a Trainer whose
`compute_loss` or `prediction_step` is overridden goes through transformers' route instead (batch mean
loss weighted by the eval batch size), so its numbers match transformers'.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import numpy as np
import torch

from ..data.loader import batch_tokens, to_device


class EvalPrediction:
    """What `compute_metrics` receives (transformers' name and fields)."""

    def __init__(self, predictions: Any, label_ids: Any, inputs: Any = None, losses: Any = None) -> None:
        self.predictions = predictions
        self.label_ids = label_ids
        self.inputs = inputs
        self.losses = losses
        self.elements = (predictions, label_ids) + tuple(x for x in (inputs, losses) if x is not None)

    def __iter__(self):
        return iter(self.elements)

    def __getitem__(self, i: int) -> Any:
        return self.elements[i]

    def __len__(self) -> int:
        return len(self.elements)


class PredictionOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: Optional[Dict[str, float]]


class EvalLoopOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: Dict[str, float]
    num_samples: int


class StepOutput(NamedTuple):
    """One evaluation batch: loss sum (a device tensor, or None), its weight, predictions, labels."""

    loss_sum: Optional[torch.Tensor]
    weight: float
    logits: Any
    labels: Any


def _to_numpy(t: Any) -> Any:
    if isinstance(t, (list, tuple)):
        return type(t)(_to_numpy(x) for x in t)
    if isinstance(t, dict):
        return {k: _to_numpy(v) for k, v in t.items()}
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()  # numpy has no bfloat16
    return t


def pad_concat(a: Any, b: Any, pad: int = -100) -> Any:
    """Concatenate along the batch axis, padding the second axis when lengths differ (as transformers);
    tuples, lists and dicts of arrays are concatenated element by element."""
    if isinstance(a, (list, tuple)):
        return type(a)(pad_concat(x, y, pad) for x, y in zip(a, b))
    if isinstance(a, dict):
        return {k: pad_concat(a[k], b[k], pad) for k in a}
    a, b = np.atleast_1d(a), np.atleast_1d(b)  # one number per batch (or example) still concatenates
    if a.ndim < 2 or a.shape[1:] == b.shape[1:]:
        return np.concatenate([a, b], axis=0)
    shape = (a.shape[0] + b.shape[0], max(a.shape[1], b.shape[1]), *a.shape[2:])
    out = np.full(shape, pad, dtype=np.result_type(a.dtype, b.dtype))
    out[: a.shape[0], : a.shape[1]] = a
    out[a.shape[0] :, : b.shape[1]] = b
    return out


class Gatherer:
    """Collects per-batch outputs on the device, moving them to host numpy every `every` batches."""

    def __init__(self, every: Optional[int], concat: bool = True) -> None:
        self.every, self.concat = every, concat
        self.on_device: List[Any] = []
        self.on_host: Any = None

    def add(self, t: Any) -> None:
        if t is not None:
            self.on_device.append(t)

    def flush(self) -> None:
        for t in self.on_device:
            arr = _to_numpy(t)
            if not self.concat:
                self.on_host = (self.on_host or []) + [arr]
            else:
                self.on_host = arr if self.on_host is None else pad_concat(self.on_host, arr)
        self.on_device = []

    def maybe_flush(self, batches_seen: int) -> None:
        if self.every and batches_seen % self.every == 0:
            self.flush()

    def result(self) -> Any:
        self.flush()
        return self.on_host


def evaluation_loop(
    model: torch.nn.Module,
    dataloader: Any,
    *,
    device: torch.device,
    step: Callable[[torch.nn.Module, Dict[str, Any]], StepOutput],
    prediction_loss_only: bool,
    eval_accumulation_steps: Optional[int] = None,
    compute_metrics: Optional[Callable[..., Dict[str, float]]] = None,
    preprocess_logits_for_metrics: Optional[Callable[[Any, Any], Any]] = None,
    bytes_per_token: Optional[float] = None,
    metric_key_prefix: str = "eval",
    on_batch: Optional[Callable[[], None]] = None,
    concat_batches: bool = True,
    include_for_metrics: Optional[List[str]] = None,
    batch_eval_metrics: bool = False,
    nan_inf_filter: bool = True,
    main_input_name: str = "input_ids",
    keep_predictions: bool = False,
) -> EvalLoopOutput:
    """Run `step` over `dataloader` without gradients; loss = sum of loss sums / sum of weights.

    `nan_inf_filter` (transformers' logging_nan_inf_filter): batches whose loss is not finite are left
    out of the mean, as long as some batch is finite. With `batch_eval_metrics` compute_metrics sees one
    batch at a time and nothing is kept, unless `keep_predictions` (predict(), as transformers).
    """
    model.eval()
    start = time.perf_counter()
    include = set(include_for_metrics or [])
    loss_sums: List[torch.Tensor] = []
    weights: List[float] = []
    input_tokens = num_samples = batches = 0
    gather = [Gatherer(eval_accumulation_steps, concat_batches) for _ in range(4)]
    preds, labels, inputs_g, losses_g = gather
    metrics: Dict[str, float] = {}
    with torch.no_grad():
        for batches, batch in enumerate(dataloader, start=1):
            observed = find_batch_size(batch) or 0
            num_samples += observed
            input_tokens += batch_tokens(batch)
            batch = to_device(batch, device)
            out = step(model, batch)
            batch_losses = None
            if out.loss_sum is not None:
                loss_sums.append(out.loss_sum.detach().double().reshape(()))
                weights.append(out.weight)
                # transformers' losses array: the batch's mean loss once per example
                batch_losses = (out.loss_sum.detach() / max(out.weight, 1)).reshape(1).repeat(max(observed, 1))
            logits = out.logits
            if logits is not None and preprocess_logits_for_metrics is not None:
                logits = preprocess_logits_for_metrics(logits, out.labels)
            keep_all = not batch_eval_metrics or keep_predictions
            if keep_all:
                if "loss" in include:
                    losses_g.add(batch_losses)
                if "inputs" in include:
                    inputs_g.add(batch.get(main_input_name))
                preds.add(logits)
                labels.add(None if out.labels is None else _detach(out.labels))
            if on_batch is not None:
                on_batch()
            if batch_eval_metrics:
                if compute_metrics is not None and logits is not None and out.labels is not None:
                    last = hasattr(dataloader, "__len__") and batches == len(dataloader)
                    metrics = compute_metrics(
                        EvalPrediction(
                            logits,
                            out.labels,
                            inputs=batch if "inputs" in include else None,
                            losses=batch_losses if "loss" in include else None,
                        ),
                        compute_result=last,
                    )
            else:
                for g in gather:
                    g.maybe_flush(batches)
    runtime = time.perf_counter() - start
    if loss_sums:
        sums = torch.stack(loss_sums).cpu().numpy()  # one synchronisation for the whole set
        w = np.asarray(weights, dtype=np.float64)
        finite = np.isfinite(sums)
        if nan_inf_filter and finite.any():
            sums, w = sums[finite], w[finite]
        if w.sum() > 0:
            loss = float(sums.sum() / w.sum())
            metrics["loss"] = loss
            metrics["perplexity"] = math.exp(loss) if loss < 700 else float("inf")
            if bytes_per_token:
                metrics["bits_per_byte"] = loss / math.log(2) / bytes_per_token
    predictions, label_ids = preds.result(), labels.result()
    if compute_metrics is not None and not batch_eval_metrics and predictions is not None and label_ids is not None:
        extra = {
            "inputs": inputs_g.result() if "inputs" in include else None,
            "losses": losses_g.result() if "loss" in include else None,
        }
        metrics.update(compute_metrics(EvalPrediction(predictions=predictions, label_ids=label_ids, **extra)))
    metrics = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
    metrics["runtime"] = round(runtime, 4)
    metrics["samples_per_second"] = round(num_samples / runtime, 3) if runtime > 0 else 0.0
    metrics["steps_per_second"] = round(batches / runtime, 3) if runtime > 0 and num_samples else 0.0
    metrics["tokens_per_second"] = round(input_tokens / runtime, 1) if runtime > 0 else 0.0
    prefixed = {
        k if k.startswith(f"{metric_key_prefix}_") else f"{metric_key_prefix}_{k}": v for k, v in metrics.items()
    }
    return EvalLoopOutput(predictions, label_ids, prefixed, num_samples)


def find_batch_size(batch: Any) -> Optional[int]:
    """First dimension of the first tensor in a (nested) batch, as transformers' find_batch_size."""
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for t in batch:
            size = find_batch_size(t)
            if size is not None:
                return size
        return None
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return batch.shape[0] if batch.ndim >= 1 else None
    return None


def _detach(t: Any) -> Any:
    if isinstance(t, (list, tuple)):
        return type(t)(_detach(x) for x in t)
    return t.detach() if isinstance(t, torch.Tensor) else t


def outputs_to_predictions(outputs: Any, has_loss: bool, ignore_keys: List[str]) -> Any:
    """transformers' rule for what a model output contributes as predictions: every entry but the loss
    (and `ignore_keys`, e.g. past_key_values), a single tensor when only one is left."""
    if isinstance(outputs, dict):  # without labels transformers keeps every key but ignore_keys
        drop = [*ignore_keys, "loss"] if has_loss else list(ignore_keys)
        logits = tuple(v for k, v in outputs.items() if k not in drop)
    elif isinstance(outputs, (tuple, list)):
        logits = tuple(outputs[1:] if has_loss else outputs)
    else:
        logits = (outputs,)
    logits = tuple(_detach(v) for v in logits if v is not None)
    if not logits:
        return None
    return logits[0] if len(logits) == 1 else logits
