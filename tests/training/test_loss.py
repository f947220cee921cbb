"""The token-weighted loss: which models shift their labels, how label tokens are counted, the summed
cross-entropy (shift, ignore_index, label smoothing) against a computation by hand, and where logits are read."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lmtrain.training.loss import count_label_tokens, label_shift, output_logits, token_loss_sum
from tests.conftest import tiny_gpt2


class Wrapper(nn.Module):
    """Stands for DDP: the model under `.module`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_label_shift_of_causal_masked_and_wrapped_models():
    from transformers import BertConfig, BertForMaskedLM, GPT2ForSequenceClassification, LlamaConfig, LlamaForCausalLM

    gpt2 = tiny_gpt2()
    llama = LlamaForCausalLM(
        LlamaConfig(
            num_hidden_layers=1,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=64,
        )
    )
    bert = BertForMaskedLM(
        BertConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2, vocab_size=64)
    )
    assert label_shift(gpt2) == 1 and label_shift(llama) == 1
    assert label_shift(bert) == 0 and label_shift(GPT2ForSequenceClassification(gpt2.config)) == 0
    compiled = torch.compile(gpt2)  # compiles lazily: nothing runs here
    assert label_shift(compiled) == 1 and label_shift(Wrapper(compiled)) == 1 and label_shift(Wrapper(bert)) == 0
    # a causal LM of transformers' causal-LM mapping whose class name has neither usual suffix
    assert label_shift(type("ReformerModelWithLMHead", (nn.Module,), {})()) == 1
    assert label_shift(nn.Linear(2, 2)) == 0


def test_count_label_tokens_skips_ignored_and_the_shifted_column():
    labels = torch.tensor([[5, -100, 7, 8], [-100, 1, 2, -100]])
    assert count_label_tokens(labels, 0) == 5
    assert count_label_tokens(labels, 1) == 4  # the first position is never a next-token target
    assert count_label_tokens(torch.tensor([3, -100, 0]), 0) == 2
    assert count_label_tokens(torch.full((2, 3), -100), 1) == 0


def by_hand(logits: torch.Tensor, labels: torch.Tensor, shift: int, eps: float) -> float:
    """Per token: (1 - eps) * -log p(label) + eps * mean over the vocabulary of -log p, summed in float64."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    total = 0.0
    batch, length, vocab = logits.shape
    for b in range(batch):
        for t in range(length - shift):
            y = int(labels[b, t + shift])
            if y == -100:
                continue
            total += (1 - eps) * -float(logp[b, t, y]) + eps * -float(logp[b, t].sum()) / vocab
    return total


@pytest.mark.parametrize("shift", [0, 1])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_token_loss_sum_matches_a_computation_by_hand(shift, eps):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = torch.randint(0, 11, (2, 6), generator=g)
    labels[0, 2] = labels[1, 0] = labels[1, 5] = -100
    got = token_loss_sum(logits, labels, shift, eps)
    assert got.dtype == torch.float32 and got.shape == ()
    assert float(got) == pytest.approx(by_hand(logits, labels, shift, eps), rel=1e-6)


def test_token_loss_sum_upcasts_bf16_logits_and_gives_zero_without_labels():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g).bfloat16()
    labels = torch.randint(0, 7, (2, 5), generator=g)
    got = token_loss_sum(logits, labels, 1)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(by_hand(logits.float(), labels, 1, 0.0), rel=1e-6)
    assert float(token_loss_sum(logits, torch.full((2, 5), -100), 1)) == 0.0


def test_sum_over_label_tokens_equals_transformers_label_smoother():
    from transformers.trainer_pt_utils import LabelSmoother

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 8, 13, generator=g)
    labels = torch.randint(0, 13, (3, 8), generator=g)
    labels[:, 5:] = -100
    theirs = LabelSmoother(epsilon=0.1)({"logits": logits}, labels, shift_labels=True)
    ours = token_loss_sum(logits, labels, 1, 0.1) / count_label_tokens(labels, 1)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


def test_output_logits_from_dict_model_output_tuple_and_attribute():
    from transformers.modeling_outputs import CausalLMOutput

    t = torch.zeros(1, 2, 3)
    assert output_logits({"logits": t, "loss": None}) is t
    assert output_logits(CausalLMOutput(logits=t)) is t
    assert output_logits(CausalLMOutput(loss=torch.tensor(1.0), logits=t)) is t  # not the loss in front
    assert output_logits((t, "rest")) is t
    assert output_logits(type("Out", (), {"logits": t})()) is t


def test_model_level_loss_equals_the_mean_transformers_computes():
    """token_loss_sum / label tokens is the loss a transformers causal LM returns for the same labels."""
    model = tiny_gpt2()
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[1, 4:] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    ours = token_loss_sum(out.logits, labels, label_shift(model)) / count_label_tokens(labels, 1)
    assert math.isclose(float(ours), float(out.loss), rel_tol=1e-6)
