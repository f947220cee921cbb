"""lmtrain.training.hpsearch: the pieces of Trainer.hyperparameter_search, without training.

The search itself (trials that train) is compared with transformers in tests/compat/test_trainer_api.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lmtrain import TrainingArguments
from lmtrain.errors import ConfigError
from lmtrain.training.hpsearch import apply_trial, default_compute_objective, default_hp_space, report_to_trial

optuna = pytest.importorskip("optuna")
trainer_utils = pytest.importorskip("transformers.trainer_utils")

PARAMS = {"learning_rate": 1e-5, "num_train_epochs": 3, "seed": 7, "per_device_train_batch_size": 16}


@pytest.mark.parametrize(
    "metrics",
    [
        {"eval_loss": 2.5},
        {"eval_loss": 2.5, "epoch": 1.0, "eval_runtime": 3.0, "eval_samples_per_second": 40.0},
        {"eval_loss": 2.5, "eval_accuracy": 0.75, "eval_f1": 0.5, "eval_steps_per_second": 9.0},
        {"eval_accuracy": 0.75},
    ],
)
def test_default_objective_is_transformers(metrics):
    assert default_compute_objective(dict(metrics)) == trainer_utils.default_compute_objective(dict(metrics))


def test_default_objective_leaves_out_what_lmtrain_derives_from_the_loss():
    metrics = {"eval_loss": 2.5, "eval_perplexity": 12.18, "eval_bits_per_byte": 1.2, "eval_model_compilation_time": 4}
    assert default_compute_objective(metrics) == 2.5
    assert metrics["eval_perplexity"] == 12.18  # the caller's dict is left as it was


def test_default_space_is_transformers():
    trial = optuna.trial.FixedTrial(PARAMS)
    assert default_hp_space(trial) == trainer_utils.default_hp_space_optuna(optuna.trial.FixedTrial(PARAMS)) == PARAMS


def searching_trainer(tmp_path, **kw):
    args = TrainingArguments(output_dir=str(tmp_path / "search"), learning_rate=1e-3, num_train_epochs=1.0)
    base = dict(args=args, hp_name=None, _search_output_dir=str(tmp_path / "search"), _hp_space=default_hp_space)
    return SimpleNamespace(**{**base, **kw})


def test_apply_trial_gives_the_trainer_a_copy_of_its_arguments_with_the_trials_values(tmp_path):
    trainer = searching_trainer(tmp_path)
    original = trainer.args
    trial = optuna.trial.FixedTrial(PARAMS, number=4)
    apply_trial(trainer, trial)
    args = trainer.args
    assert trainer._trial is trial and args is not original
    assert args.output_dir == str(tmp_path / "search" / "run-4")
    assert (args.learning_rate, args.seed, args.per_device_train_batch_size) == (1e-5, 7, 16)
    assert args.num_train_epochs == 3.0 and isinstance(args.num_train_epochs, float)  # cast to the field's type
    assert (original.learning_rate, original.output_dir) == (1e-3, str(tmp_path / "search"))


def test_apply_trial_with_a_dict_a_name_function_or_no_trial(tmp_path):
    trainer = searching_trainer(tmp_path, hp_name=lambda trial: f"lr-{trial['learning_rate']}")
    apply_trial(trainer, {"learning_rate": 0.5})
    assert trainer.args.learning_rate == 0.5 and trainer.args.output_dir == str(tmp_path / "search" / "lr-0.5")
    before = trainer.args
    apply_trial(trainer, None)
    assert trainer._trial is None and trainer.args is before
    with pytest.raises(ConfigError, match=r"\['learning_rat'\], which are not TrainingArguments fields"):
        apply_trial(trainer, {"learning_rat": 0.5})


class Trial:
    """What report_to_trial uses of an optuna trial."""

    def __init__(self, prune: bool, multi: bool = False):
        self.reported, self.prune = [], prune
        self.study = SimpleNamespace(_is_multi_objective=lambda: multi)

    def report(self, value, step):
        self.reported.append((value, step))

    def should_prune(self):
        return self.prune


def reporting_trainer(trial):
    fired = []
    trainer = SimpleNamespace(
        _trial=trial,
        _compute_objective=lambda metrics: metrics["eval_loss"] * 2,
        state=SimpleNamespace(global_step=6),
        _fire=lambda event: fired.append(event) or "control after " + event,
        control=None,
        objective=None,
    )
    return trainer, fired


def test_report_to_trial_reports_the_objective_and_prunes():
    trial = Trial(prune=False)
    trainer, fired = reporting_trainer(trial)
    report_to_trial(trainer, {"eval_loss": 1.5})
    assert trainer.objective == 3.0 and trial.reported == [(3.0, 6)] and fired == []

    trial = Trial(prune=True)
    trainer, fired = reporting_trainer(trial)
    with pytest.raises(optuna.TrialPruned):
        report_to_trial(trainer, {"eval_loss": 1.5})
    assert fired == ["on_train_end"] and trainer.control == "control after on_train_end"


def test_report_to_trial_skips_multi_objective_studies_and_plain_training():
    trial = Trial(prune=True, multi=True)  # optuna cannot prune multi-objective studies
    trainer, fired = reporting_trainer(trial)
    report_to_trial(trainer, {"eval_loss": 1.5})
    assert trainer.objective == 3.0 and trial.reported == [] and fired == []
    trainer, _ = reporting_trainer(Trial(prune=True))
    trainer._compute_objective = None  # not searching
    report_to_trial(trainer, {"eval_loss": 1.5})
    assert trainer.objective is None and trainer._trial.reported == []
