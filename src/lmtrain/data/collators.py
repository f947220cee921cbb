"""Batch collators with the names and behaviour of transformers' data collators.

Differences a user may notice: padding does not go through `tokenizer.pad` (so no fast-tokenizer
warning and no pad token needed when nothing has to be padded), causal-LM labels are masked by the
attention mask rather than by token id (so a real EOS is still learned when pad == eos), and
missing pad/mask tokens fail with one line naming the fix.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import ConfigError, DataError, LmtrainError

__all__ = ["default_data_collator", "DataCollatorWithPadding", "DataCollatorForLanguageModeling"]

IGNORE_INDEX = -100
NO_PAD_TOKEN = "the tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token or add one"


def _check_return_tensors(return_tensors: str) -> None:
    if return_tensors not in ("pt", "np"):
        raise ConfigError(f"return_tensors={return_tensors!r} is not supported; use 'pt' (or 'np').")


def _finish(batch: dict, return_tensors: str) -> dict:
    if return_tensors == "np":
        return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch


def _as_dict(feature: Any) -> Mapping:
    if isinstance(feature, Mapping):
        return feature
    if hasattr(feature, "__dict__"):  # dataclass-like examples, as transformers accepts
        return vars(feature)
    return {"input_ids": feature}  # a bare sequence of token ids


def _is_int(value: Any) -> bool:
    """Whether a value (scalar, sequence, array or tensor) holds integers, so it batches as int64."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point()
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "iub"
    if isinstance(value, (list, tuple)):
        return _is_int(value[0]) if value else True
    return isinstance(value, (numbers.Integral, np.integer))


def _stack(key: str, values: list) -> torch.Tensor:
    """Stack one key of every feature into a tensor (all must have the same shape)."""
    first = values[0]
    try:
        if isinstance(first, torch.Tensor):
            return torch.stack([torch.as_tensor(v) for v in values])
        if isinstance(first, np.ndarray):
            return torch.from_numpy(np.stack(values))
        if isinstance(first, (list, tuple)) and first and isinstance(first[0], torch.Tensor):
            return torch.stack([torch.stack(list(v)) for v in values])
        return torch.tensor(values)
    except (ValueError, RuntimeError, TypeError) as e:
        raise DataError(
            f"cannot batch the feature {key!r} ({' '.join(str(e).split())}); features of one batch need equal "
            "lengths: pad them (DataCollatorWithPadding / DataCollatorForLanguageModeling) or group texts into blocks"
        ) from None


def default_data_collator(features: Sequence[Any], return_tensors: str = "pt") -> dict:
    """Stack each key of the first feature into a tensor; `label`/`label_ids` become `labels`.

    None and string values are skipped. Integer labels become int64, float labels float32.
    """
    _check_return_tensors(return_tensors)
    features = [_as_dict(f) for f in features]
    if not features:
        raise DataError("cannot collate an empty batch; check that the dataset is not empty")
    first = features[0]
    batch: dict = {}
    for label_key in ("label", "label_ids"):
        label = first.get(label_key)
        if label is None:
            continue
        values = [f[label_key] for f in features]
        if isinstance(label, torch.Tensor) and label.dim() > 0:
            batch["labels"] = torch.stack(values)
        elif isinstance(label, torch.Tensor):
            batch["labels"] = torch.stack(values).to(torch.long if _is_int(label) else torch.float)
        else:
            sample = label[0] if isinstance(label, (list, tuple)) and label else label
            dtype = torch.long if _is_int(sample) else torch.float
            batch["labels"] = _stack("labels", values).to(dtype)
        break
    for key, value in first.items():
        if key in ("label", "label_ids") or value is None or isinstance(value, str):
            continue
        batch[key] = _stack(key, [f[key] for f in features])
    return _finish(batch, return_tensors)


def _lengths(seqs: list) -> list:
    return [len(s) for s in seqs]


def _pad(seqs: list, value: int, length: int, side: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Pad 1-d sequences (lists, numpy arrays or tensors) to `length` on `side` into one tensor."""
    if dtype is None:
        dtype = torch.long if _is_int(seqs[0]) else torch.float
    if all(len(s) == length for s in seqs):
        return _stack("sequence", seqs).to(dtype)
    out = torch.full((len(seqs), length), value, dtype=dtype)
    for i, s in enumerate(seqs):
        if len(s) == 0:
            continue
        t = torch.as_tensor(s, dtype=dtype)
        if side == "left":
            out[i, length - len(s) :] = t
        else:
            out[i, : len(s)] = t
    return out


def _target_length(lengths: list, pad_to_multiple_of: Optional[int], max_length: Optional[int] = None) -> int:
    length = max(lengths) if max_length is None else max_length
    if pad_to_multiple_of:
        length = math.ceil(length / pad_to_multiple_of) * pad_to_multiple_of
    return length


def _pad_token_id(tokenizer: Any) -> int:
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        raise LmtrainError(NO_PAD_TOKEN)
    return pad_id


def _pad_features(
    features: list,
    tokenizer: Any,
    length: int,
    pad_values: dict,
    keep_other_keys: bool = True,
) -> dict:
    """Pad the sequence keys of `features` to `length`; stack everything else like default_data_collator."""
    side = getattr(tokenizer, "padding_side", "right") or "right"
    first = features[0]
    batch: dict = {}
    for key, value in first.items():
        if value is None or isinstance(value, str):
            continue
        values = [f[key] for f in features]
        if key in pad_values:
            if any(len(v) != length for v in values) and key == "input_ids":
                pad_values[key] = _pad_token_id(tokenizer)  # only now is a pad token really needed
            batch[key] = _pad(values, pad_values[key], length, side)
        elif keep_other_keys:
            batch[key] = _stack(key, values)
    return batch


def _pad_values(tokenizer: Any) -> dict:
    """What each sequence key is padded with (input_ids: filled in lazily from the tokenizer)."""
    return {
        "input_ids": getattr(tokenizer, "pad_token_id", None),
        "attention_mask": 0,
        "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0) or 0,
        "special_tokens_mask": 1,
        "labels": IGNORE_INDEX,
    }


@dataclass
class DataCollatorWithPadding:
    """Pad `input_ids`, `attention_mask`, `token_type_ids` (and sequence labels) to the longest in the batch.

    `padding`: True/"longest" (default), "max_length" (needs `max_length`) or False/"do_not_pad".
    """

    tokenizer: Any
    padding: Union[bool, str] = True
    max_length: Optional[int] = None
    pad_to_multiple_of: Optional[int] = None
    return_tensors: str = "pt"

    def __post_init__(self) -> None:
        _check_return_tensors(self.return_tensors)
        if self.padding not in (True, False, "longest", "max_length", "do_not_pad"):
            raise ConfigError(f"padding={self.padding!r} is not one of True, False, 'longest', 'max_length'.")
        if self.padding == "max_length" and not self.max_length:
            raise ConfigError("padding='max_length' needs max_length; set max_length or use padding=True.")

    def __call__(self, features: Sequence[Any]) -> dict:
        features = [dict(_as_dict(f)) for f in features]
        if not features:
            raise DataError("cannot collate an empty batch; check that the dataset is not empty")
        for f in features:
            for old in ("label", "label_ids"):
                if old in f:
                    f["labels"] = f.pop(old)
        if "input_ids" not in features[0]:
            raise DataError("features have no 'input_ids'; tokenize the dataset before batching it")
        if "attention_mask" not in features[0] and "attention_mask" in getattr(
            self.tokenizer, "model_input_names", ["attention_mask"]
        ):
            # transformers' tokenizer.pad adds the mask the model needs to ignore the padding
            for f in features:
                f["attention_mask"] = [1] * len(f["input_ids"])
        if self.padding in (False, "do_not_pad"):
            return _finish(default_data_collator(features), self.return_tensors)
        lengths = _lengths([f["input_ids"] for f in features])
        max_length = self.max_length if self.padding == "max_length" else None
        length = _target_length(lengths, self.pad_to_multiple_of, max_length)
        if max(lengths) > length:
            raise DataError(f"a sequence has {max(lengths)} tokens, more than max_length={length}; truncate it")
        pad_values = _pad_values(self.tokenizer)
        labels = features[0].get("labels")
        if labels is None or isinstance(labels, numbers.Number) or getattr(labels, "ndim", 1) == 0:
            pad_values.pop("labels")  # scalar class labels are stacked, not padded
        batch = _pad_features(features, self.tokenizer, length, pad_values)
        return _finish(batch, self.return_tensors)


@dataclass
class DataCollatorForLanguageModeling:
    """Pad token ids into a batch and make labels for masked (mlm=True) or causal (mlm=False) LM.

    Causal: labels are the input ids, with -100 wherever the attention mask is 0 (padding).
    Masked: `mlm_probability` of the non-special, non-padding tokens are chosen; labels keep their
    id (-100 elsewhere); of those, `mask_replace_prob` become the mask token, `random_replace_prob`
    a random token and the rest stay. Randomness comes from torch's global RNG (seed it with
    `torch.manual_seed`), or from a private generator when `seed` is given.
    """

    tokenizer: Any
    mlm: bool = True
    whole_word_mask: bool = False
    mlm_probability: Optional[float] = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    pad_to_multiple_of: Optional[int] = None
    return_tensors: str = "pt"
    seed: Optional[int] = None
    _generator: Optional[torch.Generator] = field(default=None, init=False, repr=False, compare=False)
    _special_ids: Optional[torch.Tensor] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_return_tensors(self.return_tensors)
        if self.whole_word_mask:
            raise ConfigError("whole_word_mask is not supported by lmtrain; drop it (token-level masking is used).")
        if self.mlm:
            if getattr(self.tokenizer, "mask_token", None) is None:
                raise LmtrainError(
                    "the tokenizer has no mask token, which masked LM needs; "
                    "use a tokenizer with a mask token or pass mlm=False / drop --mlm"
                )
            if self.mlm_probability is None or not 0.0 <= self.mlm_probability <= 1.0:
                raise ConfigError(f"mlm_probability must be between 0 and 1, got {self.mlm_probability}.")
            if not (0 <= self.mask_replace_prob and 0 <= self.random_replace_prob):
                raise ConfigError("mask_replace_prob and random_replace_prob must be >= 0.")
            if self.mask_replace_prob + self.random_replace_prob > 1 + 1e-9:
                raise ConfigError(
                    f"mask_replace_prob + random_replace_prob must be at most 1, got "
                    f"{self.mask_replace_prob} + {self.random_replace_prob}."
                )

    def __getstate__(self) -> dict:
        # DataLoader workers get a copy; each makes its own generator (see _rng), tensors are rebuilt.
        state = dict(self.__dict__)
        state["_generator"] = None
        return state

    def _rng(self) -> Optional[torch.Generator]:
        if self.seed is None:
            return None
        if self._generator is None:
            info = torch.utils.data.get_worker_info()
            # Different loader workers must not draw identical masks.
            self._generator = torch.Generator().manual_seed(self.seed + (info.id if info is not None else 0))
        return self._generator

    def _special_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self._special_ids is None:
            ids = sorted(set(getattr(self.tokenizer, "all_special_ids", None) or []))
            self._special_ids = torch.tensor(ids, dtype=torch.long)
        return torch.isin(input_ids, self._special_ids)

    def __call__(self, features: Sequence[Any]) -> dict:
        features = [_as_dict(f) for f in features]
        if not features:
            raise DataError("cannot collate an empty batch; check that the dataset is not empty")
        if "input_ids" not in features[0]:
            raise DataError("features have no 'input_ids'; tokenize the dataset before batching it")
        ids = [f["input_ids"] for f in features]
        lengths = _lengths(ids)
        length = _target_length(lengths, self.pad_to_multiple_of)
        pad_values = _pad_values(self.tokenizer)
        batch = _pad_features(features, self.tokenizer, length, pad_values)
        input_ids = batch["input_ids"]
        if "attention_mask" not in batch:
            side = getattr(self.tokenizer, "padding_side", "right") or "right"
            batch["attention_mask"] = _pad([torch.ones(n, dtype=torch.long) for n in lengths], 0, length, side)
        attention_mask = batch["attention_mask"].long()
        batch["attention_mask"] = attention_mask
        special = batch.pop("special_tokens_mask", None)

        if not self.mlm:
            if "labels" not in batch:
                labels = input_ids.clone()
                # By the attention mask, not the pad id: with pad == eos, real EOS tokens keep their label.
                labels[attention_mask == 0] = IGNORE_INDEX
                batch["labels"] = labels
            return _finish(batch, self.return_tensors)

        batch["input_ids"], batch["labels"] = self.mask_tokens(input_ids, attention_mask, special)
        return _finish(batch, self.return_tensors)

    def mask_tokens(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        special: Optional[torch.Tensor] = None,
    ) -> tuple:
        """Return (masked input ids, labels) for masked LM; `input_ids` is not modified."""
        gen = self._rng()
        inputs = input_ids.clone()
        no_mask = special.bool() if special is not None else self._special_mask(inputs)
        if attention_mask is not None:
            no_mask = no_mask | (attention_mask == 0)
        assert self.mlm_probability is not None, "mlm_probability is None; masking needs a probability"
        probability = torch.full(inputs.shape, float(self.mlm_probability)).masked_fill_(no_mask, 0.0)
        chosen = torch.bernoulli(probability, generator=gen).bool()
        labels = torch.where(chosen, inputs, torch.full_like(inputs, IGNORE_INDEX))

        replaced = torch.bernoulli(torch.full(inputs.shape, self.mask_replace_prob), generator=gen).bool() & chosen
        inputs[replaced] = self.tokenizer.mask_token_id
        remaining = 1.0 - self.mask_replace_prob
        if remaining > 0 and self.random_replace_prob > 0:
            # Scale so that random_replace_prob is a share of all chosen tokens, not of the rest.
            p_random = min(1.0, self.random_replace_prob / remaining)
            randomized = torch.bernoulli(torch.full(inputs.shape, p_random), generator=gen).bool() & chosen & ~replaced
            random_ids = torch.randint(len(self.tokenizer), inputs.shape, dtype=torch.long, generator=gen)
            inputs[randomized] = random_ids[randomized]
        return inputs, labels
