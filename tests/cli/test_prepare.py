"""`lmtrain prepare`: tokenize and pack text into the cache, and print its statistics."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lmtrain import cli
from tests.cli.conftest import SONNETS


def statistics(out: str) -> dict:
    """The printed lines as {name: text after the colon}."""
    return dict(line.split(": ", 1) for line in out.strip().splitlines() if ": " in line)


def test_prepare_counts_documents_tokens_and_blocks(model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    docs = [p.strip() for p in SONNETS.read_text(encoding="utf-8")[:6000].split("\n\n") if p.strip()]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs), encoding="utf-8")
    valid = tmp_path / "valid.jsonl"
    valid.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs[:5]), encoding="utf-8")
    argv = ["prepare", "--tokenizer_name", str(model_dir), "--train_file", str(train), "--text_column", "body"]
    argv += ["--validation_file", str(valid), "--block_size", "16", "--cache_dir", str(tmp_path / "cache")]
    assert cli.main(argv) == 0
    stats = statistics(capsys.readouterr().out)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def tokens(texts):  # each document's ids and an EOS
        return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)

    train_blocks, valid_blocks = tokens(docs) // 16, tokens(docs[:5]) // 16
    assert stats["documents"] == f"{len(docs):,}"
    assert stats["tokens"] == f"{train_blocks * 16:,}"  # whole blocks: the remainder is dropped
    assert stats["blocks"] == f"{train_blocks:,} train, {valid_blocks:,} validation (block_size 16)"
    caches = stats["cache"].split(", ")
    assert len(caches) == 2 and all(Path(c).is_dir() and Path(c).parent == tmp_path / "cache" for c in caches)
    assert re.fullmatch(r"\d+\.\d\ds", stats["time"])


def test_prepare_without_a_tokenizer_trains_one_and_holds_out_a_split(tmp_path, capsys):
    text = tmp_path / "a.txt"
    text.write_text(SONNETS.read_text(encoding="utf-8")[:8000], encoding="utf-8")
    argv = ["prepare", "--train_file", str(text), "--vocab_size", "300", "--block_size", "32"]
    assert cli.main(argv + ["--validation_split_percentage", "10", "--cache_dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("training a byte-level BPE tokenizer (vocab 300) on the training files\n")
    stats = statistics(out)
    train, valid = re.fullmatch(r"([\d,]+) train, ([\d,]+) validation \(block_size 32\)", stats["blocks"]).groups()
    train, valid = int(train.replace(",", "")), int(valid.replace(",", ""))
    assert stats["documents"] == "1" and stats["tokens"] == f"{train * 32:,}"
    assert valid >= 1 and abs(valid - 0.1 * (train + valid)) <= 1  # 10% of the blocks held out
