"""The same script on transformers.Trainer and lmtrain.Trainer gives the same results.

Each test builds both trainers from the same keyword arguments (and the same seeded tiny model) and
compares what transformers documents: losses, metrics, predictions, which overrides are called.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

import lmtrain
from lmtrain.errors import ConfigError
from tests.compat.conftest import requires_transformers_5
from tests.conftest import tiny_gpt2

pytestmark = requires_transformers_5

VOCAB = 64
LIBS = ("hf", "lm")


def _lib(lib):
    return (
        (transformers.Trainer, transformers.TrainingArguments)
        if lib == "hf"
        else (lmtrain.Trainer, lmtrain.TrainingArguments)
    )


def make_args(lib, tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / lib),
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        learning_rate=1e-2,
        max_steps=3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        train_sampling_strategy="sequential",
        optim="sgd",
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        dataloader_num_workers=0,
    )
    base.update(kw)
    return _lib(lib)[1](**base)


def make_trainer(lib, tmp_path, cls=None, args_kw=None, **kw):
    trainer_cls = cls[lib] if isinstance(cls, dict) else (cls or _lib(lib)[0])
    return trainer_cls(args=make_args(lib, tmp_path, **(args_kw or {})), **kw)


def lm_data(n=16, length=12, seed=1, masked=True):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(1, VOCAB, (length,), generator=g).tolist()
        labels = list(ids)
        if masked:  # a prompt of varying length masked out: token counts differ between batches
            labels[: i % 5] = [-100] * (i % 5)
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def gpt2(**kw):
    """The tiny GPT-2 with loss_type named: transformers decides from `model.loss_type` whether to count
    label tokens shifted (labels[..., 1:]) for num_items_in_batch, and GPT2LMHeadModel's class name does
    not match "ForCausalLM", so without it transformers counts one token per row too many (lmtrain counts
    the tokens the causal loss uses)."""
    model = tiny_gpt2(**kw)
    model.loss_type = "ForCausalLM"
    return model


def train_losses(trainer):
    return [r["loss"] for r in trainer.state.log_history if "loss" in r]


def both(fn):
    return {lib: fn(lib) for lib in LIBS}


def evaluate_train_evaluate(trainer):
    """(eval_loss before training, eval_loss after, the logged training losses)."""
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    return before, trainer.evaluate()["eval_loss"], train_losses(trainer)


def assert_nested_equal(a, b, atol=1e-6):
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and type(a) is type(b) and len(a) == len(b), (type(a), type(b))
        for x, y in zip(a, b):
            assert_nested_equal(x, y, atol)
    elif a is None:
        assert b is None
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, (a.shape, b.shape)
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        np.testing.assert_allclose(a, b, atol=atol, rtol=0)


SPEED = ("_runtime", "_per_second", "_model_preparation_time")


def assert_same_metrics(hf, lm, skip=(), atol=1e-6):
    """Every metric transformers reports (speed aside) is in lmtrain's, with the same value."""
    for key, value in hf.items():
        if key.endswith(SPEED) or key in skip:
            continue
        assert key in lm, (key, sorted(lm))
        assert lm[key] == pytest.approx(value, abs=atol, rel=0), key


# ---- 1. compute_loss overridden ------------------------------------------------------------------


def _custom_ce(outputs, labels, scale=2.0):
    logits = outputs.logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
    return loss * scale


def _ce_loss_trainer(base):
    class CE(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = _custom_ce(outputs, labels)
            return (loss, outputs) if return_outputs else loss

    return CE


def _double_loss_trainer(base):
    class Double(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            return (loss * 2, outputs) if return_outputs else loss * 2

    return Double


@pytest.mark.parametrize("make", [_ce_loss_trainer, _double_loss_trainer], ids=["custom_ce", "super_x2"])
@pytest.mark.parametrize("optim", ["sgd", "adamw_torch"])
def test_compute_loss_override_trains_and_evaluates_like_transformers(tmp_path, make, optim):
    train, evald = lm_data(12), lm_data(10, seed=2)

    def run(lib):
        t = make_trainer(
            lib,
            tmp_path,
            cls=make(_lib(lib)[0]),
            args_kw={"optim": optim},
            model=gpt2(),
            train_dataset=train,
            eval_dataset=evald,
        )
        return evaluate_train_evaluate(t)

    r = both(run)
    assert r["lm"][0] == pytest.approx(r["hf"][0], abs=1e-5, rel=0)
    assert r["lm"][2] == pytest.approx(r["hf"][2], abs=1e-4, rel=0)
    assert len(r["lm"][2]) == 3
    assert r["lm"][1] == pytest.approx(r["hf"][1], abs=1e-4, rel=0)


@pytest.mark.parametrize("override", [True, False], ids=["super_x2", "none"])
def test_regression_training_with_accumulation(tmp_path, override):
    """A model without loss kwargs at gradient_accumulation_steps=2: the same logged losses and weights."""
    data = reg_data(16)

    def run(lib):
        cls = _double_loss_trainer(_lib(lib)[0]) if override else None
        t = make_trainer(
            lib,
            tmp_path,
            cls=cls,
            model=Regressor("vec"),
            train_dataset=data,
            args_kw={"gradient_accumulation_steps": 2, "max_steps": 2, "learning_rate": 0.1},
        )
        t.train()
        return train_losses(t), [p.detach().clone() for p in t.model.parameters()]

    r = both(run)
    assert r["lm"][0] == pytest.approx(r["hf"][0], abs=1e-5, rel=0)
    for a, b in zip(r["lm"][1], r["hf"][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ---- 2. compute_loss_func --------------------------------------------------------------------------


@pytest.mark.parametrize("ga", [1, 2])
def test_compute_loss_func_like_transformers(tmp_path, ga):
    train, evald = lm_data(12), lm_data(10, seed=2)

    kinds = {lib: set() for lib in LIBS}
    current = None

    def loss_func(outputs, labels, num_items_in_batch=None):
        kinds[current].add(type(num_items_in_batch))
        logits = outputs["logits"][:, :-1].float()
        total = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            labels[:, 1:].reshape(-1).to(logits.device),
            ignore_index=-100,
            reduction="sum",
        )
        return total / num_items_in_batch

    def run(lib):
        nonlocal current
        current = lib
        t = make_trainer(
            lib,
            tmp_path,
            model=gpt2(),
            train_dataset=train,
            eval_dataset=evald,
            compute_loss_func=loss_func,
            args_kw={"optim": "adamw_torch", "gradient_accumulation_steps": ga, "per_device_train_batch_size": 4 // ga},
        )
        return evaluate_train_evaluate(t)

    r = both(run)
    assert r["lm"][0] == pytest.approx(r["hf"][0], abs=1e-5, rel=0)
    assert r["lm"][2] == pytest.approx(r["hf"][2], abs=1e-4, rel=0)
    assert r["lm"][1] == pytest.approx(r["hf"][1], abs=1e-4, rel=0)
    assert kinds["lm"] == kinds["hf"] == {torch.Tensor}  # num_items_in_batch, in training and evaluation


# ---- 3. overrides are called and used ----------------------------------------------------------------


def _counting_trainer(base):
    class Counting(base):
        calls = None

        def _count(self, name):
            if self.calls is None:
                self.calls = {}
            self.calls[name] = self.calls.get(name, 0) + 1

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            self._count("prediction_step")
            loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
            return loss + 1.0, logits, labels

        def create_optimizer(self, model=None):
            self._count("create_optimizer")
            if self.optimizer is None:
                self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
            return self.optimizer

        def create_scheduler(self, num_training_steps, optimizer=None):
            self._count("create_scheduler")
            if self.lr_scheduler is None:
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer or self.optimizer, lambda s: 1.0 / (s + 1)
                )
            return self.lr_scheduler

        def get_train_dataloader(self):
            self._count("get_train_dataloader")
            return super().get_train_dataloader()

        def training_step(self, model, inputs, num_items_in_batch=None):
            self._count("training_step")
            return super().training_step(model, inputs, num_items_in_batch)

        def log(self, logs, start_time=None):
            self._count("log")
            self.seen = getattr(self, "seen", []) + [dict(logs)]
            super().log(logs, start_time)

    return Counting


def test_overrides_are_called_and_used(tmp_path):
    train, evald = lm_data(12), lm_data(10, seed=2)

    def run(lib):
        t = make_trainer(
            lib,
            tmp_path,
            cls=_counting_trainer(_lib(lib)[0]),
            model=gpt2(),
            train_dataset=train,
            eval_dataset=evald,
            args_kw={"eval_strategy": "steps", "eval_steps": 3},
        )
        t.train()
        return t

    r = both(run)
    hf, lm = r["hf"], r["lm"]
    assert type(lm.optimizer) is torch.optim.SGD and lm.optimizer.defaults["lr"] == 0.05
    assert type(getattr(hf.optimizer, "optimizer", hf.optimizer)) is torch.optim.SGD  # accelerate wraps it
    assert isinstance(lm.lr_scheduler, torch.optim.lr_scheduler.LambdaLR)
    for name in (
        "prediction_step",
        "create_optimizer",
        "create_scheduler",
        "get_train_dataloader",
        "training_step",
        "log",
    ):
        assert lm.calls.get(name) == hf.calls.get(name), (name, lm.calls, hf.calls)
    assert lm.calls["prediction_step"] == 3 and lm.calls["training_step"] == 3
    # the override saw every record, and the records are the history
    assert len(lm.seen) == len(lm.state.log_history) == len(hf.seen)
    lm_train = [s for s in lm.seen if "loss" in s]
    hf_train = [s for s in hf.seen if "loss" in s]
    assert [s["loss"] for s in lm_train] == pytest.approx([s["loss"] for s in hf_train], abs=1e-4)
    assert [s["learning_rate"] for s in lm_train] == pytest.approx([s["learning_rate"] for s in hf_train])
    assert {"loss", "grad_norm", "learning_rate"} <= set(lm_train[0])
    assert {"loss", "grad_norm", "learning_rate", "epoch", "step"} <= set(lm.state.log_history[0])
    lm_eval = [s for s in lm.seen if "eval_loss" in s]
    hf_eval = [s for s in hf.seen if "eval_loss" in s]
    assert lm_eval[0]["eval_loss"] == pytest.approx(hf_eval[0]["eval_loss"], abs=1e-5)  # the +1 is used
    assert "train_loss" in lm.seen[-1] and "train_loss" in hf.seen[-1]


# ---- 4. optimizer_cls_and_kwargs ----------------------------------------------------------------


def test_optimizer_cls_and_kwargs(tmp_path):
    train = lm_data(12)

    def run(lib):
        t = make_trainer(
            lib,
            tmp_path,
            model=gpt2(),
            train_dataset=train,
            optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.03, "momentum": 0.9}),
        )
        t.train()
        return t

    r = both(run)
    for t in r.values():
        opt = getattr(t.optimizer, "optimizer", t.optimizer)  # transformers' is wrapped by accelerate
        assert type(opt) is torch.optim.SGD
        assert opt.defaults["momentum"] == 0.9 and opt.defaults["lr"] == 0.03
    assert train_losses(r["lm"]) == pytest.approx(train_losses(r["hf"]), abs=1e-4)


# ---- 5. evaluate / predict: shapes, metrics, options ------------------------------------------------


class Regressor(nn.Module):
    """One number per example; `shape` picks the prediction's shape: vec (B,), col (B, 1), squeeze (0-d at B=1)."""

    main_input_name = "input_x"  # what include_for_metrics=["inputs"] gathers

    def __init__(self, shape="vec", out="tuple", extra=False):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 1)
        self.shape, self.out, self.extra = shape, out, extra

    def forward(self, input_x, labels=None):
        y = self.lin(input_x)
        y = {"vec": y.squeeze(-1), "col": y, "squeeze": y.squeeze()}[self.shape]
        loss = None if labels is None else F.mse_loss(y.reshape(-1), labels.reshape(-1).float())
        if self.out == "dict":
            out = {"loss": loss, "y": y, "aux": y * 2} if loss is not None else {"y": y, "aux": y * 2}
            return out
        outs = (y, y * 2, (y * 3).unsqueeze(-1)) if self.extra else (y,)
        return ((loss,) + outs) if loss is not None else outs


class TwoLabels(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 2)

    def forward(self, input_x, labels=None, labels2=None):
        y = self.lin(input_x)
        if labels is None:
            return (y,)
        loss = F.mse_loss(y[:, 0], labels.float()) + F.mse_loss(y[:, 1], labels2.float())
        return loss, y


def reg_data(n=10, labels=True, two=False, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x.sum(-1) + 0.1 * torch.randn(n, generator=g)
    rows = []
    for i in range(n):
        row = {"input_x": x[i].tolist()}
        if labels:
            row["labels"] = float(y[i])
            if two:
                row["labels2"] = float(-y[i])
        rows.append(row)
    return rows


class Recorder:
    """compute_metrics that records what it was given."""

    def __init__(self):
        self.seen = []

    def __call__(self, p, compute_result=None):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        labels = p.label_ids[0] if isinstance(p.label_ids, tuple) else p.label_ids
        entry = {
            "predictions": _np(p.predictions),
            "label_ids": _np(p.label_ids),
            "inputs": _np(p.inputs),
            "losses": _np(p.losses),
            "compute_result": compute_result,
            "len": len(tuple(p)),
        }
        self.seen.append(entry)
        if isinstance(preds, list):  # eval_do_concat_batches=False
            preds, labels = (
                np.concatenate([np.atleast_1d(a) for a in preds]),
                np.concatenate([np.atleast_1d(a) for a in labels]),
            )
        preds, labels = np.asarray(_np(preds), dtype=np.float64), np.asarray(_np(labels), dtype=np.float64)
        return {
            "mse": float(((preds.reshape(-1)[: labels.size] - labels.reshape(-1)) ** 2).mean()),
            "count": int(labels.size),
        }


def _np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, dict):
        return {k: _np(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_np(v) for v in x)
    return x


def _eval_both(tmp_path, model_fn, data, args_kw=None, predict=False, **kw):
    def run(lib):
        rec = Recorder()
        t = make_trainer(
            lib,
            tmp_path,
            model=model_fn(),
            compute_metrics=rec,
            eval_dataset=data,
            args_kw={"per_device_eval_batch_size": 4, **(args_kw or {})},
            **kw,
        )
        out = t.predict(data) if predict else t.evaluate()
        return out, rec.seen

    return both(run)


def _compare_seen(hf_seen, lm_seen):
    assert len(hf_seen) == len(lm_seen)
    for h, m in zip(hf_seen, lm_seen):
        assert h["compute_result"] == m["compute_result"] and h["len"] == m["len"]
        for key in ("predictions", "label_ids", "inputs", "losses"):
            if isinstance(h[key], dict):
                assert sorted(h[key]) == sorted(m[key]), key
                for k in h[key]:
                    assert_nested_equal(h[key][k], m[key][k])
            else:
                assert_nested_equal(h[key], m[key])


def _exact_mean_mse(model_fn, data):
    model = model_fn()
    x = torch.tensor([r["input_x"] for r in data])
    y = torch.tensor([r["labels"] for r in data])
    with torch.no_grad():
        pred = model.lin(x).reshape(-1)
    return float(F.mse_loss(pred, y))


@pytest.mark.parametrize("shape", ["vec", "col"])
@pytest.mark.parametrize("n", [8, 10])
def test_evaluate_regression_shapes_and_metrics(tmp_path, shape, n):
    data = reg_data(n)
    r = _eval_both(tmp_path, lambda: Regressor(shape), data)
    hf, lm = r["hf"][0], r["lm"][0]
    _compare_seen(r["hf"][1], r["lm"][1])
    # eval_loss: both weight each batch's mean by its examples (transformers' gather_for_metrics drops
    # the repeats of the short last batch), which is the exact mean over examples
    assert_same_metrics(hf, lm)
    assert lm["eval_loss"] == pytest.approx(_exact_mean_mse(lambda: Regressor(shape), data), abs=1e-6)


def test_predict_regression_batch_of_one_zero_d(tmp_path):
    data = reg_data(3)
    r = _eval_both(
        tmp_path, lambda: Regressor("squeeze"), data, predict=True, args_kw={"per_device_eval_batch_size": 1}
    )
    hf, lm = r["hf"][0], r["lm"][0]
    assert_nested_equal(hf.predictions, lm.predictions)
    assert_nested_equal(hf.label_ids, lm.label_ids)
    assert lm.predictions.shape == (3,)
    _compare_seen(r["hf"][1], r["lm"][1])
    assert_same_metrics(hf.metrics, lm.metrics)


def test_predict_single_batch_zero_d(tmp_path):
    data = reg_data(1)
    r = _eval_both(tmp_path, lambda: Regressor("squeeze"), data, predict=True)
    assert_nested_equal(r["hf"][0].predictions, r["lm"][0].predictions)
    assert_nested_equal(r["hf"][0].label_ids, r["lm"][0].label_ids)


@pytest.mark.parametrize("variant", ["dict", "tuple_many", "dict_ignore"])
def test_predict_structured_outputs(tmp_path, variant):
    data = reg_data(10)
    model_fn = {
        "dict": lambda: Regressor("vec", out="dict"),
        "dict_ignore": lambda: Regressor("vec", out="dict"),
        "tuple_many": lambda: Regressor("vec", extra=True),
    }[variant]
    ignore = ["aux"] if variant == "dict_ignore" else None

    def run(lib):
        rec = Recorder()
        t = make_trainer(lib, tmp_path, model=model_fn(), compute_metrics=rec)
        out = t.predict(data, ignore_keys=ignore)
        ev = t.evaluate(data, ignore_keys=ignore)
        return out, ev, rec.seen

    r = both(run)
    hf, lm = r["hf"][0], r["lm"][0]
    assert_nested_equal(hf.predictions, lm.predictions)
    assert_nested_equal(hf.label_ids, lm.label_ids)
    if variant == "dict_ignore":
        assert isinstance(lm.predictions, np.ndarray) and lm.predictions.shape == (10,)
    else:
        assert isinstance(lm.predictions, tuple)
    _compare_seen(r["hf"][2], r["lm"][2])
    assert_same_metrics(hf.metrics, lm.metrics)
    assert_same_metrics(r["hf"][1], r["lm"][1])


@pytest.mark.parametrize(
    "options",
    [
        {"include_for_metrics": ["inputs", "loss"]},
        {"eval_do_concat_batches": False},
        {"eval_accumulation_steps": 2},
        {"eval_accumulation_steps": 1, "eval_do_concat_batches": False},
        {"batch_eval_metrics": True},
        {"batch_eval_metrics": True, "include_for_metrics": ["loss"]},
    ],
    ids=["include", "no_concat", "accum2", "accum1_no_concat", "batch_metrics", "batch_metrics_loss"],
)
@pytest.mark.parametrize("predict", [False, True], ids=["evaluate", "predict"])
def test_eval_options(tmp_path, options, predict):
    data = reg_data(10)
    r = _eval_both(tmp_path, lambda: Regressor("vec"), data, args_kw=options, predict=predict)
    _compare_seen(r["hf"][1], r["lm"][1])
    if predict:
        hf, lm = r["hf"][0], r["lm"][0]
        assert_nested_equal(hf.predictions, lm.predictions)
        assert_nested_equal(hf.label_ids, lm.label_ids)
        assert_same_metrics(hf.metrics, lm.metrics)
    else:
        assert_same_metrics(r["hf"][0], r["lm"][0])


def test_eval_options_with_overridden_prediction_step(tmp_path):
    """The transformers route (prediction_step overridden) gives the same losses array and eval_loss too."""
    data = reg_data(10)

    def subclass(base):
        class P(base):
            def prediction_step(self, *a, **k):
                return super().prediction_step(*a, **k)

        return P

    cls = {lib: subclass(_lib(lib)[0]) for lib in LIBS}
    r = _eval_both(
        tmp_path,
        lambda: Regressor("vec"),
        data,
        cls=cls,
        args_kw={"include_for_metrics": ["inputs", "loss"], "eval_accumulation_steps": 2},
    )
    _compare_seen(r["hf"][1], r["lm"][1])
    assert_same_metrics(r["hf"][0], r["lm"][0])


def test_preprocess_logits_for_metrics(tmp_path):
    data = reg_data(10)
    seen = {lib: [] for lib in LIBS}

    def make(lib):
        def pre(logits, labels):
            seen[lib].append((tuple(logits.shape), tuple(labels.shape)))
            return logits * 10

        return pre

    def run(lib):
        rec = Recorder()
        t = make_trainer(
            lib, tmp_path, model=Regressor("vec"), compute_metrics=rec, preprocess_logits_for_metrics=make(lib)
        )
        return t.predict(data), rec.seen

    r = both(run)
    assert seen["lm"] == seen["hf"] and len(seen["lm"]) == 3
    assert_nested_equal(r["hf"][0].predictions, r["lm"][0].predictions)
    _compare_seen(r["hf"][1], r["lm"][1])


def test_two_label_names(tmp_path):
    data = reg_data(10, two=True)
    r = _eval_both(tmp_path, TwoLabels, data, predict=True, args_kw={"label_names": ["labels", "labels2"]})
    hf, lm = r["hf"][0], r["lm"][0]
    assert isinstance(lm.label_ids, tuple) and len(lm.label_ids) == 2
    assert_nested_equal(hf.label_ids, lm.label_ids)
    assert_nested_equal(hf.predictions, lm.predictions)
    _compare_seen(r["hf"][1], r["lm"][1])


@pytest.mark.parametrize(
    "model_fn", [lambda: Regressor("vec"), lambda: Regressor("vec", out="dict"), gpt2], ids=["tuple", "dict", "gpt2"]
)
def test_predict_without_labels(tmp_path, model_fn):
    if model_fn is gpt2:
        data = [{"input_ids": r["input_ids"]} for r in lm_data(6)]
    else:
        data = reg_data(6, labels=False)

    def run(lib):
        rec = Recorder()
        t = make_trainer(lib, tmp_path, model=model_fn(), compute_metrics=rec)
        return t.predict(data), rec.seen

    r = both(run)
    hf, lm = r["hf"][0], r["lm"][0]
    assert lm.label_ids is None and hf.label_ids is None
    assert "test_loss" not in lm.metrics and "test_loss" not in hf.metrics
    assert r["lm"][1] == [] == r["hf"][1]
    if model_fn is gpt2:
        lm_p = lm.predictions[0] if isinstance(lm.predictions, tuple) else lm.predictions
        hf_p = hf.predictions[0] if isinstance(hf.predictions, tuple) else hf.predictions
        np.testing.assert_allclose(lm_p, hf_p, atol=1e-5)
    else:
        assert_nested_equal(hf.predictions, lm.predictions)


@pytest.mark.parametrize("hidden", [False, True], ids=["logits", "hidden_states"])
def test_causal_lm_predict_matches(tmp_path, hidden):
    data = lm_data(10, seed=4)

    def run(lib):
        model = gpt2()
        model.config.output_hidden_states = hidden
        t = make_trainer(lib, tmp_path, model=model, compute_metrics=lambda p: {"n": int(p.label_ids.size)})
        return t.predict(data)

    r = both(run)
    assert_nested_equal(r["hf"].label_ids, r["lm"].label_ids)
    assert_nested_equal(r["hf"].predictions, r["lm"].predictions, atol=1e-5)
    assert isinstance(r["lm"].predictions, tuple) == hidden
    assert r["lm"].metrics["test_n"] == r["hf"].metrics["test_n"]


# ---- 6. small helpers ------------------------------------------------------------------------------


def test_small_helpers_equal_transformers(tmp_path):
    train = lm_data(10)

    def run(lib):
        model = tiny_gpt2()
        model.transformer.wte.weight.requires_grad_(False)
        t = make_trainer(
            lib,
            tmp_path,
            model=model,
            train_dataset=train,
            args_kw={"optim": "adamw_torch", "weight_decay": 0.1, "adam_beta2": 0.95},
        )
        loader = t.get_train_dataloader()
        batch = next(iter(loader))
        cls, kw = t.get_optimizer_cls_and_kwargs(t.args)
        return (
            t.get_num_trainable_parameters(),
            t.num_examples(loader),
            t.floating_point_ops(batch),
            t.floating_point_ops({"input_x": torch.zeros(2, 3)}),
            cls,
            kw,
        )

    r = both(run)
    hf, lm = r["hf"], r["lm"]
    assert lm[:4] == hf[:4]
    assert lm[4] is hf[4]
    assert lm[5] == hf[5]
    plain = make_trainer("lm", tmp_path, model=Regressor())
    assert plain.floating_point_ops({"input_x": torch.zeros(2, 3)}) == 0


# ---- 7. hyperparameter search ----------------------------------------------------------------------

needs_optuna = pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="optuna not installed")


@needs_optuna
def test_hyperparameter_search_optuna(tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    train, evald = lm_data(8), lm_data(4, seed=2)

    def space(trial):
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)}

    def run(lib, evals):
        base = transformers.TrainerCallback if lib == "hf" else lmtrain.TrainerCallback

        class CountEvals(base):
            def on_evaluate(self, args, state, control, **kwargs):
                evals.append(state.global_step)

        t = make_trainer(
            lib,
            tmp_path,
            model_init=lambda: gpt2(),
            train_dataset=train,
            eval_dataset=evald,
            callbacks=[CountEvals()],
            args_kw={
                "max_steps": 2,
                "save_strategy": "steps",
                "save_steps": 2,
                "eval_strategy": "steps",
                "eval_steps": 2,
            },
        )
        best = t.hyperparameter_search(
            hp_space=space,
            n_trials=2,
            direction="minimize",
            backend="optuna",
            sampler=optuna.samplers.TPESampler(seed=0),
        )
        return t, best

    evals = {lib: [] for lib in LIBS}
    r = {lib: run(lib, evals[lib]) for lib in LIBS}
    # the objective is the evaluation during training: no second evaluation after it
    assert evals["lm"] == evals["hf"] == [2, 2]
    for lib, (_t, best) in r.items():
        assert best.run_id in ("0", "1")
        assert isinstance(best.objective, float) and math.isfinite(best.objective)
        assert set(best.hyperparameters) == {"learning_rate"}
        for n in (0, 1):
            assert (tmp_path / lib / f"run-{n}" / "checkpoint-2").is_dir(), lib
    (_, hf_best), (_, lm_best) = r["hf"], r["lm"]
    assert lm_best.hyperparameters == pytest.approx(hf_best.hyperparameters)
    assert lm_best.run_id == hf_best.run_id
    assert lm_best.objective == pytest.approx(hf_best.objective, abs=1e-4)


def test_hyperparameter_search_errors(tmp_path, monkeypatch):
    t = make_trainer("lm", tmp_path, model=gpt2(), train_dataset=lm_data(4))
    with pytest.raises(ConfigError, match="model_init"):
        t.hyperparameter_search(n_trials=1, backend="optuna")
    t = make_trainer("lm", tmp_path, model_init=lambda: gpt2(), train_dataset=lm_data(4))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install optuna") as err:
        t.hyperparameter_search(n_trials=1)
    assert "\n" not in str(err.value)


# ---- 8. label smoothing ------------------------------------------------------------------------------


@pytest.mark.parametrize("ga", [1, 2])
def test_label_smoothing_like_transformers(tmp_path, ga):
    # unmasked, equal-length evaluation rows: lmtrain's token-weighted eval_loss equals transformers' mean
    # of batch means; training rows are masked differently, the step loss is over the step's tokens in both
    train, evald = lm_data(12, masked=True), lm_data(8, seed=2, masked=False)

    def run(lib):
        t = make_trainer(
            lib,
            tmp_path,
            model=gpt2(),
            train_dataset=train,
            eval_dataset=evald,
            args_kw={
                "label_smoothing_factor": 0.1,
                "optim": "adamw_torch",
                "gradient_accumulation_steps": ga,
                "per_device_train_batch_size": 4 // ga,
            },
        )
        return evaluate_train_evaluate(t)

    r = both(run)
    assert r["lm"][0] == pytest.approx(r["hf"][0], abs=1e-5, rel=0)
    assert r["lm"][2] == pytest.approx(r["hf"][2], abs=1e-5, rel=0)
    assert r["lm"][1] == pytest.approx(r["hf"][1], abs=1e-5, rel=0)


# ---- 9. NEFTune ---------------------------------------------------------------------------------------


def test_neftune_only_in_training(tmp_path):
    train, evald = lm_data(8), lm_data(8, seed=2)

    def run(alpha):
        t = make_trainer(
            "lm",
            tmp_path,
            model=gpt2(),
            train_dataset=train,
            eval_dataset=evald,
            args_kw={"neftune_noise_alpha": alpha, "max_steps": 2},
        )
        before = t.evaluate()["eval_loss"]
        t.train()
        hooks = dict(t.model.get_input_embeddings()._forward_hooks)
        return before, train_losses(t), hooks

    noisy, plain = run(5.0), run(None)
    assert noisy[0] == plain[0]  # evaluation: no noise
    assert abs(noisy[1][0] - plain[1][0]) > 1e-6  # training: noise on the embeddings
    assert noisy[2] == {} and plain[2] == {}


# ---- 10. data order ---------------------------------------------------------------------------------


def _order_trainer(base):
    class Order(base):
        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs["attention_mask"]
            self.batches = getattr(self, "batches", []) + [(inputs["input_ids"][:, 0].tolist(), mask.sum(-1).tolist())]
            return super().training_step(model, inputs, num_items_in_batch)

    return Order


def _pad_collator(features):
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), width, dtype=torch.long)
    labels = torch.full((len(features), width), -100)
    mask = torch.zeros(len(features), width, dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        labels[i, :n] = torch.tensor(f["input_ids"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _var_data(n=64, seed=5):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 41, (n,), generator=g).tolist()
    return [{"input_ids": [i % VOCAB] + [1] * (lengths[i] - 1)} for i in range(n)]


def test_sequential_reads_in_order(tmp_path):
    data = _var_data(16)

    def run(lib):
        t = make_trainer(
            lib,
            tmp_path,
            cls=_order_trainer(_lib(lib)[0]),
            model=gpt2(),
            train_dataset=data,
            data_collator=_pad_collator,
            args_kw={"max_steps": 4},
        )
        t.train()
        return [b[0] for b in t.batches]

    r = both(run)
    assert r["lm"] == r["hf"] == [list(range(i, i + 4)) for i in range(0, 16, 4)]


@pytest.mark.parametrize(
    "how", [{"train_sampling_strategy": "group_by_length"}, {"group_by_length": True}], ids=["strategy", "flag"]
)
def test_group_by_length(tmp_path, how):
    data = _var_data(64)

    def spread(lib, kw):
        t = make_trainer(
            lib,
            tmp_path,
            cls=_order_trainer(_lib(lib)[0]),
            model=gpt2(positions=64),
            train_dataset=data,
            data_collator=_pad_collator,
            args_kw={"max_steps": 16, "learning_rate": 1e-4, **kw},
        )
        t.train()
        ids = sorted(i for b in t.batches for i in b[0])
        assert ids == sorted(i % VOCAB for i in range(64))  # one epoch, every example once
        first_longest = max(t.batches[0][1]) == max(len(d["input_ids"]) for d in data)
        return float(np.mean([max(b[1]) - min(b[1]) for b in t.batches])), first_longest

    grouped, first_longest = spread("lm", how)
    random, _ = spread("lm", {"train_sampling_strategy": "random"})
    assert grouped < random / 2 and first_longest
    if "train_sampling_strategy" in how:  # transformers 5 has only the strategy name
        hf_grouped, hf_first = spread("hf", how)
        assert hf_first and grouped < random / 2 and hf_grouped < random / 2
