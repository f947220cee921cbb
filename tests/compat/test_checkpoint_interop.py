"""Checkpoints interoperate with transformers.Trainer both ways, and older lmtrain checkpoints still resume.

Tiny models (2 layers, width 32) built from configs, fixed-length random token blocks, CPU only.
"""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmtrain import Trainer, TrainingArguments  # noqa: E402
from lmtrain.errors import LmtrainError  # noqa: E402
from lmtrain.training import checkpoint as ckpt  # noqa: E402
from lmtrain.training.state import LMTRAIN_FIELDS, TrainState  # noqa: E402
from tests.conftest import tiny_gpt2  # noqa: E402


def blocks(n: int = 16, length: int = 16, vocab: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (length,), generator=g)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


# the same run for both trainers
RUN = dict(
    report_to="none",
    use_cpu=True,
    save_steps=2,
    max_steps=4,
    per_device_train_batch_size=2,
    logging_steps=1,
    learning_rate=5e-3,
    disable_tqdm=True,
    seed=1,
)


def hf_args(out, **kw):
    base = dict(RUN, output_dir=str(out), **kw)
    return transformers.TrainingArguments(**base)


def lm_args(out, **kw):
    base = dict(RUN, output_dir=str(out), **kw)
    return TrainingArguments(**base)


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
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


class Snapshot:
    """Copies what the trainer restored, at on_train_begin (after loading, before the first step)."""

    def __init__(self):
        self.trainer = None
        self.step = None
        self.weights = self.optim = None
        self.lr = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.step = state.global_step
        if self.trainer is not None:
            self.weights = {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()}
            self.optim = copy.deepcopy(self.trainer.optimizer.state_dict())  # its tensors are the live ones

    def on_step_begin(self, args, state, control, **kwargs):
        if self.trainer is not None:  # the learning rate this step will use
            self.lr[state.global_step + 1] = self.trainer.optimizer.param_groups[0]["lr"]

    def __getattr__(self, name):  # every other event: nothing
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


class HFSnapshot(transformers.TrainerCallback):
    def __init__(self):
        self.step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.step = state.global_step


def lrs(history):
    return {r["step"]: r["learning_rate"] for r in history if "learning_rate" in r and "loss" in r}


def assert_same_tensors(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a.cpu(), b.cpu())
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_tensors(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y)
    else:
        assert a == b


def test_lmtrain_resumes_a_transformers_checkpoint(tmp_path):
    data = blocks()
    hf = transformers.Trainer(model=tiny_gpt2(), args=hf_args(tmp_path / "hf"), train_dataset=data)
    hf.train()
    src = tmp_path / "hf" / "checkpoint-2"
    assert (src / "rng_state.pth").is_file() and not (src / ckpt.MARKER).exists()
    assert ckpt.is_complete(str(src))
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(tmp_path / "hf"))] == [
        "checkpoint-2",
        "checkpoint-4",
    ]

    snap = Snapshot()
    ours = Trainer(model=tiny_gpt2(seed=99), args=lm_args(tmp_path / "ours"), train_dataset=data, callbacks=[snap])
    snap.trainer = ours
    out = ours.train(resume_from_checkpoint=str(src))
    assert snap.step == 2 and out.global_step == 4
    saved = ckpt.read_model_state(str(src))
    for k, v in saved.items():
        assert torch.equal(snap.weights[k], v), k
    assert_same_tensors(snap.optim["state"], torch.load(src / "optimizer.pt", weights_only=True)["state"])
    # the scheduler continued where transformers left it: steps 3 and 4 use transformers' learning rates
    # (transformers 5 logs the rate a step used, 4.x the one after its scheduler step)
    hf_lr = lrs(hf.state.log_history)
    used = (snap.lr[3], snap.lr[4])
    assert used == pytest.approx((hf_lr[3], hf_lr[4])) or used == pytest.approx((hf_lr[2], hf_lr[3]))
    assert snap.lr[3] == torch.load(src / "optimizer.pt", weights_only=True)["param_groups"][0]["lr"]
    assert snap.lr[3] != snap.lr[4]
    # the data position was derived as transformers derives it
    state = TrainState()
    ckpt.load_training_state(
        str(src), optimizer=None, scheduler=None, scaler=None, state=state, steps_per_epoch=8, grad_accum=2
    )
    assert (state.data_epoch, state.batches_in_epoch, state.window_steps) == (0, 4, 0)
    assert state.train_loss_sum == pytest.approx(sum(r["loss"] for r in state.log_history if "loss" in r))


def test_transformers_resumes_an_lmtrain_checkpoint(tmp_path):
    data = blocks()
    ours = Trainer(model=tiny_gpt2(), args=lm_args(tmp_path / "ours"), train_dataset=data)
    ours.train()
    src = tmp_path / "ours" / "checkpoint-2"
    for name in (
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "training_args.bin",
        "trainer_state.json",
        "lmtrain_state.json",
        "training_args.json",
        ckpt.MARKER,
    ):
        assert (src / name).is_file(), name
    saved = json.loads((src / "trainer_state.json").read_text())
    assert not set(LMTRAIN_FIELDS) & set(saved)
    assert "TrainerControl" in saved["stateful_callbacks"]
    assert transformers.TrainerState.load_from_json(str(src / "trainer_state.json")).global_step == 2
    from transformers.trainer_utils import get_last_checkpoint

    assert get_last_checkpoint(str(tmp_path / "ours")) == str(tmp_path / "ours" / "checkpoint-4")

    snap = HFSnapshot()
    hf = transformers.Trainer(
        model=tiny_gpt2(seed=99), args=hf_args(tmp_path / "hf"), train_dataset=data, callbacks=[snap]
    )
    hf.train(resume_from_checkpoint=str(src))
    assert snap.step == 2 and hf.state.global_step == 4
    assert hf.lr_scheduler.last_epoch == 4  # the schedule continued from step 2, not from 0


def test_trainer_state_json_holds_exactly_transformers_fields(tmp_path):
    import dataclasses

    state = TrainState(global_step=3, data_epoch=1, window_steps=2, trial_params={"lr": 0.1})
    state.save_to_json(str(tmp_path / "s.json"))
    hf_fields = {f.name for f in dataclasses.fields(transformers.TrainerState)}
    assert set(json.loads((tmp_path / "s.json").read_text())) == hf_fields
    assert transformers.TrainerState.load_from_json(str(tmp_path / "s.json")).trial_params == {"lr": 0.1}
    # any extra or missing key loads: transformers' files, older lmtrain's, a future version's
    back = TrainState()
    back.load_state_dict(
        {"global_step": 7, "log_history": None, "stateful_callbacks": None, "unknown": 1, "data_epoch": 2}
    )
    assert (back.global_step, back.data_epoch, back.log_history, back.stateful_callbacks) == (7, 2, [], {})


def _to_old_format(path):
    """Rewrite a checkpoint as older lmtrain wrote it: rng_state.pt, every field in trainer_state.json."""
    state = json.loads((path / "trainer_state.json").read_text())
    state.update(json.loads((path / "lmtrain_state.json").read_text()))
    (path / "trainer_state.json").write_text(json.dumps(state))
    os.replace(path / "rng_state.pth", path / "rng_state.pt")
    os.remove(path / "lmtrain_state.json")
    os.remove(path / "training_args.bin")


def test_old_lmtrain_checkpoint_and_sharded_weights_resume_exactly(tmp_path):
    data = blocks()
    full = Trainer(model=tiny_gpt2(), args=lm_args(tmp_path / "full", logging_steps=3), train_dataset=data)
    full.train()
    reference = {r["step"]: r["loss"] for r in full.state.log_history if "loss" in r}

    for variant in ("old", "sharded"):
        out = tmp_path / variant
        shutil.copytree(tmp_path / "full" / "checkpoint-2", out / "checkpoint-2")
        if variant == "old":
            _to_old_format(out / "checkpoint-2")
        else:
            os.remove(out / "checkpoint-2" / "model.safetensors")
            model = tiny_gpt2()
            model.load_state_dict(ckpt.read_model_state(str(tmp_path / "full" / "checkpoint-2")), strict=False)
            model.save_pretrained(str(out / "checkpoint-2"), max_shard_size="20KB")
            assert (out / "checkpoint-2" / "model.safetensors.index.json").is_file()
        resumed = Trainer(model=tiny_gpt2(seed=99), args=lm_args(out, logging_steps=3), train_dataset=data)
        result = resumed.train(resume_from_checkpoint=True)
        assert result.global_step == 4
        after = {r["step"]: r["loss"] for r in resumed.state.log_history if "loss" in r and r["step"] > 2}
        assert after == {s: v for s, v in reference.items() if s > 2}, variant  # window carried: step 3 same
        for p, q in zip(full.model.parameters(), resumed.model.parameters()):
            assert torch.equal(p, q), variant


def test_tied_weights_load_for_bert_and_gpt2_single_and_sharded(tmp_path):
    for make in (tiny_bert, tiny_gpt2):
        for shard in (None, "20KB"):
            d = tmp_path / f"{make.__name__}-{shard}"
            src = make(seed=0)
            src.save_pretrained(str(d), **({"max_shard_size": shard} if shard else {}))
            stored = ckpt.read_model_state(str(d))
            dst = make(seed=1)
            ckpt.load_model_weights(dst, str(d))
            for k, v in src.state_dict().items():
                assert torch.equal(dst.state_dict()[k], v), (make.__name__, shard, k)
            assert len(stored) < len(src.state_dict()) or make is tiny_bert  # tied tensors stored once


def test_bert_mlm_save_and_resume(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[MASK]", "[CLS]", "[SEP]", "[UNK]"] + [f"w{i}" for i in range(59)])}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
        pad_token="[PAD]",
        mask_token="[MASK]",
        unk_token="[UNK]",
    )
    data = [{"input_ids": r["input_ids"] % 59 + 5} for r in blocks(n=8)]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.3)
    full = Trainer(model=tiny_bert(), args=lm_args(tmp_path / "a"), train_dataset=data, data_collator=collator)
    full.train()
    resumed = Trainer(
        model=tiny_bert(seed=3),
        args=lm_args(tmp_path / "a", overwrite_output_dir=True),
        train_dataset=data,
        data_collator=collator,
    )
    assert resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2")).global_step == 4
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_declared_tied_suffixes_of_transformers_4(tmp_path):
    """4.x declares tied weights as a list of suffixes relative to sub-modules; missing ones are fine, others not."""
    from safetensors.torch import save_file

    class Head(torch.nn.Module):
        _tied_weights_keys = ["predictions.decoder.bias"]

        def __init__(self):
            super().__init__()
            self.predictions = torch.nn.Module()
            self.predictions.decoder = torch.nn.Linear(4, 4)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 4)
            self.cls = Head()

    net = Net()
    state = {k: v for k, v in net.state_dict().items() if k != "cls.predictions.decoder.bias"}
    save_file(state, str(tmp_path / "model.safetensors"))
    ckpt.load_model_weights(Net(), str(tmp_path))  # the declared suffix is missing: accepted
    del state["body.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(LmtrainError, match="do not fit this model.*body.bias"):
        ckpt.load_model_weights(Net(), str(tmp_path))


def test_foreign_checkpoints_are_found_rotated_and_never_cleaned_up(tmp_path):
    data = blocks(n=8)
    transformers.Trainer(
        model=tiny_gpt2(), args=hf_args(tmp_path, max_steps=2, save_steps=1), train_dataset=data
    ).train()
    os.makedirs(tmp_path / "checkpoint-9")  # marker-less and empty: neither usable nor deleted
    os.makedirs(tmp_path / ".checkpoint-3.tmp-77")  # lmtrain's killed build dir
    assert [os.path.basename(p) for p in ckpt.remove_incomplete(str(tmp_path))] == [".checkpoint-3.tmp-77"]
    assert (tmp_path / "checkpoint-1").is_dir() and (tmp_path / "checkpoint-9").is_dir()
    assert ckpt.get_last_checkpoint(str(tmp_path)).endswith("checkpoint-2")  # complete beats higher-numbered
    refusing = Trainer(model=tiny_gpt2(), args=lm_args(tmp_path), train_dataset=data)
    refusing.refuse_existing_checkpoints = True  # as the CLI does: foreign checkpoints count as existing ones
    with pytest.raises(LmtrainError, match="already holds checkpoints"):
        refusing.train()
    ours = Trainer(
        model=tiny_gpt2(), args=lm_args(tmp_path, max_steps=3, save_steps=1, save_total_limit=2), train_dataset=data
    )
    assert ours.train(resume_from_checkpoint=True).global_step == 3
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(tmp_path))] == ["checkpoint-2", "checkpoint-3"]
    shutil.rmtree(tmp_path / "checkpoint-2")
    shutil.rmtree(tmp_path / "checkpoint-3")
    assert ckpt.get_last_checkpoint(str(tmp_path)).endswith("checkpoint-9")  # none complete: as transformers


def test_a_kill_between_the_renames_of_a_resave_loses_nothing(tmp_path):
    ours = Trainer(model=tiny_gpt2(), args=lm_args(tmp_path, max_steps=2), train_dataset=blocks(n=8))
    ours.train()
    final = tmp_path / "checkpoint-2"
    os.replace(final, tmp_path / "checkpoint-2.old-5")  # the state right after the first rename
    shutil.copytree(tmp_path / "checkpoint-2.old-5", tmp_path / ".checkpoint-2.tmp-5")
    removed = ckpt.remove_incomplete(str(tmp_path))
    assert [os.path.basename(p) for p in removed] == ["checkpoint-2.old-5"]
    assert ckpt.latest_checkpoint(str(tmp_path)) == str(final)
