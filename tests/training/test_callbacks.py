"""Logging integrations and the progress bars."""

from __future__ import annotations

import io
import sys
import types

import pytest

from lmtrain import Trainer
from lmtrain.training.reporting import ProgressCallback, reporting_callbacks
from tests.conftest import tiny_gpt2
from tests.training.test_trainer import make_args, ragged_dataset, stack


def test_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    trainer = Trainer(
        model=tiny_gpt2(),
        args=make_args(tmp_path, max_steps=2, report_to="tensorboard", per_device_train_batch_size=4),
        train_dataset=ragged_dataset(),
        data_collator=stack,
    )
    trainer.train()
    events = list((tmp_path / "out" / "runs").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_wandb_and_mlflow_receive_every_record(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, data, step):
            calls.append(("wandb", step, data.get("loss")))

        def finish(self):
            calls.append(("wandb", "finish"))

    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kw: calls.append(("wandb", "init", kw["name"])) or Run()
    mlflow = types.ModuleType("mlflow")
    mlflow.start_run = lambda run_name: calls.append(("mlflow", "start", run_name))
    mlflow.log_params = lambda params: calls.append(("mlflow", "params", params["learning_rate"]))
    mlflow.log_metrics = lambda metrics, step: calls.append(("mlflow", step, metrics.get("loss")))
    mlflow.end_run = lambda: calls.append(("mlflow", "end"))
    for name, mod in (("wandb", wandb), ("mlflow", mlflow)):
        mod.__spec__ = types.SimpleNamespace(name=name)
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if name in ("wandb", "mlflow") else None)
    trainer = Trainer(
        model=tiny_gpt2(),
        args=make_args(
            tmp_path, max_steps=2, report_to=["wandb", "mlflow"], per_device_train_batch_size=4, run_name="r1"
        ),
        train_dataset=ragged_dataset(),
        data_collator=stack,
    )
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert ("wandb", "init", "r1") in calls and ("mlflow", "start", "r1") in calls
    # the final train metrics (no "loss" key) are logged before on_train_end, as transformers does
    assert [c[2] for c in calls if c[0] == "wandb" and c[1] in (1, 2) and c[2] is not None] == losses
    assert [c[2] for c in calls if c[0] == "mlflow" and c[1] in (1, 2) and c[2] is not None] == losses
    assert calls[-2:] in ([("wandb", "finish"), ("mlflow", "end")], [("mlflow", "end"), ("wandb", "finish")])


def test_missing_integration_is_skipped_with_one_warning(monkeypatch, capsys):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert reporting_callbacks(["wandb"]) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install wandb" in err[0]


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_on_a_terminal_and_plain_lines_otherwise(tmp_path):
    tty = FakeTTY()
    trainer = Trainer(
        model=tiny_gpt2(),
        args=make_args(
            tmp_path, max_steps=4, logging_steps=2, eval_strategy="steps", eval_steps=2, per_device_train_batch_size=4
        ),
        train_dataset=ragged_dataset(),
        eval_dataset=ragged_dataset(n=6),
        data_collator=stack,
    )
    trainer.pop_callback(ProgressCallback)
    trainer.add_callback(ProgressCallback(stream=tty))
    trainer.train()
    screen = tty.getvalue()
    assert "train" in screen and "4/4" in screen and "eval" in screen and "loss=" in screen
    plain = io.StringIO()
    trainer2 = Trainer(
        model=tiny_gpt2(),
        args=make_args(tmp_path / "b", max_steps=2, logging_steps=1, per_device_train_batch_size=4),
        train_dataset=ragged_dataset(),
        data_collator=stack,
    )
    trainer2.pop_callback(ProgressCallback)
    trainer2.add_callback(ProgressCallback(stream=plain))
    trainer2.train()
    lines = plain.getvalue().splitlines()
    assert lines[0].startswith("step 1/2 loss=") and "\r" not in plain.getvalue()


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path):
    from lmtrain import EarlyStoppingCallback

    data = ragged_dataset()
    # a learning rate of 0 never improves the eval loss: stop after 1 + patience evaluations
    trainer = Trainer(
        model=tiny_gpt2(),
        args=make_args(
            tmp_path,
            max_steps=50,
            learning_rate=0.0,
            eval_strategy="steps",
            eval_steps=2,
            per_device_train_batch_size=4,
            metric_for_best_model="loss",
        ),
        train_dataset=data,
        eval_dataset=data[:4],
        data_collator=stack,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=2)],
    )
    assert trainer.train().global_step == 6


def test_jsonl_log_seals_a_line_cut_by_a_kill(tmp_path):
    import json as _json

    from lmtrain.runlog import read_log

    out = tmp_path / "out"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 1, "loss": 4.0}\n{"step": 2, "lo')  # killed mid-write
    trainer = Trainer(
        model=tiny_gpt2(),
        args=make_args(tmp_path, max_steps=1, per_device_train_batch_size=4),
        train_dataset=ragged_dataset(),
        data_collator=stack,
    )
    trainer.train()
    lines = (out / "log.jsonl").read_text().splitlines()
    assert lines[1] == '{"step": 2, "lo' and _json.loads(lines[2])["step"] == 1
    records, bad = read_log(out / "log.jsonl")
    assert bad == 1 and [r["step"] for r in records][:2] == [1, 1]
