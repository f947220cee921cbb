"""Run the same scripts on transformers 4.x, which lacks some of transformers 5's argument names.

transformers 4.x has no `train_sampling_strategy` (its training order is always random, or grouped by
length with `group_by_length=True`). The compat tests ask both trainers for "sequential" order so that
they see the same batches; on 4.x this fixture takes the name off transformers' arguments and gives
its Trainer the sequential sampler that transformers 5 would use.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def transformers_4_sampling(monkeypatch):
    import dataclasses

    import transformers

    if "train_sampling_strategy" in {f.name for f in dataclasses.fields(transformers.TrainingArguments)}:
        yield
        return
    original_init = transformers.TrainingArguments.__init__

    def init(self, *args, train_sampling_strategy: str = "random", **kwargs):
        if train_sampling_strategy == "group_by_length":
            kwargs["group_by_length"] = True
        original_init(self, *args, **kwargs)
        self.train_sampling_strategy = train_sampling_strategy

    original_sampler = transformers.Trainer._get_train_sampler

    def sampler(self, *args, **kwargs):
        if getattr(self.args, "train_sampling_strategy", "random") == "sequential":
            from torch.utils.data import SequentialSampler

            return SequentialSampler(args[0] if args and args[0] is not None else self.train_dataset)
        return original_sampler(self, *args, **kwargs)

    monkeypatch.setattr(transformers.TrainingArguments, "__init__", init)
    monkeypatch.setattr(transformers.Trainer, "_get_train_sampler", sampler)
    yield


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


# The trainer comparisons run the same script on both trainers and compare losses step by step. They are
# written against transformers 5: transformers 4.57 normalises a GPT-2 step's loss by every label token
# (not the predicted ones: 8/7 too many per row, whatever `loss_type` says), so its losses differ from the
# token mean by that factor, and every comparison downstream of a loss (best metric, early stopping) moves.
requires_transformers_5 = pytest.mark.skipif(
    transformers_major() < 5,
    reason="compared with transformers 5's loss normalisation (4.x miscounts GPT-2's label tokens)",
)
