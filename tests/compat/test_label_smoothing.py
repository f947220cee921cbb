"""token_loss_sum / label tokens with label_smoothing equals transformers' LabelSmoother."""

import pytest
import torch
from transformers.trainer_pt_utils import LabelSmoother

from lmtrain.training.loss import IGNORE_INDEX, count_label_tokens, token_loss_sum


def _batch(seed=0, vocab=11):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 9, vocab, generator=gen) * 3
    labels = torch.randint(0, vocab, (3, 9), generator=gen)
    labels[0, :4] = IGNORE_INDEX  # a prompt that is masked out
    labels[2, -3:] = IGNORE_INDEX  # padding
    labels[1, torch.randint(0, 9, (3,), generator=gen)] = IGNORE_INDEX
    return logits, labels


def _ours(logits, labels, shift, eps):
    return (token_loss_sum(logits, labels, shift, label_smoothing=eps) / count_label_tokens(labels, shift)).item()


@pytest.mark.parametrize("eps", [0.1, 0.3])
@pytest.mark.parametrize("shift", [1, 0], ids=["causal", "masked"])
def test_equals_label_smoother(shift, eps):
    logits, labels = _batch(seed=shift)
    expected = LabelSmoother(epsilon=eps)({"logits": logits}, labels, shift_labels=bool(shift)).item()
    assert _ours(logits, labels, shift, eps) == pytest.approx(expected, abs=1e-6, rel=0)


def test_smoothing_changes_the_loss_and_zero_is_plain_cross_entropy():
    logits, labels = _batch()
    plain = _ours(logits, labels, 1, 0.0)
    assert token_loss_sum(logits, labels, 1).item() == token_loss_sum(logits, labels, 1, 0.0).item()
    assert abs(_ours(logits, labels, 1, 0.1) - plain) > 1e-3
    expected = LabelSmoother(epsilon=0.0)({"logits": logits}, labels, shift_labels=True).item()
    assert plain == pytest.approx(expected, abs=1e-6, rel=0)


def test_half_precision_logits_are_summed_in_float32():
    logits, labels = _batch()
    half = _ours(logits.bfloat16(), labels, 0, 0.1)
    full = _ours(logits.bfloat16().float(), labels, 0, 0.1)
    assert half == pytest.approx(full, abs=1e-6, rel=0)
