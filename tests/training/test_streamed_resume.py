"""Trainer over streamed data: a `datasets.IterableDataset` read without workers, and lmtrain's StreamingDataset,
resume from a checkpoint's stored position (nothing is skipped by reading) with the uninterrupted run's losses."""

from __future__ import annotations

import pytest
import torch

from lmtrain import Trainer, TrainingArguments
from lmtrain.data.collators import default_data_collator
from tests.conftest import tiny_gpt2

datasets = pytest.importorskip("datasets")


def examples(counter: list):
    def gen():
        g = torch.Generator().manual_seed(0)
        for _ in range(10_000):
            counter[0] += 1
            ids = torch.randint(0, 64, (16,), generator=g).tolist()
            yield {"input_ids": ids, "labels": ids}

    return gen


def run(tmp_path, name: str, resume: bool, counter: list, max_steps: int = 8):
    ds = datasets.IterableDataset.from_generator(examples(counter))
    args = TrainingArguments(
        output_dir=str(tmp_path / name),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_steps=4,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=ds, data_collator=default_data_collator)
    trainer.train(resume_from_checkpoint=str(tmp_path / name / "checkpoint-4") if resume else None)
    return {r["step"]: r["loss"] for r in trainer.state.log_history if "loss" in r}


def test_hf_iterable_dataset_resumes_from_its_stored_position(tmp_path):
    whole = run(tmp_path, "whole", False, [0])
    assert (tmp_path / "whole" / "checkpoint-4" / "data_position_0.pt").is_file()
    read = [0]
    resumed = run(tmp_path, "whole", True, read)
    assert {s: resumed[s] for s in range(5, 9)} == {s: whole[s] for s in range(5, 9)}


def test_streaming_dataset_with_trainer_resumes_exactly(tmp_path):
    from lmtrain.data.bpe import train_bpe_tokenizer
    from lmtrain.data.readers import sample_corpus_files
    from lmtrain.data.streaming import StreamingDataset

    tok = train_bpe_tokenizer(sample_corpus_files(), vocab_size=300)

    def go(resume: bool):
        ds = StreamingDataset(sample_corpus_files(), tok, 16, seed=1, shard_bytes=20_000, cache_dir=tmp_path / "c")
        args = TrainingArguments(
            output_dir=str(tmp_path / "s"),
            max_steps=6,
            per_device_train_batch_size=4,
            logging_steps=1,
            save_steps=3,
            learning_rate=1e-2,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        )
        model = tiny_gpt2(vocab_size=300, positions=16)
        trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator)
        trainer.train(resume_from_checkpoint=str(tmp_path / "s" / "checkpoint-3") if resume else None)
        return {r["step"]: r["loss"] for r in trainer.state.log_history if "loss" in r}, ds

    whole, ds = go(False)
    assert ds.tokens_per_source() == {"source0": 6 * 4 * 16}
    resumed, ds = go(True)
    assert {s: resumed[s] for s in (4, 5, 6)} == {s: whole[s] for s in (4, 5, 6)}
    assert ds.batches == 6  # the position came back with the checkpoint, then 3 more batches
