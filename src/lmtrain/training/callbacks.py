"""Callbacks with transformers' names, events, flags and order.

`DefaultFlowCallback` decides from the strategies when to log, evaluate and save, by setting the
`TrainerControl` flags in `on_step_end` / `on_epoch_end`, exactly as in transformers; callbacks after it
see (and may change) those flags before the loop acts on them. `CallbackHandler` resets the flags at the
same events transformers does. Callbacks that are `ExportableState` are saved in checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

logger = logging.getLogger("lmtrain")


class ExportableState:
    """A callback (or the control) whose state travels in checkpoints: `state()` and `from_state()`."""

    def state(self) -> dict:
        raise NotImplementedError("You must implement a `state` function to utilize this class.")

    @classmethod
    def from_state(cls, state: dict) -> Any:
        instance = cls(**state["args"])
        for key, value in state["attributes"].items():
            setattr(instance, key, value)
        return instance


@dataclass
class TrainerControl(ExportableState):
    """Flags a callback sets to steer the loop; reset at the events transformers resets them."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False

    # transformers exposes `should_training_stop`; `should_stop` reads better.
    @property
    def should_stop(self) -> bool:
        return self.should_training_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.should_training_stop = value

    def _new_training(self) -> None:
        self.should_training_stop = False

    def _new_epoch(self) -> None:
        self.should_epoch_stop = False

    def _new_step(self) -> None:
        self.should_save = self.should_evaluate = self.should_log = False

    def state(self) -> dict:
        return {
            "args": {
                "should_training_stop": self.should_training_stop,
                "should_epoch_stop": self.should_epoch_stop,
                "should_save": self.should_save,
                "should_evaluate": self.should_evaluate,
                "should_log": self.should_log,
            },
            "attributes": {},
        }


class TrainerCallback:
    """Base class: override any event. Each gets (args, state, control, **kwargs) like transformers."""

    def on_init_end(self, args, state, control, **kwargs): ...
    def on_train_begin(self, args, state, control, **kwargs): ...
    def on_train_end(self, args, state, control, **kwargs): ...
    def on_epoch_begin(self, args, state, control, **kwargs): ...
    def on_epoch_end(self, args, state, control, **kwargs): ...
    def on_step_begin(self, args, state, control, **kwargs): ...
    def on_pre_optimizer_step(self, args, state, control, **kwargs): ...
    def on_optimizer_step(self, args, state, control, **kwargs): ...
    def on_substep_end(self, args, state, control, **kwargs): ...
    def on_step_end(self, args, state, control, **kwargs): ...
    def on_evaluate(self, args, state, control, **kwargs): ...
    def on_predict(self, args, state, control, metrics, **kwargs): ...
    def on_save(self, args, state, control, **kwargs): ...
    def on_log(self, args, state, control, logs=None, **kwargs): ...
    def on_prediction_step(self, args, state, control, **kwargs): ...
    def on_push_begin(self, args, state, control, **kwargs): ...


# The flag each event clears before the callbacks run (transformers' CallbackHandler).
_RESETS = {
    "on_train_begin": ("should_training_stop",),
    "on_epoch_begin": ("should_epoch_stop",),
    "on_step_begin": ("should_log", "should_evaluate", "should_save"),
    "on_evaluate": ("should_evaluate",),
    "on_save": ("should_save",),
    "on_log": ("should_log",),
}


class CallbackHandler:
    """Calls every registered callback for an event, in order; a callback may return a new control.

    Each callback also receives model, processing_class, optimizer, lr_scheduler, train_dataloader and
    eval_dataloader as keyword arguments, as in transformers.
    """

    def __init__(
        self,
        callbacks: List[Any],
        model: Any = None,
        processing_class: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
    ) -> None:
        self.callbacks: List[Any] = []
        for cb in callbacks:
            self.add_callback(cb)
        self.model, self.processing_class = model, processing_class
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.train_dataloader = self.eval_dataloader = None

    def add_callback(self, callback: Any) -> None:
        cb = callback() if isinstance(callback, type) else callback
        if type(cb) in [type(c) for c in self.callbacks]:
            logger.warning("adding a second %s to the Trainer's callbacks", type(cb).__name__)
        self.callbacks.append(cb)

    def pop_callback(self, callback: Any) -> Optional[Any]:
        for cb in self.callbacks:
            if (isinstance(callback, type) and isinstance(cb, callback)) or cb is callback:
                self.callbacks.remove(cb)
                return cb
        return None

    def remove_callback(self, callback: Any) -> None:
        self.pop_callback(callback)

    # lmtrain's earlier names
    add, pop, remove = add_callback, pop_callback, remove_callback

    @property
    def callback_list(self) -> str:
        return "\n".join(type(cb).__name__ for cb in self.callbacks)

    def fire(self, event: str, args: Any, state: Any, control: TrainerControl, **kwargs: Any) -> TrainerControl:
        for flag in _RESETS.get(event, ()):
            setattr(control, flag, False)
        objects = {
            "model": self.model,
            "processing_class": self.processing_class,
            "optimizer": self.optimizer,
            "lr_scheduler": self.lr_scheduler,
            "train_dataloader": self.train_dataloader,
            "eval_dataloader": self.eval_dataloader,
        }
        objects.update(kwargs)  # an event's own eval_dataloader wins
        for cb in self.callbacks:
            handler = getattr(cb, event, None)
            if handler is None:
                continue
            out = handler(args, state, control, **objects)
            if out is not None:
                control = out
        return control

    def __getattr__(self, event: str) -> Any:
        """`handler.on_step_end(args, state, control)` as transformers spells it."""
        if event.startswith("on_"):
            return lambda args, state, control, **kw: self.fire(event, args, state, control, **kw)
        raise AttributeError(event)


class DefaultFlowCallback(TrainerCallback):
    """When to log, evaluate and save, from the strategies: transformers' rules, flag by flag."""

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step == 1 and args.logging_first_step:
            control.should_log = True
        if args.logging_strategy == "steps" and state.logging_steps and step % state.logging_steps == 0:
            control.should_log = True
        eval_due = args.eval_strategy == "steps" and bool(state.eval_steps) and args.eval_delay <= step
        if eval_due and step % state.eval_steps == 0:
            control.should_evaluate = True
        if args.save_strategy == "steps" and state.save_steps and state.save_steps > 0 and step % state.save_steps == 0:
            control.should_save = True
        if step >= state.max_steps:
            control.should_training_stop = True
            if eval_due and step % state.eval_steps != 0:  # evaluate the final model once
                control.should_evaluate = True
            if args.save_strategy == "steps":
                control.should_save = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if args.logging_strategy == "epoch":
            control.should_log = True
        if args.eval_strategy == "epoch" and args.eval_delay <= state.epoch:
            control.should_evaluate = True
        if args.save_strategy == "epoch":
            control.should_save = True
        return control


class PrinterCallback(TrainerCallback):
    """Prints every log record as a dict (transformers' bare logger)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        logs.pop("total_flos", None)
        if state.is_local_process_zero:
            print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items()})


class EarlyStoppingCallback(TrainerCallback, ExportableState):
    """Stops training when metric_for_best_model has not improved (by more than `threshold`) against
    state.best_metric for `patience` evaluations. Its counter is saved in checkpoints."""

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: Optional[float] = 0.0) -> None:
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold or 0.0
        self.early_stopping_patience_counter = 0

    def check_metric_value(self, args, state, control, metric_value: float) -> None:
        best = state.best_metric  # the Trainer updates it after the callbacks have seen this evaluation
        better = best is None or (metric_value > best if args.greater_is_better else metric_value < best)
        if best is None or (better and abs(metric_value - best) > self.early_stopping_threshold):
            self.early_stopping_patience_counter = 0
        else:
            self.early_stopping_patience_counter += 1

    def on_train_begin(self, args, state, control, **kwargs):
        if not args.load_best_model_at_end:
            logger.warning(
                "EarlyStoppingCallback without load_best_model_at_end=True: the best model will not "
                "be loaded at the end."
            )
        if args.metric_for_best_model is None or args.eval_strategy == "no":
            from ..errors import ConfigError

            raise ConfigError(
                "EarlyStoppingCallback needs metric_for_best_model and an eval_strategy of steps or epoch; set both."
            )

    def on_evaluate(self, args, state, control, metrics: Optional[Dict[str, float]] = None, **kwargs):
        name = args.metric_for_best_model or "loss"
        key = name if name.startswith("eval_") else f"eval_{name}"
        value = (metrics or {}).get(key)
        if value is None:
            logger.warning("early stopping needs %s, which the evaluation did not return; it is disabled", key)
            return
        self.check_metric_value(args, state, control, value)
        if self.early_stopping_patience_counter >= self.early_stopping_patience:
            control.should_training_stop = True

    def state(self) -> dict:
        return {
            "args": {
                "early_stopping_patience": self.early_stopping_patience,
                "early_stopping_threshold": self.early_stopping_threshold,
            },
            "attributes": {"early_stopping_patience_counter": self.early_stopping_patience_counter},
        }


def callback_states(callbacks: List[Any], control: TrainerControl) -> Dict[str, Any]:
    """`stateful_callbacks` of a checkpoint: class name -> state (a list when there are several)."""
    out: Dict[str, Any] = {}
    for cb in [*callbacks, control]:
        if not isinstance(cb, ExportableState):
            continue
        name = type(cb).__name__
        if name in out:
            out[name] = (out[name] if isinstance(out[name], list) else [out[name]]) + [cb.state()]
        else:
            out[name] = cb.state()
    return out


def restore_callback_states(saved: Dict[str, Any], handler: CallbackHandler, control: TrainerControl) -> None:
    """Give the Trainer's stateful callbacks (and control) the states a checkpoint saved, in order."""
    for name, states in (saved or {}).items():
        states = states if isinstance(states, list) else [states]
        targets = [
            cb for cb in [*handler.callbacks, control] if type(cb).__name__ == name and isinstance(cb, ExportableState)
        ]
        for cb, st in zip(targets, states):
            for key, value in {**st.get("args", {}), **st.get("attributes", {})}.items():
                setattr(cb, key, value)
