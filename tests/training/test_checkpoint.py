"""Checkpoints: atomic layout, resume that logs the same losses, rotation that keeps latest and best."""

from __future__ import annotations

import os

import pytest
import torch

from lmtrain import DataCollatorForLanguageModeling, Trainer, TrainingArguments
from lmtrain.errors import LmtrainError
from lmtrain.training import checkpoint as ckpt
from tests.conftest import tiny_gpt2
from tests.training.test_trainer import ragged_dataset, stack


def args_for(out, **kw):
    base = dict(
        output_dir=str(out),
        report_to="none",
        logging_steps=1,
        learning_rate=5e-3,
        disable_tqdm=True,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        save_steps=3,
        seed=1,
        max_steps=8,
    )
    base.update(kw)
    return TrainingArguments(**base)


def losses(trainer):
    return {r["step"]: r["loss"] for r in trainer.state.log_history if "loss" in r}


@pytest.mark.parametrize("logging_steps", [1, 2])
def test_resume_logs_bit_identical_losses(tmp_path, logging_steps):
    """Stop after a checkpoint, build everything anew, resume: the losses after it are identical."""
    data = ragged_dataset(n=10)  # 10 rows / (2 x 2) -> steps cross an epoch boundary
    full = Trainer(
        model=tiny_gpt2(),
        args=args_for(tmp_path / "a", logging_steps=logging_steps),
        train_dataset=data,
        data_collator=stack,
    )
    full.train()
    reference = losses(full)

    part = Trainer(
        model=tiny_gpt2(),
        args=args_for(tmp_path / "b", max_steps=8, logging_steps=logging_steps),
        train_dataset=data,
        data_collator=stack,
    )
    part.add_callback(_StopAt(3))
    part.train()
    assert ckpt.latest_checkpoint(str(tmp_path / "b")).endswith("checkpoint-3")

    resumed = Trainer(
        model=tiny_gpt2(seed=99),
        args=args_for(tmp_path / "b", logging_steps=logging_steps),
        train_dataset=data,
        data_collator=stack,
    )
    resumed.train(resume_from_checkpoint=True)
    after = {s: v for s, v in losses(resumed).items() if s > 3}
    assert after == {s: v for s, v in reference.items() if s > 3}  # exact, not approximate
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_resume_mlm_masks_come_from_saved_state(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[MASK]", "[CLS]", "[SEP]", "[UNK]"] + [f"w{i}" for i in range(59)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        mask_token="[MASK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
    )
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(5, 64, (16,), generator=g)} for _ in range(12)]

    def model():
        torch.manual_seed(0)
        return BertForMaskedLM(
            BertConfig(
                vocab_size=64,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=32,
            )
        )

    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.3)
    full = Trainer(model=model(), args=args_for(tmp_path / "a"), train_dataset=data, data_collator=collator)
    full.train()
    part = Trainer(model=model(), args=args_for(tmp_path / "b"), train_dataset=data, data_collator=collator)
    part.add_callback(_StopAt(3))
    part.train()
    resumed = Trainer(model=model(), args=args_for(tmp_path / "b"), train_dataset=data, data_collator=collator)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))
    assert {s: v for s, v in losses(resumed).items() if s > 3} == {s: v for s, v in losses(full).items() if s > 3}


class _StopAt:
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_checkpoint_contents_and_incomplete_dirs(tmp_path):
    trainer = Trainer(
        model=tiny_gpt2(), args=args_for(tmp_path, max_steps=3), train_dataset=ragged_dataset(), data_collator=stack
    )
    trainer.train()
    path = tmp_path / "checkpoint-3"
    for name in (
        "model.safetensors",
        "config.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "lmtrain_state.json",
        "training_args.json",
        "training_args.bin",
        "COMPLETE",
    ):
        assert (path / name).exists(), name
    # a killed save leaves a build directory: it is never "latest" and is cleaned up; a checkpoint-N
    # without marker or files is not lmtrain's (lmtrain renames only after the marker): skipped, kept
    os.makedirs(tmp_path / "checkpoint-9")
    os.makedirs(tmp_path / ".checkpoint-12.tmp-1234")
    (tmp_path / ".rng-12.rng_state_1.pth").write_bytes(b"")
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("checkpoint-3")
    removed = ckpt.remove_incomplete(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == [".checkpoint-12.tmp-1234", ".rng-12.rng_state_1.pth"]
    assert (tmp_path / "checkpoint-9").is_dir()


def test_existing_checkpoints_warn_and_train_from_scratch_like_transformers(tmp_path, capsys):
    first = Trainer(
        model=tiny_gpt2(), args=args_for(tmp_path, max_steps=3), train_dataset=ragged_dataset(), data_collator=stack
    )
    first.train()
    capsys.readouterr()
    again = Trainer(
        model=tiny_gpt2(), args=args_for(tmp_path, max_steps=3), train_dataset=ragged_dataset(), data_collator=stack
    )
    assert again.train().global_step == 3  # from scratch: step 1 again, not a resume
    err = capsys.readouterr().err
    assert "already holds 1 checkpoint" in err and "--resume_from_checkpoint" in err and "--overwrite_output_dir" in err
    assert [r["step"] for r in again.state.log_history if "loss" in r][0] == 1
    # a second train() on the same Trainer is a new run too, with a new schedule
    assert again.train().global_step == 3
    lrs = [r["learning_rate"] for r in again.state.log_history if "loss" in r]
    assert lrs[0] == first.args.learning_rate
    capsys.readouterr()
    over = Trainer(
        model=tiny_gpt2(),
        args=args_for(tmp_path, max_steps=3, overwrite_output_dir=True),
        train_dataset=ragged_dataset(),
        data_collator=stack,
    )
    assert over.train().global_step == 3
    assert "already holds" not in capsys.readouterr().err


def test_cli_style_trainer_refuses_existing_checkpoints(tmp_path):
    Trainer(
        model=tiny_gpt2(), args=args_for(tmp_path, max_steps=3), train_dataset=ragged_dataset(), data_collator=stack
    ).train()
    again = Trainer(
        model=tiny_gpt2(), args=args_for(tmp_path, max_steps=3), train_dataset=ragged_dataset(), data_collator=stack
    )
    again.refuse_existing_checkpoints = True
    with pytest.raises(LmtrainError, match="already holds checkpoints.*--resume.*--overwrite_output_dir"):
        again.train()


def test_rotation_keeps_latest_and_best(tmp_path):
    data = ragged_dataset(n=8)
    trainer = Trainer(
        model=tiny_gpt2(),
        args=args_for(
            tmp_path,
            max_steps=12,
            save_steps=2,
            eval_strategy="steps",
            eval_steps=2,
            save_total_limit=2,
            load_best_model_at_end=True,
            metric_for_best_model="loss",
            learning_rate=0.5,
        ),
        train_dataset=data,
        eval_dataset=data[:4],
        data_collator=stack,
    )
    trainer.train()
    kept = [os.path.basename(p) for p in ckpt.list_checkpoints(str(tmp_path))]
    best = os.path.basename(trainer.state.best_model_checkpoint)
    assert "checkpoint-12" in kept and best in kept and len(kept) <= 2
    evals = {r["step"]: r["eval_loss"] for r in trainer.state.log_history if "eval_loss" in r}
    assert trainer.state.best_metric == min(evals.values())


def test_resume_from_a_missing_checkpoint_is_one_clear_error(tmp_path):
    trainer = Trainer(model=tiny_gpt2(), args=args_for(tmp_path), train_dataset=ragged_dataset(), data_collator=stack)
    with pytest.raises(LmtrainError, match="no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)
    with pytest.raises(LmtrainError, match="is not a complete checkpoint"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "nope"))


def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    trainer = Trainer(
        model=tiny_gpt2(), args=args_for(tmp_path, max_steps=6), train_dataset=ragged_dataset(), data_collator=stack
    )
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if isinstance(f, str) and "checkpoint-6" in f:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        LmtrainError,
        match=r"could not save checkpoint .*checkpoint-6: No space left on device; "
        r"the previous checkpoint is intact",
    ):
        trainer.train()
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("checkpoint-3")
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # nothing half-written left behind


def test_checkpointer_owns_names_listing_rotation_best_and_load(tmp_path):
    """One object saves, lists (sealed ones only), rotates around the best and restores a checkpoint."""
    from lmtrain.training.state import TrainState

    args = args_for(tmp_path, save_total_limit=2)
    chk = ckpt.Checkpointer(args)
    model = tiny_gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = TrainState(global_step=0)
    for step in (1, 2, 3, 4):
        state.global_step = step
        if step == 2:
            state.best_global_step = 2
        assert (
            chk.save(state, model=model, tokenizer=None, optimizer=opt, scheduler=None, scaler=None)
            == chk.path(step)
            == str(tmp_path / f"checkpoint-{step}")
        )
    # limit 2 keeps the latest and the best; the best one names itself in its saved state
    assert [os.path.basename(p) for p in chk.list()] == ["checkpoint-2", "checkpoint-4"]
    assert chk.latest() == chk.path(4) and chk.best_path(state) == chk.path(2)
    assert state.best_model_checkpoint == chk.path(2)
    os.makedirs(tmp_path / "checkpoint-9")  # not sealed, no weights: not a checkpoint
    assert chk.latest() == chk.path(4)

    restored, fresh = TrainState(), tiny_gpt2(seed=5)
    chk.load(
        chk.path(4),
        model=fresh,
        optimizer=torch.optim.AdamW(fresh.parameters(), lr=1e-3),
        scheduler=None,
        scaler=None,
        state=restored,
    )
    assert restored.global_step == 4 and restored.best_global_step == 2
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)
    state.best_model_checkpoint = chk.path(2)
    args.save_total_limit = 1
    chk.finish(state)  # save_total_limit=1 at the end of a run: only the best stays
    assert [os.path.basename(p) for p in chk.list()] == ["checkpoint-2"]
