"""tokens_<source> in the logs of a mixture run: exact per source, and the same after a resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmtrain import Trainer, TrainerCallback, TrainingArguments
from lmtrain.data.loader import ResumableBatchSampler
from lmtrain.data.mixture import MixtureDataset
from lmtrain.data.pack import BlockDataset
from lmtrain.training.sources import SourceTokensCallback, log_keys
from tests.conftest import tiny_gpt2

BLOCK = 8


def mixture(seed: int = 0) -> MixtureDataset:
    """Source "low" uses token ids 1..31, "high" 32..63: a batch tells which source each row came from."""
    rng = np.random.default_rng(seed)
    low = BlockDataset(rng.integers(1, 32, 7 * BLOCK), BLOCK)
    high = BlockDataset(rng.integers(32, 64, 5 * BLOCK), BLOCK)
    return MixtureDataset([low, high], (0.6, 0.4), names=["low", "high"], seed=seed)


class Tally:
    """A collator that counts the input tokens the model is fed from each source."""

    def __init__(self) -> None:
        self.seen = {"low": 0, "high": 0}

    def __call__(self, features):
        batch = {k: torch.stack([f[k] for f in features]) for k in features[0]}
        ids = batch["input_ids"]
        self.seen["low"] += int((ids[:, 0] < 32).sum()) * ids.shape[1]
        self.seen["high"] += int((ids[:, 0] >= 32).sum()) * ids.shape[1]
        return batch


def make_trainer(tmp_path, name, data, collator, **kw):
    args = TrainingArguments(
        output_dir=str(tmp_path / name),
        report_to="none",
        disable_tqdm=True,
        learning_rate=1e-2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,  # 12 blocks: 6 micro-batches, 3 steps an epoch
        max_steps=8,
        logging_steps=2,
        save_strategy="steps",
        save_steps=4,
        include_num_input_tokens_seen="all",
        seed=0,
        **kw,
    )
    trainer = Trainer(model=tiny_gpt2(vocab_size=64), args=args, train_dataset=data, data_collator=collator)
    SourceTokensCallback(data).attach(trainer)
    return trainer


def token_records(records):
    return [r for r in records if "tokens_low" in r]


def test_tokens_per_source_are_exact_and_reach_the_log_file(tmp_path):
    data, tally = mixture(), Tally()
    seen_at = {}

    class Snapshot(TrainerCallback):  # what the collator had counted when each record was logged
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen_at[state.global_step] = dict(tally.seen)

    trainer = make_trainer(tmp_path, "run", data, tally)
    trainer.add_callback(Snapshot())
    trainer.train()
    records = token_records(trainer.state.log_history)
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8]
    for r in records:
        assert r["tokens_low"] + r["tokens_high"] == r["num_input_tokens_seen"]
        assert {"low": r["tokens_low"], "high": r["tokens_high"]} == seen_at[r["step"]]
    assert records[-1]["tokens_low"] > 0 and records[-1]["tokens_high"] > 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["tokens_low"], r["tokens_high"]) for r in lines if "loss" in r] == [
        (r["step"], r["tokens_low"], r["tokens_high"]) for r in records if "loss" in r
    ]


def test_a_resumed_run_logs_the_same_tokens_per_source(tmp_path):
    full = make_trainer(tmp_path, "full", mixture(), Tally())
    full.train()
    resumed = make_trainer(tmp_path, "resumed", mixture(), Tally())
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))  # mid-epoch 2

    def after_4(trainer):
        return [
            (r["step"], r["tokens_low"], r["tokens_high"])
            for r in token_records(trainer.state.log_history)
            if r["step"] > 4
        ]

    expected = after_4(full)
    assert [step for step, _, _ in expected] == [6, 8, 8]  # two logs and the final metrics
    assert after_4(resumed) == expected


@pytest.mark.parametrize("world_size, drop_last", [(1, False), (2, False), (2, True), (3, False)])
def test_counts_follow_the_sampler_layout_over_ranks_and_epochs(world_size, drop_last):
    """The callback's sample arithmetic against what ResumableBatchSampler really hands every rank."""
    data = mixture()
    samplers = [
        ResumableBatchSampler(len(data), 5, True, 3, drop_last, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    expected = np.zeros(2, dtype=np.int64)
    for epoch, batches in [(0, len(samplers[0])), (1, 1)]:  # all of epoch 0, then one batch of epoch 1
        for sampler in samplers:
            sampler.set_position(epoch, 0)
            for _, batch in zip(range(batches), iter(sampler)):
                expected += data.source_counts(batch[1:])  # (the first entry is the batch's seed)
    callback = SourceTokensCallback(data)
    state = SimpleNamespace(data_epoch=1, batches_in_epoch=1)
    assert callback._advance(state, SimpleNamespace(batch_sampler=samplers[0]))
    assert callback.blocks.tolist() == expected.tolist()


def test_log_keys_are_safe_for_metric_stores_and_unique():
    assert log_keys(["web", "books/*.txt", "code.jsonl", "a?b", "a*b"]) == [
        "tokens_web",
        "tokens_books/_.txt",
        "tokens_code.jsonl",
        "tokens_a_b",
        "tokens_a_b_2",
    ]
