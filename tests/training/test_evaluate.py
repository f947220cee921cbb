"""The evaluation loop: token-weighted loss independent of the batch size, predictions gathered and padded
across batches as transformers pads them (-100), metrics, and the helpers it is built from."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.trainer_pt_utils import find_batch_size as hf_find_batch_size
from transformers.trainer_pt_utils import nested_concat

from lmtrain.training.evaluate import (
    EvalPrediction,
    Gatherer,
    StepOutput,
    evaluation_loop,
    find_batch_size,
    outputs_to_predictions,
    pad_concat,
)
from tests.conftest import tiny_gpt2

CPU = torch.device("cpu")
VOCAB = 64


def rows(n: int = 13, length: int = 10, seed: int = 0):
    """Rows whose label counts differ (2..9), so a mean of batch means would be wrong."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(1, VOCAB, (length,), generator=g)
        labels = ids.clone()
        labels[2 + (i * 3) % (length - 2) :] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def batches(data, size: int):
    return [{k: torch.stack([r[k] for r in data[i : i + size]]) for k in data[0]} for i in range(0, len(data), size)]


def token_step(model, batch):
    """lmtrain's own evaluation step: (sum of token losses, label tokens), logits and labels."""
    logits = model(input_ids=batch["input_ids"]).logits
    labels = batch["labels"][:, 1:]
    loss_sum = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return StepOutput(loss_sum, int((labels != -100).sum()), logits, batch["labels"])


def by_hand_loss(model, data) -> float:
    """Token-weighted mean loss over the set, one row at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for r in data:
            logits = model(input_ids=r["input_ids"][None]).logits[0, :-1]
            labels = r["labels"][1:]
            keep = labels != -100
            total += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


def run(loader, step, **kw):
    kw.setdefault("prediction_loss_only", False)
    return evaluation_loop(torch.nn.Identity(), loader, device=CPU, step=step, **kw)


# ---- the loss --------------------------------------------------------------------------------------


def test_loss_is_token_weighted_and_independent_of_batch_size():
    data = rows()
    model = tiny_gpt2(vocab_size=VOCAB)
    expected = by_hand_loss(model, data)
    for size in (1, 4, 13):
        out = evaluation_loop(
            model, batches(data, size), device=CPU, step=token_step, prediction_loss_only=True, bytes_per_token=2.5
        )
        assert out.metrics["eval_loss"] == pytest.approx(expected, rel=1e-5), size
        assert out.metrics["eval_perplexity"] == pytest.approx(math.exp(out.metrics["eval_loss"]))
        assert out.metrics["eval_bits_per_byte"] == pytest.approx(out.metrics["eval_loss"] / math.log(2) / 2.5)
        assert out.num_samples == 13


def test_model_is_put_in_eval_mode_and_runs_without_gradients():
    model = tiny_gpt2(vocab_size=VOCAB)
    model.train()
    seen = []

    def step(m, batch):
        seen.append((m.training, torch.is_grad_enabled()))
        return token_step(m, batch)

    evaluation_loop(model, batches(rows(4), 2), device=CPU, step=step, prediction_loss_only=True)
    assert seen == [(False, False), (False, False)]


def _fixed(sums, weights):
    """A step that returns given (loss sum, weight) pairs in turn, with 2 examples per batch."""
    it = iter(zip(sums, weights))

    def step(model, batch):
        s, w = next(it)
        return StepOutput(torch.tensor(s), w, None, None)

    return step, [{"input_ids": torch.ones(2, 3, dtype=torch.long)} for _ in sums]


def test_non_finite_batches_are_left_out_of_the_mean_when_filtering():
    step, loader = _fixed([6.0, float("nan"), 2.0, float("inf")], [3, 5, 1, 2])
    assert run(loader, step).metrics["eval_loss"] == pytest.approx(8.0 / 4)
    step, loader = _fixed([6.0, float("nan"), 2.0], [3, 5, 1])
    assert math.isnan(run(loader, step, nan_inf_filter=False).metrics["eval_loss"])


def test_all_batches_non_finite_gives_a_non_finite_loss():
    step, loader = _fixed([float("nan"), float("nan")], [3, 5])
    assert math.isnan(run(loader, step).metrics["eval_loss"])


def test_without_a_loss_there_is_no_loss_metric():
    def step(model, batch):
        return StepOutput(None, 0.0, batch["input_ids"].float(), None)

    out = run([{"input_ids": torch.ones(2, 3)}], step)
    assert "eval_loss" not in out.metrics and "eval_perplexity" not in out.metrics
    assert {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_tokens_per_second"} <= set(
        out.metrics
    )


def test_prefix_is_added_once():
    def compute_metrics(p):
        return {"test_already": 1.0, "plain": np.float32(2.0)}

    out = run(
        [{"input_ids": torch.ones(2, 3), "labels": torch.ones(2, 3)}],
        lambda m, b: StepOutput(torch.tensor(1.0), 1, b["input_ids"], b["labels"]),
        metric_key_prefix="test",
        compute_metrics=compute_metrics,
    )
    assert out.metrics["test_loss"] == 1.0
    assert out.metrics["test_already"] == 1.0
    assert out.metrics["test_plain"] == 2.0 and type(out.metrics["test_plain"]) is float  # numpy -> python
    assert not any(k.startswith("test_test_") for k in out.metrics)


# ---- predictions across batches of different lengths ---------------------------------------------

LENGTHS = (5, 7, 6)  # the longest batch in the middle: earlier and later ones are padded


def ragged_batches():
    """Three batches of 2, 3 and 2 rows whose sequence lengths differ."""
    out = []
    for b, (n, length) in enumerate(zip((2, 3, 2), LENGTHS)):
        ids = torch.arange(n * length).reshape(n, length) + 100 * b
        labels = ids.clone()
        labels[:, 0] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def fake_logits_step(model, batch):
    """Logits (B, T, 3) that are a function of the ids; the loss is the number of label tokens."""
    ids = batch["input_ids"].float()
    logits = torch.stack([ids, ids * 2, -ids], dim=-1)
    weight = int((batch["labels"] != -100).sum())
    return StepOutput(torch.tensor(float(weight)), weight, logits, batch["labels"])


def hf_gathered(key_fn):
    """What transformers' evaluation loop gathers: nested_concat of each batch's arrays with -100 padding."""
    out = None
    for batch in ragged_batches():
        value = key_fn(batch)
        out = value if out is None else nested_concat(out, value, padding_index=-100)
    return out


@pytest.mark.parametrize("accumulation", [None, 1, 2])
def test_predictions_and_labels_are_padded_with_minus_100_as_transformers(accumulation):
    out = run(ragged_batches(), fake_logits_step, eval_accumulation_steps=accumulation)
    expected_preds = hf_gathered(lambda b: fake_logits_step(None, b).logits.numpy())
    expected_labels = hf_gathered(lambda b: b["labels"].numpy())
    assert out.predictions.shape == (7, 7, 3) and out.label_ids.shape == (7, 7)
    np.testing.assert_array_equal(out.predictions, expected_preds)
    np.testing.assert_array_equal(out.label_ids, expected_labels)
    assert (out.label_ids[:2, 5:] == -100).all() and (out.label_ids[5:, 6:] == -100).all()
    assert out.num_samples == 7


def test_unconcatenated_predictions_stay_one_array_per_batch():
    out = run(ragged_batches(), fake_logits_step, concat_batches=False)
    assert [p.shape for p in out.predictions] == [(2, 5, 3), (3, 7, 3), (2, 6, 3)]
    for got, batch in zip(out.label_ids, ragged_batches()):
        np.testing.assert_array_equal(got, batch["labels"].numpy())


def test_compute_metrics_sees_padded_arrays_inputs_and_per_example_losses():
    seen = {}

    def compute_metrics(p: EvalPrediction):
        seen["p"] = p
        preds, labels, inputs, losses = p
        return {"n": float(len(losses))}

    out = run(
        ragged_batches(),
        fake_logits_step,
        compute_metrics=compute_metrics,
        include_for_metrics=["inputs", "loss"],
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
    )
    p = seen["p"]
    argmax = hf_gathered(lambda b: fake_logits_step(None, b).logits.argmax(-1).numpy())
    np.testing.assert_array_equal(p.predictions, argmax)
    np.testing.assert_array_equal(p.inputs, hf_gathered(lambda b: b["input_ids"].numpy()))
    # the loss of each example is its batch's mean (here: 1 per label token), repeated per example
    np.testing.assert_allclose(p.losses, np.ones(7))
    assert out.metrics["eval_n"] == 7.0
    # the loop's own loss: 1 per label token over all batches
    assert out.metrics["eval_loss"] == pytest.approx(1.0)


def test_batch_eval_metrics_see_one_batch_at_a_time_and_keep_nothing():
    calls = []

    def compute_metrics(p, compute_result):
        calls.append((p.predictions.shape, compute_result))
        return {"batches": float(len(calls))}

    loader = ragged_batches()
    out = run(loader, fake_logits_step, compute_metrics=compute_metrics, batch_eval_metrics=True)
    assert calls == [((2, 5, 3), False), ((3, 7, 3), False), ((2, 6, 3), True)]
    assert out.metrics["eval_batches"] == 3.0
    assert out.predictions is None and out.label_ids is None
    kept = run(
        loader,
        fake_logits_step,
        compute_metrics=lambda p, compute_result: {},
        batch_eval_metrics=True,
        keep_predictions=True,
    )
    assert kept.predictions.shape == (7, 7, 3)


def test_on_batch_is_called_once_per_batch():
    calls = []
    run(ragged_batches(), fake_logits_step, on_batch=lambda: calls.append(1))
    assert len(calls) == 3


def test_bfloat16_logits_come_back_as_float32():
    def step(model, batch):
        return StepOutput(None, 0, batch["input_ids"].to(torch.bfloat16), batch["input_ids"])

    out = run([{"input_ids": torch.tensor([[1, 2], [3, 4]])}], step)
    assert out.predictions.dtype == np.float32
    np.testing.assert_array_equal(out.predictions, [[1, 2], [3, 4]])


# ---- Gatherer and pad_concat -----------------------------------------------------------------------


def test_gatherer_moves_to_host_every_n_batches_and_pads():
    parts = [torch.full((1, n), float(n)) for n in (2, 4, 3)]
    g = Gatherer(every=2)
    g.add(parts[0])
    g.add(None)  # nothing to gather from this batch
    g.maybe_flush(1)
    assert len(g.on_device) == 1 and g.on_host is None
    g.add(parts[1])
    g.maybe_flush(2)
    assert g.on_device == [] and isinstance(g.on_host, np.ndarray)
    g.add(parts[2])
    expected = nested_concat(nested_concat(parts[0].numpy(), parts[1].numpy()), parts[2].numpy())
    np.testing.assert_array_equal(g.result(), expected)
    np.testing.assert_array_equal(g.result(), [[2, 2, -100, -100], [4, 4, 4, 4], [3, 3, 3, -100]])


def test_gatherer_without_batches_gives_none_and_unconcatenated_gives_a_list():
    assert Gatherer(None).result() is None
    g = Gatherer(None, concat=False)
    g.add(torch.zeros(2))
    g.add(torch.ones(3))
    got = g.result()
    assert isinstance(got, list) and [a.tolist() for a in got] == [[0, 0], [1, 1, 1]]


@pytest.mark.parametrize(
    "a, b",
    [
        (np.arange(6).reshape(2, 3), np.arange(8).reshape(2, 4)),  # wider second
        (np.arange(8).reshape(2, 4), np.arange(3).reshape(1, 3)),  # narrower second
        (np.ones((2, 3, 4)), np.zeros((1, 5, 4))),  # logits: padded on the sequence axis only
        (np.arange(3), np.arange(2)),  # one value per example
        (np.float32(1.5), np.float32(2.5)),  # one number per batch
        (np.ones((2, 3)), np.ones((1, 3))),  # same width: plain concatenation
    ],
)
def test_pad_concat_matches_transformers(a, b):
    np.testing.assert_array_equal(pad_concat(a, b), nested_concat(np.atleast_1d(a), np.atleast_1d(b)))


def test_pad_concat_recurses_into_tuples_and_dicts():
    a = (np.ones((1, 2)), {"x": np.zeros((1, 3))})
    b = (np.ones((2, 4)), {"x": np.zeros((1, 1))})
    got = pad_concat(a, b)
    expected = nested_concat(a, b)
    assert isinstance(got, tuple) and isinstance(got[1], dict)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1]["x"], expected[1]["x"])


# ---- find_batch_size, outputs_to_predictions, EvalPrediction -------------------------------------


@pytest.mark.parametrize(
    "batch",
    [
        {"input_ids": torch.zeros(3, 5), "labels": torch.zeros(3, 5)},
        [np.zeros((4, 2))],
        ({"a": None, "b": torch.zeros(2)},),
        {"names": ["x", "y"], "input_ids": torch.zeros(6, 1)},  # a list of strings has no tensor
        {"scalar": torch.tensor(1.0), "ids": torch.zeros(7)},  # a 0-d tensor is skipped
        torch.tensor(3.0),
        {},
        [],
        "text",
    ],
)
def test_find_batch_size_matches_transformers(batch):
    assert find_batch_size(batch) == hf_find_batch_size(batch)


def test_find_batch_size_values():
    assert find_batch_size({"input_ids": torch.zeros(3, 5)}) == 3
    assert find_batch_size({"names": ["x", "y"], "ids": torch.zeros(6, 1)}) == 6
    assert find_batch_size({}) is None


def test_outputs_to_predictions_follows_transformers_rules():
    logits, hidden = torch.randn(2, 3, requires_grad=True), torch.randn(2, 4)
    with_loss = {"loss": torch.tensor(1.0), "logits": logits, "past_key_values": object()}
    got = outputs_to_predictions(with_loss, has_loss=True, ignore_keys=["past_key_values"])
    assert torch.equal(got, logits) and not got.requires_grad  # a single tensor, detached
    # without labels every key but ignore_keys is kept, in order
    got = outputs_to_predictions({"logits": logits, "hidden_states": hidden}, has_loss=False, ignore_keys=[])
    assert isinstance(got, tuple) and len(got) == 2 and torch.equal(got[1], hidden)
    # tuples: the first entry is the loss when there is one
    got = outputs_to_predictions((torch.tensor(1.0), logits, hidden), has_loss=True, ignore_keys=[])
    assert len(got) == 2 and torch.equal(got[0], logits)
    assert torch.equal(outputs_to_predictions((logits,), has_loss=False, ignore_keys=[]), logits)
    assert torch.equal(
        outputs_to_predictions((torch.tensor(1.0), logits, None), has_loss=True, ignore_keys=[]), logits
    )  # None entries are dropped
    assert outputs_to_predictions({"loss": torch.tensor(1.0)}, has_loss=True, ignore_keys=[]) is None
    assert torch.equal(outputs_to_predictions(hidden, has_loss=False, ignore_keys=[]), hidden)


def test_outputs_to_predictions_on_a_real_model_output():
    model = tiny_gpt2(vocab_size=VOCAB)
    ids = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids, use_cache=True)
    # transformers 5 names the key-value cache "cache" (its Trainer's default ignore_keys)
    got = outputs_to_predictions(out, has_loss=True, ignore_keys=["cache"])
    assert isinstance(got, torch.Tensor) and torch.equal(got, out.logits)
    kept = outputs_to_predictions(out, has_loss=True, ignore_keys=[])
    assert len(kept) == 2 and torch.equal(kept[0], out.logits) and kept[1] is out["cache"]


@pytest.mark.parametrize(
    "extra", [{}, {"inputs": np.ones(2)}, {"losses": np.ones(2)}, {"inputs": np.ones(2), "losses": np.zeros(2)}]
)
def test_eval_prediction_unpacks_like_transformers(extra):
    from transformers import EvalPrediction as HFEvalPrediction

    preds, labels = np.zeros((2, 3)), np.ones(2)
    ours, theirs = EvalPrediction(preds, labels, **extra), HFEvalPrediction(preds, labels, **extra)
    assert len(ours) == len(tuple(theirs)) == 2 + len(extra)
    assert all(a is b for a, b in zip(ours, theirs))
    assert all(ours[i] is theirs[i] for i in range(len(ours)))
    assert ours[0] is preds and ours[1] is labels
    p, y, *rest = ours
    assert p is preds and len(rest) == len(extra)
