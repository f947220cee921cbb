"""lmtrain.training.results: result files as transformers writes them, the model card, the saved arguments."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from lmtrain.training.results import format_metrics, save_args, save_metrics, write_model_card

transformers = pytest.importorskip("transformers")

CALLS = [
    ("train", {"train_loss": 4.25, "train_runtime": 12.5, "epoch": 1.0}, True),
    ("eval", {"eval_loss": 4.0, "eval_perplexity": 54.6, "epoch": 1.0}, True),
    ("test", {"test_loss": 3.9}, False),  # not merged
    ("eval", {"eval_loss": 3.5, "eval_runtime": 0.5}, True),  # evaluated again: the later value wins
]


def read_all(folder) -> dict:
    return {name: json.loads((folder / name).read_text()) for name in sorted(os.listdir(folder))}


def test_save_metrics_writes_what_transformers_writes(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    theirs.mkdir()
    trainer = SimpleNamespace(args=SimpleNamespace(output_dir=str(theirs)), is_world_process_zero=lambda: True)
    for split, metrics, combined in CALLS:
        save_metrics(str(ours), split, dict(metrics), combined=combined)  # creates the folder
        transformers.Trainer.save_metrics(trainer, split, dict(metrics), combined=combined)
    written = read_all(ours)
    assert written == read_all(theirs)
    assert sorted(written) == ["all_results.json", "eval_results.json", "test_results.json", "train_results.json"]
    assert written["all_results.json"] == {
        "train_loss": 4.25,
        "train_runtime": 12.5,
        "epoch": 1.0,
        "eval_loss": 3.5,
        "eval_perplexity": 54.6,
        "eval_runtime": 0.5,
    }
    assert written["eval_results.json"] == {"eval_loss": 3.5, "eval_runtime": 0.5}


def test_format_metrics_aligns_sorted_keys_and_rounds_floats():
    text = format_metrics("eval", {"eval_loss": 1.23456789, "epoch": 2, "eval_samples": 10, "eval_flag": True})
    assert text == (
        "***** eval metrics *****\n"
        "  epoch        = 2\n"
        "  eval_flag    = True\n"
        "  eval_loss    = 1.235\n"
        "  eval_samples = 10"
    )
    assert format_metrics("test", {}) == "***** test metrics *****"


def test_model_card_names_the_run_and_its_last_evaluation(tmp_path):
    history = [
        {"step": 10, "loss": 4.0},
        {"step": 10, "eval_loss": 3.9, "eval_perplexity": 49.4},
        {"step": 20, "loss": 3.0},
        {"step": 20, "eval_loss": 2.9},
        {"step": 20, "train_runtime": 9.0},
    ]
    out = tmp_path / "runs" / "tiny"
    write_model_card(str(out), history, global_step=20, epoch=0.5, dataset="sonnets", tasks=None)
    assert (out / "README.md").read_text() == (
        "# tiny\n\nTrained with lmtrain for 20 steps (0.50 epochs).\n\n- dataset: sonnets\n\n"
        "Last evaluation:\n\n- step: 20\n- eval_loss: 2.9\n"
    )
    write_model_card(str(out), history[:1], global_step=10, epoch=0.25, model_name="my-model")
    assert (out / "README.md").read_text() == "# my-model\n\nTrained with lmtrain for 10 steps (0.25 epochs).\n\n"


def test_save_args_writes_the_pickle_and_the_json(tmp_path):
    from lmtrain import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "run"), learning_rate=3e-4, max_steps=7)
    save_args(args, str(tmp_path))
    assert json.loads((tmp_path / "training_args.json").read_text()) == json.loads(args.to_json_string())
    loaded = torch.load(tmp_path / "training_args.bin", weights_only=False)
    assert (loaded.learning_rate, loaded.max_steps) == (3e-4, 7)

    args.callback_factory = lambda: None  # something a pickle cannot hold
    save_args(args, str(tmp_path))
    assert not (tmp_path / "training_args.bin").exists()  # no stale pickle left behind
    assert json.loads((tmp_path / "training_args.json").read_text())["max_steps"] == 7
