"""Token-weighted language-model loss.

A step's loss is the sum of per-token losses over the whole effective batch divided by the number of
label tokens in it, whatever the split into micro-batches (and later ranks). Evaluation adds sums and
counts over the whole set, so `eval_loss` does not depend on the eval batch size.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ..data.collators import IGNORE_INDEX
from ..distributed import unwrap


def label_shift(model: torch.nn.Module) -> int:
    """1 when the model predicts the *next* token (causal LM: labels are shifted inside), else 0."""
    name = type(unwrap(model)).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return 1
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
            return 1
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    return 0


def count_label_tokens(labels: torch.Tensor, shift: int) -> int:
    """Label tokens that count towards the loss (done on the host copy: no device synchronisation)."""
    if shift:
        labels = labels[..., shift:]
    return int((labels != IGNORE_INDEX).sum())


def token_loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, shift: int, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Sum of cross-entropy over label tokens, in float32 whatever the logits' dtype.

    For a causal LM the *labels* are shifted (padded with IGNORE_INDEX at the end), not the logits:
    slicing the logits would copy the largest tensor of the step.

    With `label_smoothing` = epsilon each token's loss is (1 - epsilon) * NLL + epsilon * mean over the
    vocabulary of -log p, so sum / label tokens equals transformers' LabelSmoother with that epsilon.
    """
    labels = labels.to(logits.device)
    if shift:
        labels = F.pad(labels[..., shift:], (0, shift), value=IGNORE_INDEX)
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
        label_smoothing=label_smoothing,
    )


def output_logits(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, Mapping):
        return outputs["logits"]
    if hasattr(outputs, "logits"):
        return outputs.logits
    return outputs[0]
