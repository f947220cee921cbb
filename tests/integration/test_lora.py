"""LoRA fine-tuning through peft, on a tiny model the test builds and saves."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_cli import lmtrain

peft = pytest.importorskip("peft")


def test_lora_finetune_saves_adapter_and_merged_model(tmp_path, subprocess_env):
    from transformers import AutoModelForCausalLM

    from lmtrain.data.bpe import train_bpe_tokenizer
    from lmtrain.data.readers import sample_corpus_files
    from tests.conftest import tiny_gpt2

    tok = train_bpe_tokenizer(sample_corpus_files()[:1], vocab_size=300)
    base = tiny_gpt2(vocab_size=len(tok), positions=64)
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    out = tmp_path / "lora"
    proc = lmtrain(
        [
            "train",
            "--model_name_or_path",
            str(tmp_path / "base"),
            "--output_dir",
            str(out),
            "--cache_dir",
            str(tmp_path / "cache"),
            "--block_size",
            "32",
            "--max_steps",
            "12",
            "--lora_r",
            "4",
            "--lora_merge",
            "--learning_rate",
            "1e-2",
            "--report_to",
            "none",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "12",
            "--save_steps",
            "6",
            "--eval_sample_prompt",
            "Shall I",
        ],
        subprocess_env,
    )
    assert "sample at step 12" in proc.stdout
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    summary = proc.stdout.split("lmtrain: ", 1)[1].splitlines()[0]
    trainable = float(summary.split("(")[1].split("M trainable")[0])
    total = float(summary.split(" with ")[1].split("M parameters")[0])
    assert trainable < total / 5  # only the adapters train
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert merged.config.n_layer == 2
    # resume from an adapter checkpoint
    lmtrain(
        [
            "train",
            "--model_name_or_path",
            str(tmp_path / "base"),
            "--output_dir",
            str(out),
            "--resume",
            "--cache_dir",
            str(tmp_path / "cache"),
            "--block_size",
            "32",
            "--max_steps",
            "14",
            "--lora_r",
            "4",
            "--report_to",
            "none",
        ],
        subprocess_env,
    )
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 14
