"""`lmtrain train --train_file web/:0.7 'books/*.txt:0.2' code.jsonl:0.1`: three sources mixed by weight."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.test_cli import TINY, lmtrain

SONNETS = Path(__file__).resolve().parents[2] / "src" / "lmtrain" / "data" / "sample" / "sonnets.txt"


def make_sources(root: Path) -> None:
    """web/ (a folder of .txt), books/*.txt (a glob) and code.jsonl, each a few kB."""
    text = SONNETS.read_text(encoding="utf-8")
    (root / "web").mkdir()
    for i in range(4):
        (root / "web" / f"page{i}.txt").write_text(text[i * 6000 : (i + 1) * 6000], encoding="utf-8")
    (root / "books").mkdir()
    for i in range(2):
        (root / "books" / f"book{i}.txt").write_text(text[30000 + i * 5000 : 35000 + i * 5000], encoding="utf-8")
    (root / "books" / "notes.md").write_text("not matched by the glob")
    lines = [{"text": f"def f{i}(x):\n    return x * {i} + {i * i}\n"} for i in range(150)]
    (root / "code.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")


def test_three_weighted_sources_train_and_log_tokens_per_source(tmp_path, subprocess_env):
    make_sources(tmp_path)
    out = tmp_path / "run"
    proc = lmtrain(
        [
            "train",
            "--train_file",
            "web/:0.7",
            "books/*.txt:0.2",
            "code.jsonl:0.1",
            "--output_dir",
            str(out),
            "--cache_dir",
            str(tmp_path / "cache"),
            "--max_steps",
            "6",
            *TINY,
            "--logging_steps",
            "2",
            "--save_strategy",
            "no",
        ],
        subprocess_env,
        cwd=tmp_path,
    )
    lines = proc.stdout.splitlines()
    head = next(line for line in lines if line.startswith("data: "))
    assert "3 sources mixed by weight" in head and "mix_exhausted repeat" in head and "validation blocks" in head
    for name, weight in [("web", "0.7"), ("books/*.txt", "0.2"), ("code.jsonl", "0.1")]:
        assert any(line.startswith(f"  {name}: weight {weight}, ") and " blocks" in line for line in lines), name
    assert len([d for d in (tmp_path / "cache").iterdir() if d.is_dir()]) >= 3  # a token cache per source
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 4, 6]  # (TINY logs the first step)
    keys = ["tokens_web", "tokens_books/_.txt", "tokens_code.jsonl"]  # (a glob's * is written as _)
    for r in train:
        assert sum(r[k] for k in keys) == r["step"] * 8 * 64  # steps x batch x block_size input tokens
    last = train[-1]
    assert last["tokens_web"] > last["tokens_code.jsonl"] > 0
    metrics = json.loads((out / "eval_results.json").read_text())  # the sources' held-out blocks together
    assert metrics["eval_loss"] > 0 and metrics["eval_bits_per_byte"] > 0


def test_weights_in_a_config_file_and_the_prepare_command(tmp_path, capsys, monkeypatch):
    from lmtrain.cli import main

    make_sources(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mix.yaml").write_text(
        "train_file: [web/:0.7, 'books/*.txt:0.2', code.jsonl:0.1]\nmix_exhausted: end\nblock_size: 32\n"
        f"vocab_size: 300\ncache_dir: {tmp_path / 'cache'}\nvalidation_file: [books/book0.txt]\n"
    )
    assert main(["prepare", "--config", "mix.yaml"]) == 0
    out = capsys.readouterr().out
    sources = [line for line in out.splitlines() if line.startswith("source ")]
    assert [line.split(" (")[0] for line in sources] == ["source web", "source books/*.txt", "source code.jsonl"]
    assert all(", 0 validation," in line for line in sources)  # the validation file instead of held-out blocks
    assert "3 sources mixed by weight" in out and "mix_exhausted end" in out and " validation blocks" in out

    (tmp_path / "tiny.txt").write_text("too short")
    assert main(["prepare", "--config", "mix.yaml", "--train_file", "web/:1", "tiny.txt:1"]) == 2
    assert "error: source tiny.txt: the training data has" in capsys.readouterr().err


@pytest.mark.parametrize(
    "files, message",
    [
        (["web/:0.7", "code.jsonl"], "--train_file code.jsonl has no weight while web/:0.7 has one"),
        (["web/:0.7", "code.jsonl:-2"], "the weight -2 must be a positive number"),
    ],
)
def test_bad_weights_are_one_line_before_any_work(tmp_path, capsys, monkeypatch, files, message):
    from lmtrain.cli import main

    make_sources(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code = main(["train", "--train_file", *files, "--output_dir", str(out), "--cache_dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists() and not os.path.exists(tmp_path / "c")
