"""Tests for lmtrain.data.packing: best-fit rows, the bos_aligned dataset, and --packing end to end."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
import torch

from lmtrain.data.pack import BlockDataset, prepare_datasets
from lmtrain.data.packing import (
    PackedRowDataset,
    best_fit_row,
    best_fit_rows,
    bos_aligned_rows,
    check_packing,
    concat_stats,
    describe_packing,
)
from lmtrain.errors import ConfigError

# --------------------------------------------------------------------------- best_fit_rows


def rows_of(fit) -> list[list[tuple[int, int]]]:
    """[(document, tokens taken), ...] per row."""
    return [
        list(zip(fit.seg_doc[a:b].tolist(), fit.seg_len[a:b].tolist()))
        for a, b in zip(fit.row_ptr[:-1], fit.row_ptr[1:])
    ]


@pytest.mark.parametrize(
    "lengths, row_len, buffer, rows, dropped, cropped",
    [
        # the largest that fits first, then the largest that fits the rest
        ([3, 10, 2, 6, 5], 8, 1000, [[(3, 6), (2, 2)], [(4, 5), (0, 3)], [(1, 8)]], 2, 1),
        # a buffer of 3: [5,3,8] -> 8 | [5,3,2] -> 5,3 | [2,4,7] -> 7, then 1 of the shortest (2) | [4,1] too few
        ([5, 3, 8, 2, 4, 7, 1], 8, 3, [[(2, 8)], [(0, 5), (1, 3)], [(5, 7), (3, 1)]], 1 + 5, 1),
        # ties go to the earlier document
        ([4, 4, 4, 4], 8, 1000, [[(0, 4), (1, 4)], [(2, 4), (3, 4)]], 0, 0),
        # nothing fits the 3 left: the shortest (the earliest of equals) is cropped; the last 5 make no row
        ([5, 5, 5], 8, 1000, [[(0, 5), (1, 3)]], 2 + 5, 1),
        # a document longer than a row is cropped (its tail dropped), not split
        ([20], 8, 1000, [[(0, 8)]], 12, 1),
        ([3, 2], 8, 1000, [], 5, 0),
    ],
)
def test_best_fit_rows_by_hand(lengths, row_len, buffer, rows, dropped, cropped):
    fit = best_fit_rows(np.array(lengths), row_len, buffer)
    assert rows_of(fit) == rows
    assert fit.tokens_dropped == dropped == sum(lengths) - fit.tokens_used
    assert fit.tokens_used == len(rows) * row_len and fit.documents_cropped == cropped


@pytest.fixture(scope="module")
def random_lengths() -> np.ndarray:
    return np.random.default_rng(0).integers(1, 90, size=3000)


@pytest.mark.parametrize("row_len, buffer", [(64, 1000), (64, 7), (257, 50)])
def test_best_fit_rows_properties(random_lengths, row_len, buffer):
    fit = best_fit_rows(random_lengths, row_len, buffer)
    again = best_fit_rows(random_lengths.tolist(), row_len, buffer)
    assert all(np.array_equal(getattr(fit, k), getattr(again, k)) for k in ("row_ptr", "seg_doc", "seg_len"))
    per_row = np.add.reduceat(fit.seg_len, fit.row_ptr[:-1])
    assert fit.num_rows > 0 and (per_row == row_len).all()  # every row full
    assert len(set(fit.seg_doc.tolist())) == len(fit.seg_doc)  # a document is used at most once
    whole = fit.seg_len == random_lengths[fit.seg_doc]
    last = np.zeros(len(whole), dtype=bool)
    last[fit.row_ptr[1:] - 1] = True
    assert whole[~last].all()  # only a row's last segment can be a crop
    assert (~whole).sum() == fit.documents_cropped
    assert fit.tokens_dropped == random_lengths.sum() - fit.num_rows * row_len
    # cropping and the last partial row are the only losses
    unused = np.setdiff1d(np.arange(len(random_lengths)), fit.seg_doc)
    crop_loss = (random_lengths[fit.seg_doc] - fit.seg_len).sum()
    assert crop_loss + random_lengths[unused].sum() == fit.tokens_dropped and random_lengths[unused].sum() < row_len


def test_best_fit_rows_rejects_bad_input():
    with pytest.raises(ValueError):
        best_fit_rows(np.array([3, -1]), 8)
    with pytest.raises(ValueError):
        best_fit_rows(np.array([3]), 0)


def test_streaming_rows_equal_offline_rows(random_lengths):
    """best_fit_row on a rolling buffer, topped up the same way, gives best_fit_rows' rows."""
    row_len, size = 100, 20
    docs = [np.arange(n, dtype=np.int64) + 1000 * d for d, n in enumerate(random_lengths[:600])]
    fit = best_fit_rows(random_lengths[:600], row_len, size)
    expected = [np.concatenate([docs[d][:n] for d, n in row]) for row in rows_of(fit)]
    got, buffer, nxt, dropped = [], [], 0, 0
    while True:
        while nxt < len(docs) and (len(buffer) < size or sum(map(len, buffer)) < row_len):
            buffer.append(docs[nxt])
            nxt += 1
        row, buffer, lost = best_fit_row(buffer, row_len)
        if row is None:
            break
        got.append(row)
        dropped += lost
    assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert dropped + sum(map(len, buffer)) == fit.tokens_dropped


# --------------------------------------------------------------------------- PackedRowDataset

BOS, EOS = 1, 2


def corpus(lengths) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """Documents whose ids say which document they are (100*d + position + 10), a cache of them."""
    docs = [[100 * d + i + 10 for i in range(n)] for d, n in enumerate(lengths)]
    tokens = np.array([t for doc in docs for t in doc + [EOS]], dtype=np.uint16)
    offsets = np.cumsum([0] + [n + 1 for n in lengths]).astype(np.int64)
    return docs, tokens, offsets


@pytest.mark.parametrize("bos", [EOS, BOS])  # GPT-2 style (BOS is EOS) and a distinct BOS
def test_rows_are_document_heads_with_bos(bos):
    lengths = [5, 30, 2, 12, 0, 7, 19, 3, 40, 8, 1, 9]
    docs, tokens, offsets = corpus(lengths)
    rows = bos_aligned_rows(offsets, 16, bos_token_id=bos, eos_token_id=EOS, buffer=4)
    ds = PackedRowDataset(tokens, rows, block_size=16)
    with_bos = [[bos] + d + ([EOS] if bos != EOS else []) for d in docs]  # the documents as packed
    fit = best_fit_rows([len(d) for d in with_bos], 16, 4)
    assert len(ds) == fit.num_rows > 0 and ds.num_tokens == 16 * len(ds)
    assert rows.stats.tokens_dropped == fit.tokens_dropped and rows.stats.tokens_in == sum(map(len, with_bos))
    for r, segments in enumerate(rows_of(fit)):
        item = ds[r]
        assert set(item) == {"input_ids", "labels"} and torch.equal(item["input_ids"], item["labels"])
        ids = item["input_ids"].tolist()
        assert ids == [t for d, n in segments for t in with_bos[d][:n]]
        # it starts with BOS and the first token of a document: no tail of an earlier one
        assert ids[0] == bos and (len(ids) < 2 or ids[1] in (EOS, BOS) or (ids[1] - 10) % 100 == 0)


def test_mlm_rows_start_at_a_document_start():
    lengths = [5, 30, 2, 12, 7, 19, 3]
    docs, tokens, offsets = corpus(lengths)
    rows = bos_aligned_rows(offsets, 10 - 2)  # no BOS: the window is [CLS] ... [SEP]
    ds = PackedRowDataset(tokens, rows, block_size=10, mlm=True, cls_token_id=7, sep_token_id=8)
    fit = best_fit_rows([n + 1 for n in lengths], 8)
    for r, segments in enumerate(rows_of(fit)):
        item = ds[r]
        assert set(item) == {"input_ids", "attention_mask"} and item["attention_mask"].tolist() == [1] * 10
        assert item["input_ids"].tolist() == [7] + [t for d, n in segments for t in (docs[d] + [EOS])[:n]] + [8]


def test_getitems_subsets_and_pickle(tmp_path):
    lengths = np.random.default_rng(1).integers(1, 60, size=200).tolist()
    _, tokens, offsets = corpus(lengths)
    path = tmp_path / "tokens.bin"
    tokens.tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r")
    rows = bos_aligned_rows(offsets, 32, bos_token_id=EOS, eos_token_id=EOS)
    full = PackedRowDataset(mm, rows, 32)
    sub = PackedRowDataset(mm, rows, 32, block_indices=np.array([0, 5, 9, rows.num_rows - 1]), bytes_per_token=3.0)
    assert len(sub) == 4 and sub.num_tokens == 4 * 32 and sub.bytes_per_token == 3.0
    assert torch.equal(sub[1]["input_ids"], full[5]["input_ids"])
    idx = [3, 0, 2, 2, -1]
    batch = sub.__getitems__(idx)
    assert torch.equal(torch.stack([b["input_ids"] for b in batch]), torch.stack([sub[i]["input_ids"] for i in idx]))
    with pytest.raises(IndexError):
        sub[4]
    with pytest.raises(ValueError):
        PackedRowDataset(mm, rows, 32, block_indices=np.array([rows.num_rows]))
    with pytest.raises(ValueError):  # rows cut for another block size
        PackedRowDataset(mm, rows, 16)
    blob = pickle.dumps(sub)
    assert len(blob) < tokens.nbytes  # the corpus is re-opened by path, not copied
    again = pickle.loads(blob)
    assert isinstance(again.tokens, np.memmap) and torch.equal(again[2]["input_ids"], sub[2]["input_ids"])


def test_concat_stats_and_describe():
    s = concat_stats(103, 10)
    assert (s.tokens_used, s.tokens_dropped, s.tokens_padded) == (100, 3, 0)
    info = {"corpus_tokens": 103, **s.info()}
    assert describe_packing(info) == "concat: 2.9% of tokens dropped (3), 0 padded"
    bos = {"packing": "bos_aligned", "tokens_dropped": 60, "tokens_padded": 0, "packing_input_tokens": 100}
    assert describe_packing(bos).startswith("bos_aligned: 60.0% of tokens dropped (60), 0 padded (the documents are")
    assert check_packing("bos_aligned") == "bos_aligned"
    with pytest.raises(ConfigError, match="^--packing 'best' is not one of concat, bos_aligned; pass one of them$"):
        check_packing("best")


# --------------------------------------------------------------------------- prepare_datasets and the CLI


@pytest.fixture(scope="module")
def jsonl_corpus(tmp_path_factory):
    """Many short documents (lines of the sonnets) and a tokenizer trained on them."""
    from lmtrain.data.bpe import train_bpe_tokenizer
    from lmtrain.data.readers import sample_corpus_files

    root = tmp_path_factory.mktemp("packing")
    text = sample_corpus_files()[-1].read_text(encoding="utf-8")[:20000]  # the first sonnets
    docs = [line.strip() for line in text.splitlines() if line.strip()]
    f = root / "docs.jsonl"
    f.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return f, train_bpe_tokenizer([f], vocab_size=300), len(docs)


def test_prepare_bos_aligned(jsonl_corpus, tmp_path):
    f, tokenizer, n_docs = jsonl_corpus
    train, val, info = prepare_datasets([f], tokenizer, 64, cache_dir=tmp_path, packing="bos_aligned")
    assert isinstance(train, PackedRowDataset) and isinstance(val, PackedRowDataset)
    assert info["packing"] == "bos_aligned" and info["tokens_padded"] == 0 and info["train_documents"] == n_docs
    rows = train.rows.num_rows
    assert info["train_blocks"] + info["eval_blocks"] == len(train) + len(val) == rows
    assert not set(train.block_indices) & set(val.block_indices)
    assert info["tokens_dropped"] == info["corpus_tokens"] - rows * 64 > 0  # BOS is EOS: no tokens added
    bos = tokenizer.eos_token_id
    assert all(train[i]["input_ids"][0] == bos for i in range(len(train)))
    # concat on the same cache: only the remainder is dropped
    train_c, val_c, info_c = prepare_datasets([f], tokenizer, 64, cache_dir=tmp_path)
    assert isinstance(train_c, BlockDataset) and info_c["packing"] == "concat" and info_c["tokens_padded"] == 0
    assert info_c["tokens_dropped"] == info_c["corpus_tokens"] % 64 < info["tokens_dropped"]
    # masked LM: [CLS] + a window starting at a document start + [SEP]
    train_m, _, info_m = prepare_datasets([f], tokenizer, 32, mlm=True, cache_dir=tmp_path, packing="bos_aligned")
    ids = train_m[0]["input_ids"].tolist()
    assert len(ids) == 32 and ids[0] == ids[-1] == tokenizer.eos_token_id and "labels" not in train_m[0]
    assert info_m["tokens_dropped"] == info_m["corpus_tokens"] - train_m.rows.num_rows * 30
    with pytest.raises(ConfigError, match="--packing 'bos' is not one of concat, bos_aligned"):
        prepare_datasets([f], tokenizer, 64, cache_dir=tmp_path / "never", packing="bos")
    assert not (tmp_path / "never").exists()  # refused before tokenizing


def test_cli_prepare_and_train_print_the_counts(jsonl_corpus, tmp_path, capsys):
    from lmtrain import TrainingArguments, cli
    from lmtrain.cli.train import train
    from lmtrain.recipe_args import DataArguments, ModelArguments

    f, _, _ = jsonl_corpus
    argv = ["prepare", "--train_file", str(f), "--vocab_size", "300", "--block_size", "32"]
    assert cli.main(argv + ["--packing", "bos_aligned", "--cache_dir", str(tmp_path / "c")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("packing: "))
    assert re.fullmatch(r"packing: bos_aligned: \d+\.\d% of tokens dropped \([\d,]+\), 0 padded", line)
    assert cli.main(argv + ["--packing", "nope"]) == 2
    assert "--packing 'nope' is not one of concat, bos_aligned" in capsys.readouterr().err

    code = train(
        ModelArguments(config_overrides="n_layer=1,n_embd=16,n_head=2", vocab_size=300),
        DataArguments(train_file=[str(f)], block_size=32, cache_dir=str(tmp_path / "c"), packing="bos_aligned"),
        TrainingArguments(
            output_dir=str(tmp_path / "run"),
            max_steps=2,
            per_device_train_batch_size=4,
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
        ),
    )
    assert code == 0
    data = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("data: "))
    assert re.search(r"; bos_aligned: \d+\.\d% of tokens dropped \([\d,]+\), 0 padded$", data)
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and all(np.isfinite(r["loss"]) for r in state["log_history"] if "loss" in r)
