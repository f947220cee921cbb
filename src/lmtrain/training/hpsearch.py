"""`Trainer.hyperparameter_search` with optuna, as transformers' (backend "optuna"; others say so).

Each trial copies the arguments with the trial's values, re-creates the model with `model_init`,
trains into `output_dir/run-<trial number>`, and returns the objective: `compute_objective` of the last
evaluation during training (or of one evaluation after it, when training did not evaluate), by default
the eval loss when it is the only metric, else the sum of the metrics.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Union

from ..errors import ConfigError


class BestRun(NamedTuple):
    run_id: str
    objective: Any
    hyperparameters: Dict[str, Any]
    run_summary: Any = None


def default_hp_space(trial: Any) -> Dict[str, Any]:
    """transformers' default optuna space."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-6, 1e-4, log=True),
        "num_train_epochs": trial.suggest_int("num_train_epochs", 1, 5),
        "seed": trial.suggest_int("seed", 1, 40),
        "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [4, 8, 16, 32, 64]),
    }


def default_compute_objective(metrics: Dict[str, float]) -> Optional[float]:
    """The eval loss when it is the only metric; else the sum of the other (non-speed) metrics (None: neither)."""
    metrics = dict(metrics)
    loss = metrics.pop("eval_loss", None)
    metrics.pop("epoch", None)
    speed = ("_runtime", "_per_second", "_compilation_time", "_perplexity", "_bits_per_byte")
    rest = {k: v for k, v in metrics.items() if not k.endswith(speed) and isinstance(v, (int, float))}
    return loss if not rest else sum(rest.values())


def trial_params(trial: Any) -> Dict[str, Any]:
    """The hyperparameters of a trial (an optuna trial or a plain dict)."""
    return dict(trial) if isinstance(trial, dict) else dict(getattr(trial, "params", {}) or {})


def apply_trial(trainer: Any, trial: Any) -> None:
    """Set the trainer's arguments to the trial's values (a copy: the user's args object stays as it is)."""
    trainer._trial = trial
    if trial is None:
        return
    params = (
        trainer._hp_space(trial)
        if getattr(trainer, "_hp_space", None) and not isinstance(trial, dict)
        else trial_params(trial)
    )
    unknown = [k for k in params if not hasattr(trainer.args, k)]
    if unknown:
        raise ConfigError(f"the search space names {unknown}, which are not TrainingArguments fields; rename them.")
    run = f"run-{getattr(trial, 'number', 0)}" if trainer.hp_name is None else trainer.hp_name(trial)
    output_dir = (
        os.path.join(trainer._search_output_dir, run)
        if getattr(trainer, "_search_output_dir", None)
        else trainer.args.output_dir
    )
    # cast to the field's type, as transformers does (an int suggestion for a float field...)
    params = {
        k: type(getattr(trainer.args, k))(v) if getattr(trainer.args, k) is not None else v for k, v in params.items()
    }
    trainer.args = dataclasses.replace(trainer.args, output_dir=output_dir, **params)


def report_to_trial(trainer: Any, metrics: Dict[str, float]) -> None:
    """Intermediate objective for optuna's pruners; a pruned trial stops training."""
    trial = trainer._trial
    if getattr(trainer, "_compute_objective", None) is None:
        return
    trainer.objective = trainer._compute_objective(dict(metrics))  # the trial's result, unless evaluated again
    study = getattr(trial, "study", None)
    if not hasattr(trial, "report") or (study is not None and study._is_multi_objective()):
        return
    trial.report(trainer.objective, trainer.state.global_step)
    if trial.should_prune():
        import optuna

        trainer.control = trainer._fire("on_train_end")
        raise optuna.TrialPruned()


def run_search(
    trainer: Any,
    hp_space: Optional[Callable],
    compute_objective: Optional[Callable],
    n_trials: int,
    direction: Any,
    backend: Any,
    hp_name: Optional[Callable],
    **kwargs: Any,
) -> Union[BestRun, List[BestRun]]:
    backend = getattr(backend, "value", backend) or "optuna"
    if backend != "optuna":
        raise ConfigError(f"hyperparameter_search backend {backend!r} is not supported by lmtrain; use optuna.")
    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("hyperparameter_search needs optuna: pip install optuna")
    if trainer.model_init is None:
        raise ConfigError(
            "hyperparameter_search needs a model_init: pass Trainer(model_init=...) so each "
            "trial starts from a fresh model."
        )
    import optuna

    base_args = trainer.args
    trainer.hp_search_backend, trainer.hp_name = backend, hp_name
    trainer._hp_space = trainer.hp_space = hp_space or default_hp_space  # transformers' attribute names too
    trainer._compute_objective = trainer.compute_objective = compute_objective or default_compute_objective
    trainer._search_output_dir = base_args.output_dir

    def objective(trial: Any) -> Any:
        trainer.args = base_args
        trainer.objective = None
        trainer.train(trial=trial)
        if trainer.objective is None:  # transformers: evaluate only when training did not
            trainer.objective = trainer._compute_objective(trainer.evaluate())
        return trainer.objective

    timeout = kwargs.pop("timeout", None)
    n_jobs = kwargs.pop("n_jobs", 1)
    gc_after_trial = kwargs.pop("gc_after_trial", False)
    catch = kwargs.pop("catch", ())
    directions = direction if isinstance(direction, list) else None
    study = optuna.create_study(direction=None if directions else direction, directions=directions, **kwargs)
    try:
        study.optimize(
            objective, n_trials=n_trials, timeout=timeout, n_jobs=n_jobs, gc_after_trial=gc_after_trial, catch=catch
        )
    finally:
        trainer.args, trainer._trial, trainer._search_output_dir = base_args, None, None
        trainer.hp_search_backend = None
    if directions:
        return [BestRun(str(t.number), t.values, t.params) for t in study.best_trials]
    best = study.best_trial
    return BestRun(str(best.number), best.value, best.params)
