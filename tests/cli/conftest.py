"""A tiny saved model for the command tests: a byte-level BPE tokenizer trained on a few sonnets and an
untrained 2-layer GPT-2 of its vocabulary, in one directory as `lmtrain train` leaves it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import tiny_gpt2

SONNETS = Path(__file__).resolve().parents[2] / "src" / "lmtrain" / "data" / "sample" / "sonnets.txt"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    from lmtrain.data.bpe import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("cli-model")
    text = root / "sonnets.txt"
    text.write_text(SONNETS.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    tokenizer = train_bpe_tokenizer([text], vocab_size=300)
    model = tiny_gpt2(vocab_size=len(tokenizer), positions=64)
    out = root / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def progress_bars_on():
    """transformers' progress bars switched on, as in a fresh process (another test may have turned them off)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    yield
    (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
