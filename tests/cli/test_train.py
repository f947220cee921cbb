"""The `lmtrain train` recipe called from Python (lmtrain.cli.train.train), as the README shows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtrain.errors import ConfigError

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "lmtrain" / "data" / "sample"


def test_train_is_callable_from_python(tmp_path, capsys):
    from lmtrain import TrainingArguments
    from lmtrain.cli.train import train
    from lmtrain.recipe_args import DataArguments, ModelArguments

    out = tmp_path / "run"
    code = train(
        ModelArguments(config_overrides="n_layer=1,n_embd=32,n_head=2", vocab_size=300),
        DataArguments(train_file=[str(SAMPLE / "sonnets.txt")], block_size=32, cache_dir=str(tmp_path / "c")),
        TrainingArguments(
            output_dir=str(out),
            max_steps=2,
            per_device_train_batch_size=4,
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
        ),
    )
    assert code == 0
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    lines = capsys.readouterr().out.strip().splitlines()
    # the user's own data: no sample, but the next step
    assert not any(line.startswith("sample at step") for line in lines)
    assert lines[-1].startswith("next: lmtrain generate --model ") and f"lmtrain report {out}" in lines[-1]


def test_train_refuses_an_output_dir_under_a_file_before_any_work(tmp_path):
    from lmtrain import TrainingArguments
    from lmtrain.cli.train import train
    from lmtrain.recipe_args import DataArguments, ModelArguments

    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        train(
            ModelArguments(),
            DataArguments(cache_dir=str(tmp_path / "c")),
            TrainingArguments(output_dir=str(tmp_path / "f" / "run"), report_to="none"),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no tokenizer cache, nothing


def test_next_steps_line():
    from lmtrain.cli.train import next_steps
    from lmtrain.recipe_args import ModelArguments

    assert next_steps("runs/a b", ModelArguments(), sample_run=True) == (
        "next: lmtrain generate --model 'runs/a b' --prompt 'Shall I compare thee', "
        "or lmtrain report 'runs/a b' (plots and an HTML page)"
    )
    assert "lmtrain eval --mlm --model runs/m" in next_steps("runs/m", ModelArguments(mlm=True))
    assert "--model runs/l/merged" in next_steps("runs/l", ModelArguments(lora_r=8, lora_merge=True))


def test_unknown_flag_suggests_the_closest(capsys):
    from lmtrain import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--learning_rat", "1e-3"])
    assert info.value.code == 2 and "--learning_rate" in capsys.readouterr().err
