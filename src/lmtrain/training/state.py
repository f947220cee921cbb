"""Training state: what a checkpoint needs to resume exactly, and what transformers calls `TrainerState`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class TrainState:
    """Counters and history of a run; saved as `trainer_state.json` in every checkpoint."""

    global_step: int = 0
    """Optimizer steps taken."""
    epoch: float = 0.0
    """Epochs done, fractional inside an epoch (transformers semantics)."""
    max_steps: int = 0
    """Optimizer steps this run will take."""
    num_train_epochs: int = 0
    """Epochs this run will start."""
    logging_steps: float = 500
    eval_steps: Optional[float] = None
    save_steps: float = 500
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

    def state_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(self)}
        for key, value in state.items():
            if key in known:
                setattr(self, key, value)

    def save_to_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.state_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def load_from_json(cls, path: str) -> "TrainState":
        with open(path, encoding="utf-8") as f:
            state = cls()
            state.load_state_dict(json.load(f))
            return state


# transformers' name, so `from lmtrain import TrainerState` works in user code.
TrainerState = TrainState
