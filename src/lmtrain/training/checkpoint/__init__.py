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

from ..weights import has_weights, load_model_weights, read_model_state, save_model_files
from .checkpointer import Checkpointer, resolve_resume, update_best
from .files import load_training_state, read_optimizer_state, save_checkpoint
from .layout import (
    EXTRA,
    LMTRAIN_STATE,
    MARKER,
    PREFIX,
    get_last_checkpoint,
    is_complete,
    keep_only,
    latest_checkpoint,
    list_checkpoints,
    remove_incomplete,
    rotate_checkpoints,
)

__all__ = [
    "EXTRA",
    "LMTRAIN_STATE",
    "MARKER",
    "PREFIX",
    "Checkpointer",
    "get_last_checkpoint",
    "has_weights",
    "is_complete",
    "keep_only",
    "latest_checkpoint",
    "list_checkpoints",
    "load_model_weights",
    "load_training_state",
    "read_model_state",
    "read_optimizer_state",
    "remove_incomplete",
    "resolve_resume",
    "rotate_checkpoints",
    "save_checkpoint",
    "save_model_files",
    "update_best",
]
