"""Training state: what a checkpoint needs to resume exactly, and what transformers calls `TrainerState`.

One dataclass holds both halves; they are saved apart. `trainer_state.json` gets exactly the fields of
the installed transformers' `TrainerState` (which loads it with `cls(**json)` and fails on any other
key), and lmtrain's own progress (`LMTRAIN_FIELDS`) goes to `lmtrain_state.json` beside it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

LMTRAIN_FIELDS: Tuple[str, ...] = (
    "data_epoch",
    "batches_in_epoch",
    "window_loss_sum",
    "window_steps",
    "window_tokens",
    "train_loss_sum",
    "nonfinite_steps",
)
"""TrainState fields transformers does not know: saved in lmtrain_state.json, never in trainer_state.json."""

# transformers' TrainerState fields (5.x), used only when transformers cannot be imported
_HF_FIELDS_FALLBACK = (
    "epoch",
    "global_step",
    "max_steps",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "train_batch_size",
    "num_train_epochs",
    "num_input_tokens_seen",
    "total_flos",
    "log_history",
    "best_metric",
    "best_global_step",
    "best_model_checkpoint",
    "is_local_process_zero",
    "is_world_process_zero",
    "is_hyper_param_search",
    "trial_name",
    "trial_params",
    "stateful_callbacks",
)


def hf_field_names() -> Tuple[str, ...]:
    """Field names of the installed transformers' TrainerState (they differ between 4.x releases)."""
    try:
        from transformers.trainer_callback import TrainerState as HFTrainerState
    except Exception:  # transformers missing or broken: the 5.x list
        return _HF_FIELDS_FALLBACK
    return tuple(f.name for f in dataclasses.fields(HFTrainerState))


@dataclass
class TrainState:
    """Counters and history of a run; the transformers half is saved as `trainer_state.json`."""

    global_step: int = 0
    """Optimizer steps taken."""
    epoch: float = 0.0
    """Epochs done, fractional inside an epoch (transformers semantics)."""
    max_steps: int = 0
    """Optimizer steps this run will take."""
    num_train_epochs: int = 0
    """Epochs this run will start."""
    logging_steps: Optional[float] = 500
    eval_steps: Optional[float] = None
    save_steps: Optional[float] = 500
    train_batch_size: int = 0
    """Per-device micro-batch size."""
    total_flos: float = 0.0
    """Model FLOPs spent so far (6 * parameters * tokens)."""
    num_input_tokens_seen: int = 0
    """Input tokens consumed by optimizer steps so far."""
    log_history: List[Dict[str, Any]] = field(default_factory=list)
    """Every logged record, in order."""
    best_metric: Optional[float] = None
    """Best value of metric_for_best_model so far."""
    best_model_checkpoint: Optional[str] = None
    """Checkpoint directory that holds best_metric."""
    best_global_step: Optional[int] = None
    """Step at which best_metric was reached."""

    # ---- data position: where the next micro-batch comes from ----
    data_epoch: int = 0
    """Index of the epoch being read (the sampler's permutation seed is data_seed + data_epoch)."""
    batches_in_epoch: int = 0
    """Micro-batches of data_epoch already consumed."""

    # ---- running accumulators of the current logging window (so a resumed run logs the same) ----
    window_loss_sum: float = 0.0
    """Sum of step losses since the last log."""
    window_steps: int = 0
    """Steps since the last log."""
    window_tokens: int = 0
    """Input tokens since the last log."""
    train_loss_sum: float = 0.0
    """Sum of all step losses so far (for the run's mean training loss)."""
    nonfinite_steps: int = 0
    """Steps whose loss was NaN or infinite."""

    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    is_hyper_param_search: bool = False
    trial_name: Optional[str] = None
    trial_params: Optional[Dict[str, Any]] = None
    """Hyperparameters of the search trial this run is (transformers' hyperparameter_search)."""
    stateful_callbacks: Dict[str, Any] = field(default_factory=dict)
    """Saved states of callbacks and of TrainerControl, by class name (transformers' format)."""

    def state_dict(self) -> Dict[str, Any]:
        """Every field, lmtrain's and transformers'."""
        return dataclasses.asdict(self)

    def hf_state_dict(self) -> Dict[str, Any]:
        """Exactly the fields the installed transformers' TrainerState accepts."""
        full = self.state_dict()
        return {name: full[name] for name in hf_field_names() if name in full}

    def lmtrain_state_dict(self) -> Dict[str, Any]:
        """lmtrain's own progress: data position and logging-window accumulators."""
        return {name: getattr(self, name) for name in LMTRAIN_FIELDS}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Take the known keys of `state` (written by lmtrain, old or new, or by transformers)."""
        known = {f.name for f in dataclasses.fields(self)}
        for key, value in state.items():
            if key in known:
                setattr(self, key, value)
        # transformers writes None for these before its __post_init__ fills them in
        if self.log_history is None:
            self.log_history = []
        if not isinstance(self.stateful_callbacks, dict):
            self.stateful_callbacks = {}

    def save_to_json(self, path: str) -> None:
        """Write trainer_state.json: only transformers' fields, so `TrainerState.load_from_json` reads it."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.hf_state_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def load_from_json(cls, path: str) -> "TrainState":
        with open(path, encoding="utf-8") as f:
            state = cls()
            state.load_state_dict(json.load(f))
            return state


# transformers' name, so `from lmtrain import TrainerState` works in user code.
TrainerState = TrainState
