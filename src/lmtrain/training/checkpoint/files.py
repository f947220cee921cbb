"""Writing a checkpoint whole or not at all, and reading one back (lmtrain's or transformers')."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, List, Optional

import torch

from ...errors import LmtrainError
from ..results import save_args
from ..state import LMTRAIN_FIELDS
from ..weights import save_model_files
from . import rng
from .layout import EXTRA, LMTRAIN_STATE, MARKER, PREFIX


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
    rank_files: Optional[List[str]] = None,
) -> str:
    """Write checkpoint-<step> atomically and return its path.

    `other_ranks_rng`: RNG files ranks 1.. wrote beside the checkpoint (see `rng.write_rank_file`); they are
    moved inside as rng_state_<rank>.pth, and rank 0's is then rng_state_0.pth, as transformers names them.
    `extra`: more objects to restore with the checkpoint (returned by `load_training_state`).
    `rank_files`: other per-rank files written beside the checkpoint (`beside`), moved inside likewise.
    """
    final = os.path.join(output_dir, f"{PREFIX}-{step}")
    tmp = os.path.join(output_dir, f".{PREFIX}-{step}.tmp-{os.getpid()}")
    os.makedirs(output_dir, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    distributed = bool(other_ranks_rng)
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
            torch.save(rng.capture(distributed), os.path.join(tmp, rng.file_name(0, distributed)))
            for path in other_ranks_rng or []:
                os.replace(path, os.path.join(tmp, os.path.basename(path).split(".", 2)[-1]))
            if extra:
                torch.save(extra, os.path.join(tmp, EXTRA))
        for path in rank_files or []:  # each rank's stream position, written beside the checkpoint by that rank
            os.replace(path, os.path.join(tmp, os.path.basename(path).split(".", 2)[-1]))
        state.save_to_json(os.path.join(tmp, "trainer_state.json"))
        with open(os.path.join(tmp, LMTRAIN_STATE), "w", encoding="utf-8") as f:
            json.dump(state.lmtrain_state_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        save_args(args, tmp)
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


def read_optimizer_state(ckpt_dir: str) -> Dict[str, Any]:
    path = os.path.join(ckpt_dir, "optimizer.pt")
    if not os.path.exists(path):
        raise LmtrainError(f"{ckpt_dir} has no optimizer state (saved with save_only_model?); it cannot be resumed.")
    return torch.load(path, map_location="cpu", weights_only=False)


def _position_from_step(state: Any, steps_per_epoch: Optional[int], grad_accum: int, ckpt_dir: str) -> None:
    """A transformers checkpoint has no data position: derive it as transformers does on resume."""
    if not steps_per_epoch:
        raise LmtrainError(f"{ckpt_dir} has no {LMTRAIN_STATE}; resuming it needs steps_per_epoch.")
    state.data_epoch = state.global_step // steps_per_epoch
    state.batches_in_epoch = (state.global_step % steps_per_epoch) * grad_accum
    # the window of unlogged steps is lost; the run's loss sum is rebuilt from the logged means
    state.window_loss_sum, state.window_steps, state.window_tokens, state.nonfinite_steps = 0.0, 0, 0, 0
    total, last = 0.0, 0
    for record in state.log_history:
        if "loss" in record and "step" in record:
            total += float(record["loss"]) * (record["step"] - last)
            last = record["step"]
    state.train_loss_sum = total


def load_training_state(
    ckpt_dir: str,
    *,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    state: Any,
    steps_per_epoch: Optional[int] = None,
    grad_accum: int = 1,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
) -> Dict[str, Any]:
    """Restore optimizer, scheduler, scaler, TrainState and RNG from a lmtrain or transformers checkpoint.

    `steps_per_epoch` and `grad_accum` place the data position when the checkpoint has no
    lmtrain_state.json (a transformers one). Returns the `extra` objects saved with it.
    """

    def path(name: str) -> str:
        return os.path.join(ckpt_dir, name)

    if optimizer is not None:  # (None: the caller restored it, e.g. into FSDP shards)
        optimizer.load_state_dict(read_optimizer_state(ckpt_dir))
    if scheduler is not None and os.path.exists(path("scheduler.pt")):
        scheduler.load_state_dict(torch.load(path("scheduler.pt"), weights_only=False))
    if scaler is not None and os.path.exists(path("scaler.pt")):
        scaler.load_state_dict(torch.load(path("scaler.pt"), weights_only=False))
    with open(path("trainer_state.json"), encoding="utf-8") as f:
        saved_state = json.load(f)
    state.load_state_dict(saved_state)
    if os.path.isfile(path(LMTRAIN_STATE)):
        with open(path(LMTRAIN_STATE), encoding="utf-8") as f:
            state.load_state_dict(json.load(f))
    elif not set(LMTRAIN_FIELDS) <= set(saved_state):  # neither lmtrain format: a transformers checkpoint
        _position_from_step(state, steps_per_epoch, grad_accum, ckpt_dir)
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    rng_file = rng.find(ckpt_dir, rank, world_size)
    extra: Dict[str, Any] = {}
    if rng_file is not None:  # transformers, too, carries on without one
        saved = torch.load(rng_file, weights_only=False)
        rng.restore(saved)
        extra = {k: v for k, v in saved.items() if k not in rng.KEYS}  # older lmtrain kept extras here
    if os.path.isfile(path(EXTRA)):
        extra.update(torch.load(path(EXTRA), weights_only=False))
    return extra


def data_position_name(rank: int) -> str:
    """The file holding one rank's position in a streamed dataset, inside a checkpoint."""
    return f"data_position_{rank}.pt"


def write_data_position(output_dir: str, step: int, rank: int, position: Dict[str, Any]) -> str:
    """Write this rank's stream position beside the checkpoint being built (moved inside by rank 0)."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f".data-{step}.{data_position_name(rank)}")
    torch.save(position, path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


def read_data_position(ckpt_dir: str, rank: int) -> Optional[Dict[str, Any]]:
    """This rank's stream position saved in a checkpoint, or None when it has none."""
    path = os.path.join(ckpt_dir, data_position_name(rank))
    return torch.load(path, weights_only=False) if os.path.isfile(path) else None
