"""Model weights in a checkpoint: written by `save_pretrained`, read back whole, single-file or sharded.

The files are transformers' (model.safetensors, pytorch_model.bin, or either sharded with an
`.index.json`), so a checkpoint written by transformers.Trainer loads here and the other way round.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Set

import torch

from ..distributed import unwrap
from ..errors import LmtrainError

SAFE_WEIGHTS = "model.safetensors"
PT_WEIGHTS = "pytorch_model.bin"
SAFE_INDEX = "model.safetensors.index.json"
PT_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFE_WEIGHTS, PT_WEIGHTS, SAFE_INDEX, PT_INDEX, "adapter_model.safetensors", "adapter_model.bin")


def has_weights(ckpt_dir: str) -> bool:
    """Whether `ckpt_dir` holds model weights in any of the layouts transformers writes."""
    return any(os.path.isfile(os.path.join(ckpt_dir, name)) for name in WEIGHT_FILES)


def save_model_files(
    model: torch.nn.Module,
    out_dir: str,
    safe_serialization: bool = True,
    state_dict: Optional[Dict[str, torch.Tensor]] = None,
) -> None:
    """Weights and config: `save_pretrained` for transformers models, safetensors for plain modules.

    `state_dict` replaces the model's own (a full state dict gathered from FSDP shards).
    """
    model = unwrap(model)
    if hasattr(model, "save_pretrained"):
        from transformers.utils import logging as hf_logging

        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar per save is noise in the training log
        try:
            kwargs = {"state_dict": state_dict} if state_dict is not None else {}
            pretrained: Any = model  # a transformers (or peft) model; nn.Module's stubs: Tensor | Module
            pretrained.save_pretrained(out_dir, safe_serialization=safe_serialization, **kwargs)
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()
        return
    state = {k: v.detach().contiguous() for k, v in (state_dict or model.state_dict()).items()}
    if safe_serialization:
        from safetensors.torch import save_file

        save_file(_untie(state), os.path.join(out_dir, SAFE_WEIGHTS))
    else:
        torch.save(state, os.path.join(out_dir, PT_WEIGHTS))


def _untie(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """safetensors refuses shared storage: keep the first name of each tensor."""
    seen, out = set(), {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key not in seen:
            seen.add(key)
            out[k] = v
    return out


def _load_file(path: str) -> Dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def read_model_state(ckpt_dir: str) -> Dict[str, torch.Tensor]:
    """The full model state dict stored in a checkpoint (on the CPU), single-file or sharded."""
    for name in (SAFE_WEIGHTS, PT_WEIGHTS):
        if os.path.isfile(os.path.join(ckpt_dir, name)):
            return _load_file(os.path.join(ckpt_dir, name))
    for name in (SAFE_INDEX, PT_INDEX):
        index = os.path.join(ckpt_dir, name)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            state: Dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):  # each shard once, in a fixed order
                state.update(_load_file(os.path.join(ckpt_dir, shard)))
            return state
    raise LmtrainError(
        f"{ckpt_dir} holds no model weights ({SAFE_WEIGHTS}, {PT_WEIGHTS} or a sharded index); "
        f"it is not a usable checkpoint."
    )


def _declared_tied(model: torch.nn.Module) -> List[str]:
    """Tied-weight names as the model declares them: full names (5.x `all_tied_weights_keys`), dict keys
    or list entries of `_tied_weights_keys` (5.x: names or patterns; 4.x: suffixes such as
    "cls.predictions.decoder.bias"), and `_dynamic_tied_weights_keys`, from the model and its sub-models."""
    names: List[str] = []
    expanded = getattr(model, "all_tied_weights_keys", None)
    if isinstance(expanded, dict):
        names.extend(expanded)
    for prefix, module in model.named_modules():
        for attr in ("_tied_weights_keys", "_dynamic_tied_weights_keys"):
            keys = getattr(module, attr, None)
            if isinstance(keys, (dict, list, tuple, set)):
                names.extend(f"{prefix}.{k}" if prefix else str(k) for k in keys)
                names.extend(str(k) for k in keys)  # 4.x lists are suffixes relative to any sub-module
    return names


def _matches(key: str, declared: Iterable[str]) -> bool:
    for name in declared:
        if key == name or key.endswith("." + name):
            return True
        try:
            if re.fullmatch(name, key) or re.search(rf"(^|\.){name}$", key):  # 5.x allows regex patterns
                return True
        except re.error:
            pass
    return False


def _shared_with_loaded(model: torch.nn.Module, loaded: Set[str]) -> Set[str]:
    """Names whose tensor is one of the loaded ones (tied right now, e.g. lm_head.weight and wte.weight)."""
    params = model.state_dict(keep_vars=True)
    ptrs = {params[k].data_ptr() for k in loaded if k in params}
    return {k for k, v in params.items() if v.data_ptr() in ptrs}


def load_model_weights(model: torch.nn.Module, ckpt_dir: str) -> None:
    """Load a checkpoint's weights into `model`; tied weights may be absent from the file."""
    model = unwrap(model)
    adapter = os.path.join(ckpt_dir, "adapter_model.safetensors")
    if hasattr(model, "peft_config") and os.path.exists(adapter):  # LoRA: the checkpoint holds the adapters
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(adapter, device="cpu"))
        return
    state = read_model_state(ckpt_dir)
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = list(missing)
    if real_missing:
        declared, shared = _declared_tied(model), _shared_with_loaded(model, set(state))
        real_missing = [k for k in missing if k not in shared and not _matches(k, declared)]
    if real_missing or unexpected:
        raise LmtrainError(
            f"the weights in {ckpt_dir} do not fit this model (missing {real_missing[:3]}, unexpected "
            f"{list(unexpected)[:3]}); resume with the same model configuration."
        )
    if hasattr(model, "tie_weights"):
        pretrained: Any = model  # a transformers model; nn.Module's stubs type unknown attributes Tensor | Module
        pretrained.tie_weights()
