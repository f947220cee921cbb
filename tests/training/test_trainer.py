"""The loop: token-weighted losses, evaluation, metrics, column handling, callbacks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmtrain import Trainer, TrainerCallback, TrainingArguments
from lmtrain.errors import DataError, LmtrainError
from tests.conftest import tiny_gpt2


def ragged_dataset(n: int = 16, length: int = 12, vocab: int = 64, seed: int = 0):
    """Rows whose label count differs a lot, so a mean of micro-batch means would be wrong."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(1, vocab, (length,), generator=g)
        labels = ids.clone()
        keep = 2 + (i * 5) % (length - 2)
        labels[keep:] = -100
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def stack(features):
    return {k: torch.stack([f[k] for f in features]) for k in features[0]}


def make_args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        learning_rate=1e-2,
        disable_tqdm=True,
        seed=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


def first_losses(trainer):
    return [r["loss"] for r in trainer.state.log_history if "loss" in r]


def test_step_loss_is_token_weighted_over_accumulation(tmp_path):
    data = ragged_dataset()
    results = {}
    for bs, ga in ((8, 1), (4, 2), (2, 4), (1, 8)):
        trainer = Trainer(
            model=tiny_gpt2(),
            args=make_args(tmp_path, per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=2),
            train_dataset=data,
            data_collator=stack,
        )
        trainer.train()
        results[(bs, ga)] = (first_losses(trainer), [p.detach().clone() for p in trainer.model.parameters()])
    ref_losses, ref_params = results[(8, 1)]
    # the reference: sum of token losses of the whole batch over its label tokens, by hand
    model = tiny_gpt2()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0 * 1000 + 0))[:8].tolist()
    batch = stack([data[i] for i in order])
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
    by_hand = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 64), batch["labels"][:, 1:].reshape(-1), ignore_index=-100, reduction="mean"
    )
    assert ref_losses[0] == pytest.approx(float(by_hand.detach()), rel=1e-5)
    for key, (losses, params) in results.items():
        assert losses == pytest.approx(ref_losses, rel=1e-5), key
        for p, q in zip(params, ref_params):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_eval_loss_does_not_depend_on_eval_batch_size(tmp_path):
    data = ragged_dataset(n=13)
    model = tiny_gpt2()
    losses = []
    for bs in (1, 3, 13):
        trainer = Trainer(
            model=model, args=make_args(tmp_path, per_device_eval_batch_size=bs), eval_dataset=data, data_collator=stack
        )
        metrics = trainer.evaluate()
        losses.append(metrics["eval_loss"])
        assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-6)


def test_compute_metrics_with_preprocess_and_accumulation(tmp_path):
    data = ragged_dataset(n=10)
    seen = {}

    def preprocess(logits, labels):
        return logits.argmax(-1)

    def compute_metrics(pred):
        preds, labels = pred
        seen["shapes"] = (preds.shape, labels.shape)
        mask = labels[:, 1:] != -100
        return {"accuracy": float((preds[:, :-1] == labels[:, 1:])[mask].mean())}

    trainer = Trainer(
        model=tiny_gpt2(),
        args=make_args(tmp_path, per_device_eval_batch_size=3, eval_accumulation_steps=2),
        eval_dataset=data,
        data_collator=stack,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess,
    )
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert seen["shapes"] == ((10, 12), (10, 12))
    out = trainer.predict(data[:4])
    assert out.predictions.shape == (4, 12) and out.label_ids.shape == (4, 12)
    assert "test_loss" in out.metrics


def test_unused_columns_are_dropped_and_all_unused_is_an_error(tmp_path):
    data = [dict(r, text="words the model never sees") for r in ragged_dataset(n=4)]

    def collate(features):
        assert "text" not in features[0]
        return stack(features)

    trainer = Trainer(model=tiny_gpt2(), args=make_args(tmp_path), eval_dataset=data, data_collator=collate)
    assert "eval_loss" in trainer.evaluate()
    bad = Trainer(model=tiny_gpt2(), args=make_args(tmp_path), eval_dataset=[{"text": "a"}, {"text": "b"}])
    with pytest.raises(DataError, match=r"columns \['text'\].*input_ids"):
        bad.evaluate()


def test_hf_datasets_dataset_is_accepted(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = ragged_dataset(n=8)
    ds = datasets.Dataset.from_dict(
        {
            "input_ids": [r["input_ids"].tolist() for r in rows],
            "labels": [r["labels"].tolist() for r in rows],
            "text": ["x"] * 8,
        }
    )
    from lmtrain import default_data_collator

    trainer = Trainer(
        model=tiny_gpt2(),
        args=make_args(tmp_path, max_steps=2, per_device_train_batch_size=4),
        train_dataset=ds,
        eval_dataset=ds,
        data_collator=default_data_collator,
    )
    out = trainer.train()
    assert out.global_step == 2 and math.isfinite(out.training_loss)


def test_iterable_dataset_needs_max_steps(tmp_path):
    rows = ragged_dataset(n=8)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(rows * 10)

    trainer = Trainer(
        model=tiny_gpt2(),
        args=make_args(tmp_path, max_steps=3, per_device_train_batch_size=4),
        train_dataset=Stream(),
        data_collator=stack,
    )
    assert trainer.train().global_step == 3
    no_steps = Trainer(model=tiny_gpt2(), args=make_args(tmp_path), train_dataset=Stream(), data_collator=stack)
    with pytest.raises(LmtrainError, match="max_steps"):
        no_steps.train()


class StopAndSave(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            control.should_save = True
            control.should_training_stop = True


def test_callback_can_stop_training_and_force_a_save(tmp_path):
    events = []

    class Recorder(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            events.append("train_begin")

        def on_save(self, args, state, control, **kwargs):
            events.append(f"save-{state.global_step}")

        def on_train_end(self, args, state, control, **kwargs):
            events.append("train_end")

    trainer = Trainer(
        model=tiny_gpt2(),
        args=make_args(tmp_path, max_steps=10, per_device_train_batch_size=2),
        train_dataset=ragged_dataset(),
        data_collator=stack,
        callbacks=[StopAndSave, Recorder()],
    )
    assert trainer.train().global_step == 3
    assert events == ["train_begin", "save-3", "train_end"]
    assert (tmp_path / "out" / "checkpoint-3" / "COMPLETE").exists()


def test_logs_go_to_jsonl_and_state(tmp_path):
    trainer = Trainer(
        model=tiny_gpt2(),
        args=make_args(tmp_path, max_steps=4, logging_steps=2, per_device_train_batch_size=4),
        train_dataset=ragged_dataset(),
        data_collator=stack,
    )
    trainer.train()
    trainer.save_state()
    lines = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    train_records = [r for r in lines if "loss" in r]
    assert [r["step"] for r in train_records] == [2, 4]
    assert all({"learning_rate", "grad_norm", "tokens_per_second"} <= set(r) for r in train_records)
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["log_history"]


def test_nan_loss_stops_with_one_clear_error(tmp_path):
    model = tiny_gpt2()
    trainer = Trainer(
        model=model,
        args=make_args(
            tmp_path, max_steps=4, logging_steps=2, learning_rate=1e30, max_grad_norm=0, per_device_train_batch_size=4
        ),
        train_dataset=ragged_dataset(),
        data_collator=stack,
    )
    with pytest.raises(LmtrainError, match=r"NaN or infinite at step \d+; lower the learning rate"):
        trainer.train()


def test_start_summary_names_ineffective_settings(tmp_path, capsys):
    trainer = Trainer(
        model=tiny_gpt2(),
        args=make_args(
            tmp_path,
            max_steps=1,
            num_train_epochs=7,
            eval_steps=5,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
        ),
        train_dataset=ragged_dataset(),
        data_collator=stack,
    )
    trainer.train()
    out = capsys.readouterr().out
    assert "effective batch 8" in out and "96 tokens per optimizer step" in out
    assert "num_train_epochs (max_steps is set)" in out and "eval_steps (eval_strategy is 'no')" in out


def test_nan_policy_skip_leaves_weights_untouched_and_counts(tmp_path):
    model = tiny_gpt2()
    poison = {"on": False}
    model.lm_head.register_forward_hook(lambda mod, inp, out: out * float("nan") if poison["on"] else out)

    class PoisonSecondStep(TrainerCallback):
        """The second step's forward yields NaN logits, as an overflow would."""

        def on_step_begin(self, args, state, control, **kwargs):
            poison["on"] = state.global_step == 1

    trainer = Trainer(
        model=model,
        args=make_args(tmp_path, max_steps=4, logging_steps=4, nan_policy="skip", per_device_train_batch_size=4),
        train_dataset=ragged_dataset(),
        data_collator=stack,
        callbacks=[PoisonSecondStep()],
    )
    trainer.train()
    record = [r for r in trainer.state.log_history if "loss" in r][0]
    assert record["skipped_steps"] == 1 and math.isfinite(record["loss"])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_auto_find_batch_size_halves_on_out_of_memory(tmp_path, capsys):
    model = tiny_gpt2()

    def pretend_oom(module, inputs):
        if inputs[0].shape[0] > 2:  # "does not fit": batches above 2 rows
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    model.transformer.register_forward_pre_hook(pretend_oom)
    trainer = Trainer(
        model=model,
        args=make_args(tmp_path, max_steps=3, per_device_train_batch_size=8, auto_find_batch_size=True),
        train_dataset=ragged_dataset(),
        data_collator=stack,
    )
    assert trainer.train().global_step == 3
    assert (trainer._train_batch_size, trainer._gradient_accumulation_steps) == (2, 4)
    assert (trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps) == (8, 1)  # as given
    assert capsys.readouterr().out.count("out of memory") == 2
    # the same samples and effective batch as a run that fit from the start
    ref = Trainer(
        model=tiny_gpt2(),
        args=make_args(tmp_path / "ref", max_steps=3, per_device_train_batch_size=2, gradient_accumulation_steps=4),
        train_dataset=ragged_dataset(),
        data_collator=stack,
    )
    ref.train()
    assert first_losses(trainer) == pytest.approx(first_losses(ref), rel=1e-5)
    # the failed attempts' tokens are not counted: the same tokens seen as the run that fit
    assert trainer.state.num_input_tokens_seen == ref.state.num_input_tokens_seen > 0
