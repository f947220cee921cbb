"""lmtrain: train and fine-tune causal and masked language models on your own text.

A drop-in for transformers' Trainer: `from lmtrain import Trainer, TrainingArguments, ...`.
Names are imported lazily so that `import lmtrain` (and the CLI's --help) stays fast.
"""

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "TrainingArguments": "lmtrain.args",
    "IntervalStrategy": "lmtrain.args",
    "SchedulerType": "lmtrain.args",
    "HfArgumentParser": "lmtrain.parser",
    "Trainer": "lmtrain.training.trainer",
    "TrainOutput": "lmtrain.training.trainer",
    "TrainState": "lmtrain.training.state",
    "TrainerState": "lmtrain.training.state",
    "TrainerCallback": "lmtrain.training.callbacks",
    "TrainerControl": "lmtrain.training.callbacks",
    "EarlyStoppingCallback": "lmtrain.training.callbacks",
    "ProgressCallback": "lmtrain.training.reporting",
    "DefaultFlowCallback": "lmtrain.training.callbacks",
    "PrinterCallback": "lmtrain.training.callbacks",
    "ExportableState": "lmtrain.training.callbacks",
    "CallbackHandler": "lmtrain.training.callbacks",
    "SaveStrategy": "lmtrain.args",
    "OptimizerNames": "lmtrain.args",
    "BestRun": "lmtrain.training.hpsearch",
    "EvalPrediction": "lmtrain.training.evaluate",
    "PredictionOutput": "lmtrain.training.evaluate",
    "set_seed": "lmtrain.training.plan",
    "get_last_checkpoint": "lmtrain.training.checkpoint",
    "default_data_collator": "lmtrain.data.collators",
    "DataCollatorWithPadding": "lmtrain.data.collators",
    "DataCollatorForLanguageModeling": "lmtrain.data.collators",
    "LmtrainError": "lmtrain.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lmtrain' has no attribute {name!r}")


def __dir__() -> list:
    return __all__
