"""The same training script on transformers.Trainer and on lmtrain.Trainer: same events, flags, logs,
checkpoints, best model, early stopping and rotation (transformers' behaviour is the specification)."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, Optional

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lmtrain  # noqa: E402
from tests.compat.conftest import requires_transformers_5  # noqa: E402
from tests.conftest import tiny_gpt2  # noqa: E402

pytestmark = requires_transformers_5

LIBS = {"hf": transformers, "lm": lmtrain}
EVENTS = (
    "on_init_end",
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_step_begin",
    "on_pre_optimizer_step",
    "on_optimizer_step",
    "on_substep_end",
    "on_step_end",
    "on_evaluate",
    "on_save",
    "on_log",
    "on_prediction_step",
    "on_predict",
    "on_push_begin",
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster than two fighting over a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dataset(n: int = 16, seq: int = 8, seed: int = 1) -> List[Dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (n, seq), generator=g)
    return [{"input_ids": row.clone(), "labels": row.clone()} for row in ids]


def recorder(lib: Any, trainer_ref: Optional[list] = None) -> Any:
    """A callback of `lib` that records (event, global_step, log, evaluate, save, stop) at every event."""

    class Recorder(lib.TrainerCallback):
        def __init__(self) -> None:
            self.events: List[tuple] = []
            self.logs: List[tuple] = []
            self.metrics: List[tuple] = []
            self.counter_at_begin = None

    def make(name: str):
        def handler(self, args, state, control, **kwargs):
            self.events.append(
                (
                    name,
                    state.global_step,
                    control.should_log,
                    control.should_evaluate,
                    control.should_save,
                    control.should_training_stop,
                )
            )
            if name == "on_log":
                self.logs.append((state.global_step, dict(kwargs["logs"])))
            if name == "on_evaluate":
                self.metrics.append((state.global_step, dict(kwargs["metrics"])))
            if name == "on_train_begin" and trainer_ref:
                early = [
                    cb
                    for cb in trainer_ref[0].callback_handler.callbacks
                    if type(cb).__name__ == "EarlyStoppingCallback"
                ]
                self.counter_at_begin = early[0].early_stopping_patience_counter if early else None

        return handler

    for name in EVENTS:
        setattr(Recorder, name, make(name))

    def unknown(self, name: str):  # an event neither library's base class names: recorded too
        if name.startswith("on_"):
            return make(name).__get__(self)
        raise AttributeError(name)

    Recorder.__getattr__ = unknown
    return Recorder()


def run(
    lib_name: str,
    tmp_path,
    *,
    callbacks=(),
    trainer_cls=None,
    resume=None,
    n_train: int = 16,
    args_cls=None,
    out: Optional[str] = None,
    **kwargs: Any,
):
    """Build and train one Trainer of `lib_name` with the shared script; returns (trainer, recorder)."""
    lib = LIBS[lib_name]
    defaults = dict(
        output_dir=out or str(tmp_path / lib_name),
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        seed=0,
        train_sampling_strategy="sequential",
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
    )
    defaults.update(kwargs)
    args = (args_cls or lib.TrainingArguments)(**defaults)
    ref: list = []
    rec = recorder(lib, ref)
    extra = [cb() if callable(cb) and not isinstance(cb, lib.TrainerCallback) else cb for cb in callbacks]
    cls = trainer_cls(lib) if trainer_cls is not None else lib.Trainer
    model = tiny_gpt2()
    # transformers counts a step's label tokens over labels[..., 1:] only for a model whose loss_type maps to
    # ForCausalLMLoss; GPT2LMHeadModel's is None (it counts every label, 8/7 of the predicted tokens). lmtrain
    # always counts the predicted tokens, so name the loss to compare the same normalisation.
    model.loss_type = "ForCausalLM"
    trainer = cls(
        model=model, args=args, train_dataset=dataset(n_train), eval_dataset=dataset(8, seed=2), callbacks=[rec, *extra]
    )
    ref.append(trainer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, rec


def both(tmp_path, **kwargs):
    return run("hf", tmp_path, **kwargs), run("lm", tmp_path, **kwargs)


def steps_of(rec, with_flags: bool = True) -> List[tuple]:
    return [e if with_flags else e[:2] for e in rec.events if e[0] != "on_init_end"]


def checkpoints(out: str) -> List[int]:
    return sorted(int(d.split("-")[-1]) for d in os.listdir(out) if d.startswith("checkpoint-"))


# ---- 1. event sequence -------------------------------------------------------------------------

FLOWS = {
    "steps_ga2": dict(
        max_steps=6,
        gradient_accumulation_steps=2,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="steps",
        save_steps=4,
    ),
    "epoch_2": dict(
        num_train_epochs=2, n_train=8, logging_strategy="epoch", eval_strategy="epoch", save_strategy="epoch"
    ),
    "max_steps_mid_epoch": dict(
        max_steps=5, logging_steps=2, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=3
    ),
    "logging_first_step": dict(max_steps=4, logging_steps=3, logging_first_step=True),
    "eval_delay": dict(max_steps=6, eval_strategy="steps", eval_steps=1, eval_delay=4, logging_steps=5),
    "eval_on_start": dict(max_steps=3, eval_strategy="steps", eval_steps=2, eval_on_start=True, logging_steps=2),
    "epoch_save_max_steps": dict(
        max_steps=6, n_train=8, save_strategy="epoch", eval_strategy="epoch", logging_strategy="no"
    ),
    "best_without_saving": dict(max_steps=4, eval_strategy="steps", eval_steps=2, metric_for_best_model="loss"),
    "eval_delay_epoch": dict(
        num_train_epochs=3, n_train=8, eval_strategy="epoch", eval_delay=2, logging_strategy="epoch"
    ),
    "epoch_tail_ga": dict(
        num_train_epochs=2,
        n_train=10,
        gradient_accumulation_steps=2,
        logging_steps=2,
        eval_strategy="epoch",
        save_strategy="epoch",
    ),
}


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_event_sequence_matches_transformers(tmp_path, flow):
    (hf_t, hf_rec), (lm_t, lm_rec) = both(tmp_path, **FLOWS[flow])
    assert steps_of(lm_rec) == steps_of(hf_rec)
    assert lm_t.state.global_step == hf_t.state.global_step
    assert checkpoints(lm_t.args.output_dir) == checkpoints(hf_t.args.output_dir)
    for key in ("epoch", "best_global_step", "best_model_checkpoint"):
        assert getattr(lm_t.state, key) == getattr(hf_t.state, key), key
    assert lm_t.state.best_metric == pytest.approx(hf_t.state.best_metric, rel=1e-4)


def epoch_stopper(lib):
    class StopEpoch(lib.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (2, 5):
                control.should_epoch_stop = True

    return StopEpoch()


def test_should_epoch_stop_from_a_callback(tmp_path):
    hf_t, hf_rec = run(
        "hf", tmp_path, callbacks=[epoch_stopper(transformers)], num_train_epochs=3, n_train=8, eval_strategy="epoch"
    )
    lm_t, lm_rec = run(
        "lm", tmp_path, callbacks=[epoch_stopper(lmtrain)], num_train_epochs=3, n_train=8, eval_strategy="epoch"
    )
    assert steps_of(lm_rec) == steps_of(hf_rec)


@pytest.mark.parametrize("at, n_train", [(2, 16), (4, 8)])  # mid-epoch; at an epoch's end
def test_resume_events_and_train_metrics(tmp_path, at, n_train):
    kw = dict(
        max_steps=6,
        n_train=n_train,
        gradient_accumulation_steps=2,
        logging_steps=2,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="epoch",
    )
    recs, whole = {}, {}
    for name in LIBS:
        out = str(tmp_path / name)
        _, rec = run(name, tmp_path, out=out, **kw)
        whole[name] = rec.logs
        recs[name] = run(name, tmp_path, out=out, resume=os.path.join(out, f"checkpoint-{at}"), **kw)
    (hf_t, hf_rec), (lm_t, lm_rec) = recs["hf"], recs["lm"]
    assert steps_of(lm_rec) == steps_of(hf_rec)
    for (step, hf_log), (_, lm_log) in zip(hf_rec.logs[:-1], lm_rec.logs[:-1]):
        if "loss" in hf_log:
            assert lm_log["loss"] == pytest.approx(hf_log["loss"], rel=1e-4), step
    hf_train, lm_train = hf_rec.logs[-1][1], lm_rec.logs[-1][1]
    assert set(hf_train) <= set(lm_train)
    assert lm_t.state.epoch == hf_t.state.epoch
    # Known difference: transformers' train_loss after a resume is the mean over the steps of this train() call;
    # lmtrain's is the mean over the whole run (the saved running sum travels in the checkpoint), so a resumed run
    # reports what the uninterrupted run reports (tests/test_resume.py relies on it).
    step_losses = [log["loss"] for _, log in hf_rec.logs if "loss" in log]
    assert hf_train["train_loss"] == pytest.approx(sum(step_losses) / len(step_losses), rel=1e-4)
    assert lm_train["train_loss"] == pytest.approx(whole["lm"][-1][1]["train_loss"], rel=1e-6)
    assert whole["lm"][-1][1]["train_loss"] == pytest.approx(whole["hf"][-1][1]["train_loss"], rel=1e-4)


def flag_setter(lib, event: str, step: int, flag: str):
    class SetFlag(lib.TrainerCallback):
        pass

    def handler(self, args, state, control, **kwargs):
        if state.global_step == step:
            setattr(control, flag, True)

    setattr(SetFlag, event, handler)
    return SetFlag()


@pytest.mark.parametrize(
    "event, step, flag",
    [
        ("on_step_begin", 2, "should_training_stop"),
        ("on_epoch_begin", 0, "should_training_stop"),
        ("on_log", 2, "should_save"),
        ("on_evaluate", 2, "should_training_stop"),
        ("on_optimizer_step", 2, "should_log"),
        ("on_substep_end", 1, "should_evaluate"),
        ("on_save", 4, "should_training_stop"),
    ],
)
def test_flags_set_by_a_user_callback(tmp_path, event, step, flag):
    kw = dict(
        max_steps=6,
        gradient_accumulation_steps=2,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=4,
    )
    hf_t, hf_rec = run("hf", tmp_path, callbacks=[flag_setter(transformers, event, step, flag)], **kw)
    lm_t, lm_rec = run("lm", tmp_path, callbacks=[flag_setter(lmtrain, event, step, flag)], **kw)
    assert steps_of(lm_rec) == steps_of(hf_rec)
    assert checkpoints(lm_t.args.output_dir) == checkpoints(hf_t.args.output_dir)


def test_should_save_seen_on_epoch_end_every_epoch(tmp_path):
    (_, hf_rec), (_, lm_rec) = both(tmp_path, num_train_epochs=2, n_train=8, save_strategy="epoch")
    for rec in (hf_rec, lm_rec):
        ends = [e for e in rec.events if e[0] == "on_epoch_end"]
        assert [e[1] for e in ends] == [4, 8]
        assert all(e[4] for e in ends)  # control.should_save, after DefaultFlowCallback


# ---- 2. on_log ---------------------------------------------------------------------------------


def test_logs_keys_and_learning_rate(tmp_path):
    kw = dict(
        max_steps=6,
        gradient_accumulation_steps=2,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=3,
        lr_scheduler_type="linear",
        warmup_steps=2,
    )
    (_, hf_rec), (_, lm_rec) = both(tmp_path, **kw)
    assert [s for s, _ in lm_rec.logs] == [s for s, _ in hf_rec.logs]
    for (step, hf_log), (_, lm_log) in zip(hf_rec.logs, lm_rec.logs):
        assert set(hf_log) <= set(lm_log), (step, set(hf_log) - set(lm_log))
        if "learning_rate" in hf_log:
            assert lm_log["learning_rate"] == pytest.approx(hf_log["learning_rate"], rel=1e-6)
        if "loss" in hf_log:
            assert lm_log["loss"] == pytest.approx(hf_log["loss"], rel=1e-4)
        if "eval_loss" in hf_log:
            assert lm_log["eval_loss"] == pytest.approx(hf_log["eval_loss"], rel=1e-4)


# ---- 3. save_strategy="best" -------------------------------------------------------------------


def _weights(path_or_model) -> Dict[str, torch.Tensor]:
    if isinstance(path_or_model, str):
        from safetensors.torch import load_file

        return load_file(os.path.join(path_or_model, "model.safetensors"))
    return {k: v.detach().clone() for k, v in path_or_model.state_dict().items()}


BEST = dict(
    max_steps=6,
    eval_strategy="steps",
    eval_steps=1,
    save_strategy="best",
    metric_for_best_model="loss",
    learning_rate=5e-2,
    load_best_model_at_end=True,
)


def test_save_best_and_load_best(tmp_path):
    (hf_t, hf_rec), (lm_t, lm_rec) = both(tmp_path, **BEST)
    hf_saves = [e[1] for e in hf_rec.events if e[0] == "on_save"]
    assert [e[1] for e in lm_rec.events if e[0] == "on_save"] == hf_saves
    assert checkpoints(lm_t.args.output_dir) == checkpoints(hf_t.args.output_dir)
    assert lm_t.state.best_global_step == hf_t.state.best_global_step
    assert lm_t.state.best_metric == pytest.approx(hf_t.state.best_metric, rel=1e-4)
    assert os.path.basename(lm_t.state.best_model_checkpoint) == os.path.basename(hf_t.state.best_model_checkpoint)
    saved = _weights(lm_t.state.best_model_checkpoint)
    live = _weights(lm_t.model)
    for name, tensor in saved.items():
        torch.testing.assert_close(live[name], tensor)


# ---- 4. early stopping -------------------------------------------------------------------------

EARLY = dict(
    max_steps=6,
    eval_strategy="steps",
    eval_steps=1,
    save_strategy="steps",
    save_steps=1,
    metric_for_best_model="loss",
    greater_is_better=True,
    load_best_model_at_end=True,
)


def test_early_stopping_stops_at_the_same_step(tmp_path):
    early = {name: (lambda lib=lib: lib.EarlyStoppingCallback(early_stopping_patience=2)) for name, lib in LIBS.items()}
    hf_t, hf_rec = run("hf", tmp_path, callbacks=[early["hf"]()], **EARLY)
    lm_t, lm_rec = run("lm", tmp_path, callbacks=[early["lm"]()], **EARLY)
    assert lm_t.state.global_step == hf_t.state.global_step < 6
    assert steps_of(lm_rec) == steps_of(hf_rec)


def _early_counter(trainer) -> int:
    return [cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "EarlyStoppingCallback"][
        0
    ].early_stopping_patience_counter


def test_early_stopping_counter_restored_on_resume(tmp_path):
    import json

    counters = {}
    for name, lib in LIBS.items():
        out = str(tmp_path / name)
        kw = dict(EARLY, restore_callback_states_from_checkpoint=True, out=out, max_steps=5)
        run(name, tmp_path, callbacks=[lib.EarlyStoppingCallback(early_stopping_patience=5)], **kw)
        saved = {
            step: json.load(open(os.path.join(out, f"checkpoint-{step}", "trainer_state.json")))["stateful_callbacks"][
                "EarlyStoppingCallback"
            ]["attributes"]["early_stopping_patience_counter"]
            for step in checkpoints(out)
        }
        step = min(s for s, c in saved.items() if c > 0 and s < 5)  # a checkpoint that saw no improvement
        trainer, rec = run(
            name,
            tmp_path,
            callbacks=[lib.EarlyStoppingCallback(early_stopping_patience=5)],
            resume=os.path.join(out, f"checkpoint-{step}"),
            **kw,
        )
        assert rec.counter_at_begin == saved[step]  # restored before on_train_begin
        counters[name] = (
            step,
            saved,
            rec.counter_at_begin,
            _early_counter(trainer),
            trainer.state.global_step,
            steps_of(rec),
        )
    assert counters["lm"] == counters["hf"]


# ---- 5. save_total_limit -----------------------------------------------------------------------


@pytest.mark.parametrize("limit, strategy", [(1, "steps"), (2, "steps"), (2, "best")])
def test_save_total_limit_keeps_the_same_checkpoints(tmp_path, limit, strategy):
    kw = dict(
        max_steps=5,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy=strategy,
        save_steps=1,
        metric_for_best_model="loss",
        learning_rate=5e-2,
        load_best_model_at_end=True,
        save_total_limit=limit,
    )
    (hf_t, _), (lm_t, _) = both(tmp_path, **kw)
    assert checkpoints(lm_t.args.output_dir) == checkpoints(hf_t.args.output_dir)
    assert lm_t.state.best_global_step == hf_t.state.best_global_step


# ---- 6. a subclassed TrainingArguments ---------------------------------------------------------


@dataclasses.dataclass
class MyArgs(lmtrain.TrainingArguments):
    my_flag: int = 3


def test_subclassed_arguments_train_evaluate_save_and_parse(tmp_path):
    trainer, _ = run(
        "lm",
        tmp_path,
        args_cls=MyArgs,
        max_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        my_flag=7,
    )
    assert trainer.args.my_flag == 7
    assert checkpoints(trainer.args.output_dir) == [2]
    assert "eval_loss" in trainer.evaluate()
    (parsed,) = lmtrain.HfArgumentParser(MyArgs).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path / "p"), "--my_flag", "11", "--max_steps", "3"]
    )
    assert isinstance(parsed, MyArgs) and parsed.my_flag == 11 and parsed.max_steps == 3


# ---- 7. names and transformers' callbacks ------------------------------------------------------


def test_callback_names_importable():
    for name in (
        "DefaultFlowCallback",
        "PrinterCallback",
        "ProgressCallback",
        "EarlyStoppingCallback",
        "TrainerControl",
        "TrainerState",
        "ExportableState",
        "TrainerCallback",
    ):
        assert getattr(lmtrain, name) is not None


def test_transformers_callback_runs_on_lmtrain(tmp_path):
    (_, hf_rec), (_, lm_rec) = both(tmp_path, max_steps=3, logging_steps=2)
    hf_cb = recorder(transformers)  # a transformers.TrainerCallback subclass, given to lmtrain
    trainer, _ = run("lm", tmp_path, callbacks=[hf_cb], max_steps=3, logging_steps=2, out=str(tmp_path / "x"))
    assert isinstance(hf_cb, transformers.TrainerCallback)
    assert steps_of(hf_cb) == steps_of(hf_rec)


# ---- 8. logging_nan_inf_filter -----------------------------------------------------------------


def inf_at(step: int):
    def make(lib):
        class InfTrainer(lib.Trainer):
            def training_step(self, model, inputs, num_items_in_batch=None):
                loss = super().training_step(model, inputs, num_items_in_batch)
                return loss + float("inf") if self.state.global_step + 1 == step else loss

        return InfTrainer

    return make


@pytest.mark.parametrize("nan_filter, ga", [(True, 1), (True, 2), (False, 1)])
def test_nan_inf_filter_logs_what_transformers_logs(tmp_path, nan_filter, ga):
    kw = dict(
        max_steps=6,
        logging_steps=3,
        logging_nan_inf_filter=nan_filter,
        trainer_cls=inf_at(2),
        gradient_accumulation_steps=ga,
    )
    hf_t, hf_rec = run("hf", tmp_path, **kw)
    lm_t, lm_rec = run("lm", tmp_path, nan_policy="ignore", **kw)
    hf_losses = [log["loss"] for _, log in hf_rec.logs if "loss" in log]
    lm_losses = [log["loss"] for _, log in lm_rec.logs if "loss" in log]
    assert len(hf_losses) == len(lm_losses) == 2
    if nan_filter:  # the inf step counts as the mean of the window's steps before it
        assert lm_losses == pytest.approx(hf_losses, rel=1e-4)
    else:
        assert math.isinf(hf_losses[0]) and math.isinf(lm_losses[0])
        # transformers resets its running sum with `tr_loss -= tr_loss` (inf - inf = nan), so every later
        # window logs nan; lmtrain starts the next window from zero and logs its real loss.
        assert math.isnan(hf_losses[1]) and math.isfinite(lm_losses[1])
