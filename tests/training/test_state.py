"""lmtrain.training.state: TrainState, saved as transformers' trainer_state.json plus lmtrain's own fields."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from lmtrain.training.state import LMTRAIN_FIELDS, TrainerState, TrainState, hf_field_names

transformers = pytest.importorskip("transformers")


def hf_fields() -> set:
    return {f.name for f in dataclasses.fields(transformers.TrainerState)}


def busy_state() -> TrainState:
    """Every field away from its default, as in the middle of a run."""
    return TrainState(
        global_step=12,
        epoch=1.5,
        max_steps=40,
        num_train_epochs=5,
        logging_steps=2,
        eval_steps=4,
        save_steps=6,
        train_batch_size=8,
        total_flos=1.5e12,
        num_input_tokens_seen=12 * 8 * 64,
        log_history=[{"step": 2, "loss": 4.5}, {"step": 4, "eval_loss": 4.2}],
        best_metric=4.2,
        best_model_checkpoint="out/checkpoint-4",
        best_global_step=4,
        data_epoch=1,
        batches_in_epoch=3,
        window_loss_sum=7.25,
        window_steps=2,
        window_tokens=1024,
        train_loss_sum=55.5,
        nonfinite_steps=1,
        is_local_process_zero=False,
        is_world_process_zero=False,
        is_hyper_param_search=True,
        trial_name="run-3",
        trial_params={"learning_rate": 1e-4},
        stateful_callbacks={"TrainerControl": {"args": {"should_training_stop": True}, "attributes": {}}},
    )


def test_state_dict_round_trip_restores_every_field():
    state = busy_state()
    saved = state.state_dict()
    assert set(saved) == {f.name for f in dataclasses.fields(TrainState)}
    back = TrainState()
    back.load_state_dict(json.loads(json.dumps(saved)))  # as it travels through a JSON file
    assert back == state
    saved["log_history"].append({"step": 6})  # a copy: the state does not change with it
    assert len(state.log_history) == 2


def test_hf_and_lmtrain_halves_split_the_fields():
    state = busy_state()
    hf, own = state.hf_state_dict(), state.lmtrain_state_dict()
    assert set(hf) == hf_fields()  # exactly what the installed transformers' TrainerState accepts
    assert set(own) == set(LMTRAIN_FIELDS) and not set(hf) & set(own)
    assert set(hf) | set(own) == set(state.state_dict())  # every field is saved in one of them
    full = state.state_dict()
    assert {**hf, **own} == full
    transformers.TrainerState(**hf)  # transformers builds its state from it with cls(**json)


def test_field_names_without_transformers_are_the_5x_list(monkeypatch):
    assert hf_field_names() == tuple(f.name for f in dataclasses.fields(transformers.TrainerState))
    monkeypatch.setitem(sys.modules, "transformers.trainer_callback", None)  # the import fails
    fallback = hf_field_names()
    assert set(fallback) == hf_fields()  # the installed transformers is 5.x


def test_save_to_json_is_read_by_transformers_load_from_json(tmp_path):
    state = busy_state()
    path = tmp_path / "trainer_state.json"
    state.save_to_json(str(path))
    theirs = transformers.TrainerState.load_from_json(str(path))
    for name in hf_fields():
        assert getattr(theirs, name) == getattr(state, name), name
    ours = TrainState.load_from_json(str(path))
    assert ours.hf_state_dict() == state.hf_state_dict()
    assert ours.lmtrain_state_dict() == TrainState().lmtrain_state_dict()  # not in trainer_state.json


def test_load_from_json_reads_what_transformers_writes(tmp_path):
    theirs = transformers.TrainerState(
        global_step=5, epoch=0.25, log_history=[{"step": 5, "loss": 3.0}], best_metric=1.0, trial_params={"x": 1}
    )
    path = tmp_path / "trainer_state.json"
    theirs.save_to_json(str(path))
    ours = TrainState.load_from_json(str(path))
    assert isinstance(ours, TrainState) and TrainerState is TrainState  # transformers' name works too
    for name in hf_fields():
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.lmtrain_state_dict() == TrainState().lmtrain_state_dict()
