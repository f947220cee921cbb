"""The one owner of a run's checkpoints (`Checkpointer`), and which checkpoint a resume means."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch

from ...errors import ConfigError, LmtrainError
from ..weights import load_model_weights
from . import rng
from .files import data_position_name, load_training_state, read_data_position, save_checkpoint, write_data_position
from .layout import (
    PREFIX,
    is_complete,
    keep_only,
    latest_checkpoint,
    list_checkpoints,
    remove_incomplete,
    rotate_checkpoints,
)


def resolve_resume(resume: Any, args: Any, is_main: bool) -> Optional[str]:
    """The checkpoint to resume from: a path, the latest complete one for True, or None for a fresh start.

    (Whether a fresh start may go into a folder that holds checkpoints is the Trainer's call: the library
    warns, as transformers trains on; the CLI refuses.)
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
        if not os.path.isdir(resume) or not is_complete(str(resume)):
            raise LmtrainError(
                f"{resume} is not a complete checkpoint (lmtrain's, or transformers' with "
                f"trainer_state.json and weights); pass a checkpoint-<step> directory "
                f"(or resume=True for the latest in {out})."
            )
        return str(resume)
    return None


def update_best(state: Any, args: Any, metrics: Dict[str, float]) -> bool:
    """Track metric_for_best_model; True when this evaluation is a new best (transformers' rule)."""
    name = args.metric_for_best_model
    key = name if name.startswith("eval_") else f"eval_{name}"
    if key not in metrics:
        raise ConfigError(
            f"metric_for_best_model={name!r} is not among the evaluation metrics {sorted(metrics)}; pick one of those."
        )
    value, best = metrics[key], state.best_metric
    if best is None or (value > best if args.greater_is_better else value < best):
        state.best_metric = value
        if args.save_strategy != "no":  # transformers names the best step only when checkpoints are saved
            state.best_global_step = state.global_step
        return True
    return False


class Checkpointer:
    """Every checkpoint of a run goes through here: its name, the collective save under torchrun (each
    rank's RNG file, then rank 0 seals the directory), finding, resuming, rotation and the best one.

    `args` is read at each call (output_dir, save_total_limit, save_safetensors, save_only_model can
    change between runs, e.g. per hyperparameter trial); `rt` is the process's `Runtime` (None: one
    process).
    """

    def __init__(self, args: Any, rt: Any = None) -> None:
        self.args = args
        self.rank = rt.rank if rt is not None else 0
        self.world_size = rt.world_size if rt is not None else 1
        self._barrier = rt.barrier if rt is not None else (lambda: None)

    @property
    def output_dir(self) -> str:
        return self.args.output_dir

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def path(self, step: int) -> str:
        return os.path.join(self.output_dir, f"{PREFIX}-{step}")

    def list(self) -> List[str]:
        """Complete checkpoints, oldest first (an unsealed lmtrain directory never counts)."""
        return list_checkpoints(self.output_dir)

    def latest(self) -> Optional[str]:
        return latest_checkpoint(self.output_dir)

    def resolve(self, resume: Any) -> Optional[str]:
        """The checkpoint `resume` names (a path, True/"latest", or None with args.resume_from_checkpoint);
        leftovers of a killed save are cleaned up first."""
        return resolve_resume(resume, self.args, self.is_main)

    def best_path(self, state: Any, saving_step: Optional[int] = None) -> Optional[str]:
        """The best checkpoint's directory: it exists, or it is the one being saved at `saving_step`."""
        best = state.best_global_step
        if best and (best == saving_step or os.path.isdir(self.path(best))):
            return self.path(best)
        return None

    def save(
        self,
        state: Any,
        *,
        model: torch.nn.Module,
        tokenizer: Any,
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
        model_state: Optional[Dict[str, Any]] = None,
        optimizer_state: Optional[Dict[str, Any]] = None,
        data_position: Optional[Dict[str, Any]] = None,
    ) -> str:
        """Save checkpoint-<state.global_step> and rotate old ones. Collective: every rank calls it.
        `data_position`: this rank's position in a streamed dataset (each rank its own file)."""
        step, out = state.global_step, self.output_dir
        distributed = self.world_size > 1
        if distributed and not self.is_main:
            rng.write_rank_file(out, step, self.rank)
        if data_position is not None:
            write_data_position(out, step, self.rank, data_position)
        self._barrier()  # every rank's RNG file exists before rank 0 seals the checkpoint
        if self.is_main:
            best = self.best_path(state, saving_step=step)
            if best is not None:  # set before saving: the checkpoint's state names itself when it is the best
                state.best_model_checkpoint = best
            save_checkpoint(
                out,
                step,
                model=model,
                tokenizer=tokenizer,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                state=state,
                args=self.args,
                model_state=model_state,
                optimizer_state=optimizer_state,
                other_ranks_rng=[rng.rank_file(out, step, r) for r in range(1, self.world_size)],
                rank_files=[os.path.join(out, f".data-{step}.{data_position_name(r)}") for r in range(self.world_size)]
                if data_position is not None
                else None,
            )
            rotate_checkpoints(out, self.args.save_total_limit, state.best_model_checkpoint)
        self._barrier()
        return self.path(step)

    def load(
        self,
        ckpt_dir: str,
        *,
        model: Optional[torch.nn.Module],
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
        state: Any,
        steps_per_epoch: Optional[int] = None,
        grad_accum: int = 1,
    ) -> Dict[str, Any]:
        """Restore weights (unless `model` is None: the caller scattered them, e.g. into FSDP shards),
        optimizer (None: likewise), scheduler, scaler, TrainState and this rank's RNG."""
        if model is not None:
            load_model_weights(model, ckpt_dir)
        return load_training_state(
            ckpt_dir,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            state=state,
            steps_per_epoch=steps_per_epoch,
            grad_accum=grad_accum,
            rank=self.rank,
            world_size=self.world_size,
        )

    def data_position(self, ckpt_dir: str) -> Optional[Dict[str, Any]]:
        """This rank's position in a streamed dataset, when the checkpoint holds one."""
        return read_data_position(ckpt_dir, self.rank)

    def update_best(self, state: Any, metrics: Dict[str, float]) -> bool:
        """Track metric_for_best_model in the state; True on a new best."""
        return update_best(state, self.args, metrics)

    def finish(self, state: Any) -> None:
        """End of a run: with save_total_limit=1 the one checkpoint left is the best (transformers)."""
        if self.is_main and state.best_model_checkpoint and self.args.save_total_limit == 1:
            keep_only(self.output_dir, state.best_model_checkpoint)
