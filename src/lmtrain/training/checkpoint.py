"""Checkpoints: written whole or not at all, found by their completion marker, rotated safely.

A checkpoint is built in a temporary sibling directory, every file is fsynced, the marker `COMPLETE`
is written last, and only then is the directory renamed to `checkpoint-<step>`. A directory without the
marker is never chosen for resuming and is removed at the next start.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..errors import LmtrainError

PREFIX = "checkpoint"
MARKER = "COMPLETE"
_CKPT_RE = re.compile(rf"^{PREFIX}-(\d+)$")


def _fsync_tree(path: str) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(root)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model_files(model: torch.nn.Module, out_dir: str, safe_serialization: bool = True,
                     state_dict: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Weights and config: `save_pretrained` for transformers models, safetensors for plain modules.

    `state_dict` replaces the model's own (a full state dict gathered from FSDP shards).
    """
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    if hasattr(model, "save_pretrained"):
        from transformers.utils import logging as hf_logging

        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar per save is noise in the training log
        try:
            kwargs = {"state_dict": state_dict} if state_dict is not None else {}
            model.save_pretrained(out_dir, safe_serialization=safe_serialization, **kwargs)
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()
        return
    state = {k: v.detach().contiguous() for k, v in (state_dict or model.state_dict()).items()}
    if safe_serialization:
        from safetensors.torch import save_file

        save_file(_untie(state), os.path.join(out_dir, "model.safetensors"))
    else:
        torch.save(state, os.path.join(out_dir, "pytorch_model.bin"))


def _untie(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """safetensors refuses shared storage: keep the first name of each tensor."""
    seen, out = set(), {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key not in seen:
            seen.add(key)
            out[k] = v
    return out


def read_model_state(ckpt_dir: str) -> Dict[str, torch.Tensor]:
    """The full model state dict stored in a checkpoint (on the CPU)."""
    st, pt = os.path.join(ckpt_dir, "model.safetensors"), os.path.join(ckpt_dir, "pytorch_model.bin")
    if os.path.exists(st):
        from safetensors.torch import load_file

        return load_file(st, device="cpu")
    if os.path.exists(pt):
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise LmtrainError(f"{ckpt_dir} holds no model weights (model.safetensors); it is not a usable checkpoint.")


def read_optimizer_state(ckpt_dir: str) -> Dict[str, Any]:
    path = os.path.join(ckpt_dir, "optimizer.pt")
    if not os.path.exists(path):
        raise LmtrainError(f"{ckpt_dir} has no optimizer state (saved with save_only_model?); it cannot be resumed.")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_model_weights(model: torch.nn.Module, ckpt_dir: str) -> None:
    """Load weights saved by `save_model_files` into `model` (tied weights may be absent from the file)."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    adapter = os.path.join(ckpt_dir, "adapter_model.safetensors")
    if hasattr(model, "peft_config") and os.path.exists(adapter):  # LoRA: the checkpoint holds the adapters
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(adapter, device="cpu"))
        return
    state = read_model_state(ckpt_dir)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if isinstance(getattr(model, "_tied_weights_keys", None), dict):
        tied = set(model._tied_weights_keys)
    real_missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if real_missing or unexpected:
        raise LmtrainError(
            f"the weights in {ckpt_dir} do not fit this model (missing {real_missing[:3]}, unexpected "
            f"{list(unexpected)[:3]}); resume with the same model configuration."
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def save_checkpoint(
    output_dir: str,
    step: int,
    *,
    model: torch.nn.Module,
    tokenizer: Any,
    optimizer: Optional[torch.optim.Optimizer],
    scheduler: Any,
    scaler: Any,
    state: Any,
    args: Any,
    extra: Optional[Dict[str, Any]] = None,
    other_ranks_rng: Optional[List[str]] = None,
    model_state: Optional[Dict[str, Any]] = None,
    optimizer_state: Optional[Dict[str, Any]] = None,
) -> str:
    """Write checkpoint-<step> atomically and return its path.

    `other_ranks_rng`: RNG files other processes wrote beside the checkpoint (see `write_rank_rng`);
    they are moved inside before the completion marker.
    """
    final = os.path.join(output_dir, f"{PREFIX}-{step}")
    tmp = os.path.join(output_dir, f".{PREFIX}-{step}.tmp-{os.getpid()}")
    os.makedirs(output_dir, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        save_model_files(model, tmp, safe_serialization=args.save_safetensors, state_dict=model_state)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(tmp)
        if not args.save_only_model and optimizer is not None:
            torch.save(optimizer_state or optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
            if scheduler is not None:
                torch.save(scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
            if scaler is not None:
                torch.save(scaler.state_dict(), os.path.join(tmp, "scaler.pt"))
            torch.save({**rng_state(), **(extra or {})}, os.path.join(tmp, "rng_state.pt"))
            for path in other_ranks_rng or []:
                os.replace(path, os.path.join(tmp, os.path.basename(path).split(".", 2)[-1]))
        state.save_to_json(os.path.join(tmp, "trainer_state.json"))
        with open(os.path.join(tmp, "training_args.json"), "w", encoding="utf-8") as f:
            f.write(args.to_json_string() + "\n")
        _fsync_tree(tmp)
        with open(os.path.join(tmp, MARKER), "w") as f:  # written last: its presence means "complete"
            f.write(json.dumps({"step": step}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(final):  # a re-save of the same step: replace it only once the new one is whole
            old = final + f".old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(output_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LmtrainError(
            f"could not save checkpoint {final}: {e.strerror or e}; the previous checkpoint is intact "
            f"(free disk space or fix the permissions of {output_dir})."
        ) from e
    return final


def write_rank_rng(output_dir: str, step: int, rank: int) -> str:
    """A non-zero rank's RNG state, written beside the checkpoint rank 0 is about to save."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f".rng-{step}.rng_state_{rank}.pt")
    torch.save(rng_state(), path)
    return path


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


def list_checkpoints(output_dir: str) -> List[str]:
    """Complete checkpoints in output_dir, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _CKPT_RE.match(name)
        path = os.path.join(output_dir, name)
        if m and is_complete(path):
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str) -> Optional[str]:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def remove_incomplete(output_dir: str) -> List[str]:
    """Delete half-written checkpoints left by a killed run; returns what was removed."""
    removed = []
    if not os.path.isdir(output_dir):
        return removed
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        partial = name.startswith(f".{PREFIX}-") or (_CKPT_RE.match(name) and not is_complete(path))
        if partial and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        elif name.startswith(".rng-") and os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


def rotate_checkpoints(output_dir: str, limit: Optional[int], best: Optional[str] = None) -> List[str]:
    """Delete the oldest checkpoints beyond `limit`, never the latest nor the best one."""
    if not limit:
        return []
    ckpts = list_checkpoints(output_dir)
    protected = {ckpts[-1]} if ckpts else set()
    if best:
        protected.add(os.path.abspath(best))
        protected |= {c for c in ckpts if os.path.abspath(c) == os.path.abspath(best)}
    deletable = [c for c in ckpts if c not in protected]
    excess = len(ckpts) - max(limit, len(protected & set(ckpts)))
    removed = deletable[: max(0, excess)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def load_training_state(ckpt_dir: str, *, optimizer, scheduler, scaler, state) -> Dict[str, Any]:
    """Restore optimizer, scheduler, scaler, TrainState and RNG from a checkpoint; returns extra saved data."""
    def path(name: str) -> str:
        return os.path.join(ckpt_dir, name)

    if optimizer is not None:  # (None: the caller restored it, e.g. into FSDP shards)
        optimizer.load_state_dict(read_optimizer_state(ckpt_dir))
    if scheduler is not None and os.path.exists(path("scheduler.pt")):
        scheduler.load_state_dict(torch.load(path("scheduler.pt"), weights_only=False))
    if scaler is not None and os.path.exists(path("scaler.pt")):
        scaler.load_state_dict(torch.load(path("scaler.pt"), weights_only=False))
    with open(path("trainer_state.json"), encoding="utf-8") as f:
        state.load_state_dict(json.load(f))
    rank = int(os.environ.get("RANK", 0))
    own = path(f"rng_state_{rank}.pt")
    saved = torch.load(own if rank and os.path.exists(own) else path("rng_state.pt"), weights_only=False)
    set_rng_state(saved)
    return {k: v for k, v in saved.items() if k not in ("python", "numpy", "cpu", "cuda")}


def get_last_checkpoint(folder: str) -> Optional[str]:
    """transformers' helper: the newest complete checkpoint in `folder`, or None."""
    return latest_checkpoint(folder)


def resolve_resume(resume: Any, args: Any, is_main: bool) -> Optional[str]:
    """The checkpoint to resume from: a path, the latest complete one for True, or None for a fresh start.

    A fresh start into an output_dir that holds checkpoints needs overwrite_output_dir (one clear line).
    """
    out = args.output_dir
    if is_main:
        remove_incomplete(out)
    if resume is None and args.resume_from_checkpoint:
        resume = args.resume_from_checkpoint
    if resume is True or resume == "latest":
        found = latest_checkpoint(out)
        if found is None:
            raise LmtrainError(f"no complete checkpoint in {out} to resume from; start without resume.")
        return found
    if isinstance(resume, (str, os.PathLike)) and resume:
        if not is_complete(str(resume)):
            raise LmtrainError(f"{resume} is not a complete lmtrain checkpoint; pass a checkpoint-<step> "
                               f"directory (or resume=True for the latest in {out}).")
        return str(resume)
    if list_checkpoints(out) and not args.overwrite_output_dir:
        raise LmtrainError(f"{out} already holds checkpoints; pass resume_from_checkpoint=True (CLI: --resume) "
                           f"to continue, or overwrite_output_dir=True (--overwrite_output_dir) to start over.")
    return None


def update_best(state: Any, args: Any, metrics: Dict[str, float]) -> None:
    """Track metric_for_best_model; the checkpoint saved at this step becomes best_model_checkpoint."""
    from ..errors import ConfigError

    name = args.metric_for_best_model
    key = name if name.startswith("eval_") else f"eval_{name}"
    if key not in metrics:
        raise ConfigError(f"metric_for_best_model={name!r} is not among the evaluation metrics "
                          f"{sorted(metrics)}; pick one of those.")
    value, best = metrics[key], state.best_metric
    if best is None or (value > best if args.greater_is_better else value < best):
        state.best_metric, state.best_global_step = value, state.global_step
