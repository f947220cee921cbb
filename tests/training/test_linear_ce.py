"""The chunked linear + cross-entropy equals F.cross_entropy on full logits: values and gradients, at the
function level and through whole transformers models and the Trainer."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from lmtrain import Trainer, TrainingArguments
from lmtrain.training import forward as forward_module
from lmtrain.training import linear_ce
from lmtrain.training.linear_ce import fusion_status, linear_cross_entropy_sum, lm_loss_sum_fused
from lmtrain.training.loss import label_shift, token_loss_sum
from tests.conftest import tiny_gpt2

N, H, V = 37, 16, 50  # 37 rows: no chunk size below divides them


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error in norm (elementwise relative errors blow up on entries that are zero in exact math)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def problem(dtype=torch.float32, bias=True, seed=0, ignore_every=4):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(V, H, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(V, generator=g, dtype=dtype).requires_grad_() if bias else None
    labels = torch.randint(0, V, (N,), generator=g)
    labels[::ignore_every] = -100
    return hidden, weight, b, labels


def reference(hidden, weight, bias, labels, eps, upcast=True):
    logits = hidden @ weight.T + (bias if bias is not None else 0)
    return F.cross_entropy(
        logits.float() if upcast else logits, labels, ignore_index=-100, reduction="sum", label_smoothing=eps
    )


def grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 1000])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_cross_entropy_in_float32(eps, chunk, bias):
    hidden, weight, b, labels = problem(bias=bias)
    ref = reference(hidden, weight, b, labels, eps)
    out = linear_cross_entropy_sum(hidden, weight, labels, b, label_smoothing=eps, chunk_size=chunk)
    assert out.dtype == torch.float32 and out.shape == ()
    assert rel(out, ref) < 1e-6
    for got, want in zip(grads(out, (hidden, weight, b)), grads(ref, (hidden, weight, b))):
        assert got.dtype == want.dtype and rel(got, want) < 1e-6


@pytest.mark.parametrize("eps", [0.0, 0.25])
def test_float64_gradients_are_exact(eps):
    """In float64 the only difference left is summation order: agreement to ~1e-15 proves the formulas."""
    hidden, weight, b, labels = problem(torch.float64)
    ref = reference(hidden, weight, b, labels, eps, upcast=False)
    out = linear_cross_entropy_sum(hidden, weight, labels, b, label_smoothing=eps, chunk_size=6)
    assert out.dtype == torch.float32 and rel(out, ref) < 1e-7  # the sum is returned in float32
    for got, want in zip(grads(out, (hidden, weight, b)), grads(ref, (hidden, weight, b))):
        assert got.dtype == torch.float64 and rel(got, want) < 1e-12


def test_all_tokens_ignored_give_zero_loss_and_zero_gradients():
    hidden, weight, b, labels = problem()
    labels[:] = -100
    out = linear_cross_entropy_sum(hidden, weight, labels, b, label_smoothing=0.1, chunk_size=8)
    assert float(out.detach()) == 0.0
    for g in grads(out, (hidden, weight, b)):
        assert torch.count_nonzero(g) == 0


def test_gradients_scale_with_the_incoming_gradient_and_survive_retain_graph():
    hidden, weight, b, labels = problem()
    out = linear_cross_entropy_sum(hidden, weight, labels, b, chunk_size=8)
    (out * 3.0).backward(retain_graph=True)
    first = hidden.grad.clone()
    (out * 3.0).backward()  # a second backward adds the same again: the stored gradients were not scaled in place
    ref = grads(reference(hidden, weight, b, labels, 0.0) * 3.0, (hidden,))[0]
    assert rel(first, ref) < 1e-6 and rel(hidden.grad, 2 * ref) < 1e-6


def test_tied_weight_accumulates_both_uses():
    """A head tied to the input embedding: the gradient is the embedding's plus the head's."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(V, H)
    ids = torch.randint(0, V, (N,))
    labels = torch.roll(ids, -1)

    def run(fused: bool):
        emb.zero_grad()
        hidden = torch.tanh(emb(ids))
        loss = (
            linear_cross_entropy_sum(hidden, emb.weight, labels, chunk_size=5)
            if fused
            else reference(hidden, emb.weight, None, labels, 0.0)
        )
        loss.backward()
        return emb.weight.grad.clone()

    assert rel(run(True), run(False)) < 1e-6


def test_no_gradient_is_computed_where_none_is_needed(monkeypatch):
    hidden, weight, b, labels = problem()
    ref = float(reference(hidden, weight, b, labels, 0.1))
    with torch.no_grad():
        out = linear_cross_entropy_sum(hidden, weight, labels, b, label_smoothing=0.1, chunk_size=8)
    assert out.grad_fn is None and out.requires_grad is False and float(out) == pytest.approx(ref, rel=1e-6)
    requested = []
    real = linear_ce._chunked
    monkeypatch.setattr(linear_ce, "_chunked", lambda *a: requested.append(a[-1]) or real(*a))
    weight.requires_grad_(False)
    b.requires_grad_(False)
    out = linear_cross_entropy_sum(hidden, weight, labels, b, chunk_size=8)
    out.backward()
    assert requested == [(True, False, False)]  # the weight and bias gradients were never computed
    assert weight.grad is None and b.grad is None and hidden.grad is not None
    with torch.no_grad():
        linear_cross_entropy_sum(hidden, weight, labels, b, chunk_size=8)
    assert requested[-1] == (False, False, False)


def test_bfloat16_inputs_are_close_to_the_float32_reference():
    hidden, weight, b, labels = problem()
    hb, wb, bb = (t.detach().bfloat16().requires_grad_() for t in (hidden, weight, b))
    out = linear_cross_entropy_sum(hb, wb, labels, bb, label_smoothing=0.1, chunk_size=8)
    assert out.dtype == torch.float32
    # the reference sees the same bf16-rounded inputs, computed in float32: only the matmul rounding differs
    hf, wf, bf = (t.detach().float().requires_grad_() for t in (hb, wb, bb))
    ref = reference(hf, wf, bf, labels, 0.1)
    assert rel(out, ref) < 1e-2
    for got, want in zip(grads(out, (hb, wb, bb)), grads(ref, (hf, wf, bf))):
        assert got.dtype == torch.bfloat16 and rel(got, want) < 2e-2


def test_autocast_casts_like_f_linear_and_gradients_reach_float32_weights():
    hidden, weight, b, labels = problem()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_cross_entropy_sum(hidden, weight, labels, b, chunk_size=8)
    explicit = linear_cross_entropy_sum(hidden.bfloat16(), weight.bfloat16(), labels, b.bfloat16(), chunk_size=8)
    assert torch.equal(out, explicit)
    out.backward()
    assert (
        weight.grad.dtype == torch.float32
        and rel(weight.grad, grads(reference(hidden, weight, b, labels, 0.0), (weight,))[0]) < 2e-2
    )


def test_compiles_as_one_graph():
    hidden, weight, b, labels = problem()
    compiled = torch.compile(linear_cross_entropy_sum, backend="aot_eager", fullgraph=True, dynamic=False)
    out = compiled(hidden, weight, labels, b, 0.1, 8)
    ref = linear_cross_entropy_sum(hidden, weight, labels, b, 0.1, 8)
    assert rel(out, ref) < 1e-6
    for got, want in zip(grads(out, (hidden, weight, b)), grads(ref, (hidden, weight, b))):
        assert rel(got, want) < 1e-6


def test_bad_arguments_are_refused():
    hidden, weight, b, labels = problem()
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy_sum(hidden, weight, labels, b, chunk_size=0)
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy_sum(hidden, weight, labels[:-1], b)


# ---- model level ---------------------------------------------------------------------------------------------


def tiny(kind: str, vocab: int = 300):
    from transformers import BertConfig, BertForMaskedLM, GPT2ForSequenceClassification, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2":
        return tiny_gpt2(vocab_size=vocab)
    if kind == "llama":  # untied head
        return LlamaForCausalLM(
            LlamaConfig(
                num_hidden_layers=2,
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=2,
                num_key_value_heads=2,
                vocab_size=vocab,
            )
        )
    if kind == "bert":  # masked LM whose head has a transform (dense, gelu, layer norm) before the decoder
        return BertForMaskedLM(
            BertConfig(
                num_hidden_layers=2,
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=2,
                vocab_size=vocab,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
        )
    return GPT2ForSequenceClassification(tiny_gpt2(vocab_size=vocab).config)


def batch(vocab: int = 300, masked: bool = False):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 20), generator=g)
    labels = ids.clone()
    labels[0, 6:] = -100
    if masked:
        labels[:, ::2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, labels


def normal_and_fused(model, inputs, labels, eps, chunk=7, call=None):
    """(loss, grads) of the full-logits path and of the fused path."""
    call = model if call is None else call
    shift = label_shift(model)
    model.zero_grad()
    ref_loss = token_loss_sum(call(**inputs).logits, labels, shift, eps)
    ref_loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    result = lm_loss_sum_fused(call, inputs, labels, shift, eps, chunk)
    assert result is not None
    result[0].backward()
    return ref_loss.detach(), ref, result[0].detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_grads(got, want):
    scale = max(float(g.abs().max()) for g in want.values())
    for name, g in want.items():
        # parameters whose exact gradient is 0 (attention key biases) carry rounding noise on both sides
        assert float((got[name] - g).abs().max()) <= 1e-6 * max(float(g.abs().max()), 1e-3 * scale), name


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_model_loss_and_all_gradients_equal_the_full_logits_path(kind, eps):
    model = tiny(kind)
    inputs, labels = batch(masked=kind == "bert")
    ref_loss, ref, loss, got = normal_and_fused(model, inputs, labels, eps)
    assert rel(loss, ref_loss) < 1e-6
    assert set(got) == set(ref) and all(g is not None for g in got.values())
    assert_same_grads(got, ref)
    assert type(model.get_output_embeddings()) is torch.nn.Linear  # the head is back in place


def test_compiled_model_goes_through_its_compiled_forward():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny("gpt2")
    compiled = torch.compile(model, backend="aot_eager", dynamic=False)
    inputs, labels = batch()
    ref_loss, ref, loss, got = normal_and_fused(model, inputs, labels, 0.0, call=compiled)
    assert rel(loss, ref_loss) < 1e-6
    assert_same_grads(got, ref)
    assert counters["stats"]["unique_graphs"] == 2  # the model with its head, and the model with it skipped
    normal_and_fused(model, inputs, labels, 0.0, call=compiled)
    assert counters["stats"]["unique_graphs"] == 2  # swapping the head back and forth recompiles nothing


def test_ddp_wrapped_model_is_fused_unless_it_looks_for_unused_parameters(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if dist.is_initialized():
        pytest.skip("a process group is already up")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = tiny("llama")  # untied head: its weight gets a gradient only from the fused loss
        inputs, labels = batch()
        ref_loss, ref, loss, got = normal_and_fused(model, inputs, labels, 0.0, call=DDP(model))
        assert rel(loss, ref_loss) < 1e-6
        assert_same_grads(got, ref)
        assert lm_loss_sum_fused(DDP(model, find_unused_parameters=True), inputs, labels, 1) is None
    finally:
        dist.destroy_process_group()


class ScaledGPT2LMHeadModel(GPT2LMHeadModel):
    """Rescales its logits after the head, with nothing in its config saying so: only the probe can tell."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out


def test_models_whose_logits_are_not_the_plain_head_output_fall_back():
    inputs, labels = batch()
    capped = tiny("gpt2")
    capped.config.final_logit_softcapping = 30.0  # Gemma 2 style
    assert lm_loss_sum_fused(capped, inputs, labels, 1) is None
    scaled = ScaledGPT2LMHeadModel(tiny("gpt2").config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lm_loss_sum_fused(scaled, inputs, labels, 1) is None
        assert lm_loss_sum_fused(scaled, inputs, labels, 1) is None  # decided once
    assert len(caught) == 1 and "not exactly its head's output" in str(caught[0].message)
    assert fusion_status(scaled) == "its logits are not exactly its head's output"
    assert fusion_status(tiny("gpt2")) == "not probed yet"
    assert type(scaled.lm_head) is torch.nn.Linear and scaled.training  # head and mode restored after the probe
    hooked = tiny("gpt2")
    hooked.lm_head.register_forward_hook(lambda *a: None)
    assert lm_loss_sum_fused(hooked, inputs, labels, 1) is None
    assert lm_loss_sum_fused(tiny("classifier"), inputs, torch.tensor([0, 1, 0]), 0, 0.1) is None


def test_head_is_restored_when_the_forward_fails():
    model = tiny("gpt2")
    inputs, labels = batch()
    assert lm_loss_sum_fused(model, inputs, labels, 1) is not None  # probed and accepted
    with pytest.raises(IndexError):  # an id beyond the vocabulary, inside the forward
        lm_loss_sum_fused(model, {**inputs, "input_ids": inputs["input_ids"] + 10_000}, labels, 1)
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight is model.transformer.wte.weight


# ---- the Trainer -------------------------------------------------------------------------------------------


def lm_rows(n=12, length=16, vocab=64):
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(1, vocab, (length,), generator=g)
        labels = ids.clone()
        labels[2 + i % 10 :] = -100
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def stack(features):
    return {k: torch.stack([f[k] for f in features]) for k in features[0]}


def test_trainer_losses_and_weights_match_with_loss_chunk_size(tmp_path, monkeypatch):
    calls = []
    real = forward_module.lm_loss_sum_fused
    monkeypatch.setattr(forward_module, "lm_loss_sum_fused", lambda *a: calls.append(1) or real(*a))
    results = {}
    # SGD, not Adam: Adam divides each element by its own gradient scale and so turns the rounding noise of
    # gradients that are exactly 0 (attention key biases) into weight changes of the learning rate's size
    for chunk in (0, 16):
        args = TrainingArguments(
            output_dir=str(tmp_path / f"out{chunk}"),
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            learning_rate=0.1,
            optim="sgd",
            disable_tqdm=True,
            seed=0,
            max_steps=4,
            per_device_train_batch_size=4,
            label_smoothing_factor=0.1,
            loss_chunk_size=chunk,
        )
        trainer = Trainer(
            model=tiny_gpt2(), args=args, train_dataset=lm_rows(), eval_dataset=lm_rows(4), data_collator=stack
        )
        trainer.train()
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        results[chunk] = losses, trainer.evaluate()["eval_loss"], list(trainer.model.parameters())
    assert len(calls) == 4  # one fused forward per training step, none in evaluation
    assert fusion_status(trainer.model) == "fused"
    (l0, e0, p0), (l16, e16, p16) = results[0], results[16]
    assert len(l0) == 4 and l16 == pytest.approx(l0, rel=1e-5) and e16 == pytest.approx(e0, rel=1e-5)
    for a, b in zip(p16, p0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_loss_chunk_size_is_an_argument_and_a_flag():
    from lmtrain import HfArgumentParser
    from lmtrain.errors import ConfigError

    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(["--loss_chunk_size", "4096"])
    assert args.loss_chunk_size == 4096 and TrainingArguments().loss_chunk_size == 0
    with pytest.raises(ConfigError, match="loss_chunk_size"):
        TrainingArguments(loss_chunk_size=-1)
