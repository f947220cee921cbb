"""`lmtrain eval`: loss, perplexity and bits per byte of a saved model on text files, printed as JSON."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmtrain import cli
from tests.cli.conftest import SONNETS


@pytest.fixture
def held_out(tmp_path):
    path = tmp_path / "held_out.txt"
    path.write_text(SONNETS.read_text(encoding="utf-8")[-3000:], encoding="utf-8")  # not what the tokenizer saw
    return path


def test_eval_prints_only_its_own_json(model_dir, held_out, tmp_path, capfd, progress_bars_on):
    argv = ["eval", "--model", str(model_dir), "--file", str(held_out), "--block_size", "64"]
    assert cli.main(argv + ["--cache_dir", str(tmp_path / "c")]) == 0
    out, err = capfd.readouterr()
    assert "Loading weights" not in err and "it/s" not in err, err
    assert out.lstrip().startswith("{") and json.loads(out)["eval_loss"] > 0


def test_eval_metrics_are_the_models_loss_on_the_files_blocks(model_dir, held_out, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtrain.data.readers import iter_documents

    block = 32
    argv = ["eval", "--model", str(model_dir), "--file", str(held_out), "--block_size", str(block)]
    assert cli.main(argv + ["--batch_size", "3", "--cache_dir", str(tmp_path / "c")]) == 0
    metrics = json.loads(capsys.readouterr().out)

    # the same numbers, computed here: each document's ids and an EOS, cut into whole blocks
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    docs = list(iter_documents([held_out]))
    ids = [i for doc in docs for i in tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
    blocks = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
    with torch.no_grad():
        losses = [model(input_ids=b[None], labels=b[None]).loss.item() for b in blocks]
    loss = sum(losses) / len(losses)  # every block predicts block - 1 tokens: the token mean
    n_bytes = sum(len(doc.encode("utf-8")) for doc in docs)
    assert metrics["eval_loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert metrics["eval_bits_per_byte"] == pytest.approx(loss / math.log(2) * len(ids) / n_bytes, rel=1e-5)
    assert "epoch" not in metrics


def test_eval_without_model_or_file_is_one_line(model_dir, capsys):
    assert cli.main(["eval", "--model", str(model_dir)]) == 2
    assert capsys.readouterr().err == "error: lmtrain eval needs --model DIR and --file F.\n"
