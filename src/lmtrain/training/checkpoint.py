"""Checkpoints: written whole or not at all, in transformers' layout, found and rotated safely.

A checkpoint is built in a temporary sibling directory, every file is fsynced, the marker `COMPLETE`
is written last, and only then is the directory renamed to `checkpoint-<step>`. The files inside are
the ones transformers.Trainer writes (model weights, optimizer.pt, scheduler.pt, scaler.pt,
rng_state.pth, training_args.bin, trainer_state.json), plus lmtrain's own progress in
`lmtrain_state.json`, so either trainer resumes the other's checkpoints.

Since lmtrain only ever renames a directory into place after writing its marker, a `checkpoint-<step>`
without one was written by someone else (transformers): it counts when it holds trainer_state.json and
weights, and it is never deleted as "incomplete".
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from typing import Any, Dict, List, Optional

import torch

from ..errors import ConfigError, LmtrainError
from . import rng
from .state import LMTRAIN_FIELDS
from .weights import has_weights, load_model_weights, read_model_state, save_model_files  # noqa: F401 (API)

PREFIX = "checkpoint"
MARKER = "COMPLETE"
LMTRAIN_STATE = "lmtrain_state.json"
EXTRA = "lmtrain_extra.pt"
_CKPT_RE = re.compile(rf"^{PREFIX}-(\d+)$")
_TMP_RE = re.compile(rf"^\.{PREFIX}-(\d+)\.tmp-\d+$")
_OLD_RE = re.compile(rf"^({PREFIX}-\d+)\.old-\d+$")


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


# ---- writing -----------------------------------------------------------------------------------


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

    `other_ranks_rng`: RNG files ranks 1.. wrote beside the checkpoint (see `rng.write_rank_file`); they are
    moved inside as rng_state_<rank>.pth, and rank 0's is then rng_state_0.pth, as transformers names them.
    `extra`: more objects to restore with the checkpoint (returned by `load_training_state`).
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


# ---- finding -----------------------------------------------------------------------------------


def is_complete(path: str) -> bool:
    """lmtrain's marker is there, or it is a transformers checkpoint: trainer_state.json and weights.

    (transformers writes trainer_state.json after the weights, optimizer, scheduler and RNG files.)
    """
    if os.path.isfile(os.path.join(path, MARKER)):
        return True
    return os.path.isfile(os.path.join(path, "trainer_state.json")) and has_weights(path)


def list_checkpoints(output_dir: str) -> List[str]:
    """Complete checkpoints (lmtrain's and transformers') in output_dir, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _CKPT_RE.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isdir(path) and is_complete(path):
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str) -> Optional[str]:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def get_last_checkpoint(folder: str) -> Optional[str]:
    """transformers' helper: the highest-numbered checkpoint in `folder`, a complete one when there is one."""
    found = latest_checkpoint(folder)
    if found is not None or not os.path.isdir(folder):
        return found
    dirs = [
        (int(m.group(1)), n)
        for n in os.listdir(folder)
        if (m := _CKPT_RE.match(n)) and os.path.isdir(os.path.join(folder, n))
    ]
    return os.path.join(folder, max(dirs)[1]) if dirs else None


def remove_incomplete(output_dir: str) -> List[str]:
    """Clean up after a killed save; returns what was removed.

    Only lmtrain's own leftovers go: `.checkpoint-<step>.tmp-<pid>` build dirs, `checkpoint-<step>.old-<pid>`
    replaced dirs and stray `.rng-*` files. A kill between the two renames of a re-save leaves the step
    only as one of those: the whole one is renamed back instead. `checkpoint-<step>` dirs are never
    deleted (one without a marker may be a transformers checkpoint, or a user's).
    """
    removed: List[str] = []
    if not os.path.isdir(output_dir):
        return removed
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        tmp, old = _TMP_RE.match(name), _OLD_RE.match(name)
        if (tmp or old) and os.path.isdir(path):
            final = os.path.join(output_dir, old.group(1) if old else f"{PREFIX}-{tmp.group(1)}")
            if not os.path.exists(final) and os.path.isfile(os.path.join(path, MARKER)):
                os.replace(path, final)  # the only whole copy of this step: keep it
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        elif name.startswith(".rng-") and os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


def rotate_checkpoints(output_dir: str, limit: Optional[int], best: Optional[str] = None) -> List[str]:
    """Delete the oldest checkpoints (lmtrain's or transformers') beyond `limit`, never the latest nor the best."""
    if not limit or limit <= 0:
        return []
    ckpts = list_checkpoints(output_dir)
    protected = {ckpts[-1]} if ckpts else set()
    if best:
        protected |= {c for c in ckpts if os.path.abspath(c) == os.path.abspath(best)}
    deletable = [c for c in ckpts if c not in protected]
    excess = len(ckpts) - max(limit, len(protected))
    removed = deletable[: max(0, excess)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def keep_only(output_dir: str, keep: str) -> List[str]:
    """End of a run with save_total_limit=1 and a best checkpoint: delete every other checkpoint (transformers'
    _finalize_training), so the one checkpoint left is the best."""
    if not os.path.isdir(keep):
        return []
    removed = [c for c in list_checkpoints(output_dir) if not os.path.samefile(c, keep)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


# ---- loading -----------------------------------------------------------------------------------


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


def save_args(args: Any, out_dir: str) -> None:
    """The arguments as transformers saves them (training_args.bin) and as JSON for people."""
    args_bin = os.path.join(out_dir, "training_args.bin")
    try:
        torch.save(args, args_bin)
    except (pickle.PicklingError, TypeError, AttributeError):
        # e.g. a lambda in the args: resuming never reads this file, and training_args.json stays
        if os.path.exists(args_bin):
            os.remove(args_bin)
    with open(os.path.join(out_dir, "training_args.json"), "w", encoding="utf-8") as f:
        f.write(args.to_json_string() + "\n")


# ---- the owner -----------------------------------------------------------------------------------


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
    ) -> str:
        """Save checkpoint-<state.global_step> and rotate old ones. Collective: every rank calls it."""
        step, out = state.global_step, self.output_dir
        distributed = self.world_size > 1
        if distributed and not self.is_main:
            rng.write_rank_file(out, step, self.rank)
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

    def update_best(self, state: Any, metrics: Dict[str, float]) -> bool:
        """Track metric_for_best_model in the state; True on a new best."""
        return update_best(state, self.args, metrics)

    def finish(self, state: Any) -> None:
        """End of a run: with save_total_limit=1 the one checkpoint left is the best (transformers)."""
        if self.is_main and state.best_model_checkpoint and self.args.save_total_limit == 1:
            keep_only(self.output_dir, state.best_model_checkpoint)
