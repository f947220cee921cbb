"""lmtrain's own callbacks: the console (tqdm bar or plain lines), log.jsonl, TensorBoard, W&B, MLflow,
and a sample generation after each evaluation. They use the transformers event names."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, List, Optional

from ..runlog import RunLog
from .callbacks import TrainerCallback

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


class ProgressCallback(TrainerCallback):
    """A tqdm bar (step/total, epoch, loss, lr, tokens/s) on a terminal; plain lines otherwise."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.bar: Optional[tqdm] = None
        self.eval_bar: Optional[tqdm] = None

    def _interactive(self, args) -> bool:
        return not args.disable_tqdm and hasattr(self.stream, "isatty") and self.stream.isatty()

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self._interactive(args):
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="train",
                unit="step",
                file=self.stream,
                dynamic_ncols=True,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        """Evaluation has its own bar, below the training one."""
        if not state.is_world_process_zero or not self._interactive(args):
            return
        if self.eval_bar is None:
            from tqdm.auto import tqdm

            total = len(eval_dataloader) if hasattr(eval_dataloader, "__len__") else None
            self.eval_bar = tqdm(
                total=total,
                desc="eval",
                unit="batch",
                leave=False,
                file=self.stream,
                position=1 if self.bar is not None else 0,
                dynamic_ncols=True,
            )
        self.eval_bar.update(1)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self.on_evaluate(args, state, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        shown = {k: v for k, v in logs.items() if k not in ("step",) and not k.endswith("_runtime")}
        if self.bar is not None and "loss" in logs:
            self.bar.set_postfix(
                {k: _fmt(v) for k, v in shown.items() if k in ("loss", "learning_rate", "tokens_per_second", "epoch")}
            )
        else:
            line = " ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
            where = f"step {state.global_step}/{state.max_steps} " if state.max_steps else ""
            self._write(where + line)

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class JsonlLoggerCallback(TrainerCallback):
    """Appends every logged record, as one JSON object a line, to output_dir/log.jsonl (lmtrain.runlog writes it)."""

    def __init__(self) -> None:
        self.runlog: Optional[RunLog] = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if self.runlog is None or self.runlog.output_dir != os.fspath(args.output_dir):  # e.g. a new search trial
            self.runlog = RunLog(args.output_dir)
        self.runlog.log(state.global_step, state.epoch, logs)


class TensorBoardCallback(TrainerCallback):
    """Writes scalar logs to args.logging_dir through torch's SummaryWriter."""

    def __init__(self) -> None:
        self.writer: Optional[SummaryWriter] = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=args.logging_dir)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.writer is None or not logs:
            return
        for key, value in logs.items():
            if isinstance(value, (int, float)):
                tag = key.replace("eval_", "eval/", 1) if key.startswith("eval_") else f"train/{key}"
                self.writer.add_scalar(tag, value, state.global_step)
        self.writer.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def generate_sample(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 40, seed: int = 42) -> str:
    """A short sampled continuation of `prompt` (top-k 50), leaving the model's mode and the global RNG as they were."""
    import torch

    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # sampling must not move the training RNG
        torch.manual_seed(seed)
        out = model.generate(
            **ids,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            top_k=50,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    model.train(was_training)
    return tokenizer.decode(out[0], skip_special_tokens=True)


class SampleCallback(TrainerCallback):
    """Prints a short generation from `prompt` after each evaluation, to watch a causal LM learn."""

    def __init__(self, tokenizer: Any, prompt: str, max_new_tokens: int = 40) -> None:
        self.tokenizer, self.prompt, self.max_new_tokens = tokenizer, prompt, max_new_tokens
        self.last_step: Optional[int] = None
        """The step of the last sample printed (None before the first)."""

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if model is None or not state.is_world_process_zero:
            return
        self.show(model, state.global_step, args.seed)

    def show(self, model: Any, step: int, seed: int = 42) -> None:
        text = generate_sample(model, self.tokenizer, self.prompt, self.max_new_tokens, seed)
        print(f"sample at step {step}: {text!r}", flush=True)
        self.last_step = step


class WandbCallback(TrainerCallback):
    """Logs every record to Weights & Biases (project from WANDB_PROJECT, default lmtrain)."""

    def __init__(self) -> None:
        import wandb

        self.wandb = wandb
        self.run = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.run is None:
            self.run = self.wandb.init(
                project=os.environ.get("WANDB_PROJECT", "lmtrain"),
                name=args.run_name or os.path.basename(os.path.abspath(args.output_dir)),
                config=args.to_dict(),
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.run is not None and logs:
            self.run.log({k: v for k, v in logs.items() if isinstance(v, (int, float))}, step=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.run is not None:
            self.run.finish()
            self.run = None


class MLflowCallback(TrainerCallback):
    """Logs the arguments as parameters and every record as metrics to MLflow."""

    def __init__(self) -> None:
        import mlflow

        self.mlflow = mlflow
        self.active = False

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and not self.active:
            self.mlflow.start_run(run_name=args.run_name or os.path.basename(os.path.abspath(args.output_dir)))
            self.mlflow.log_params({k: str(v)[:250] for k, v in args.to_dict().items()})
            self.active = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.active and logs:
            self.mlflow.log_metrics(
                {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}, step=state.global_step
            )

    def on_train_end(self, args, state, control, **kwargs):
        if self.active:
            self.mlflow.end_run()
            self.active = False


_INTEGRATIONS = {
    "tensorboard": (TensorBoardCallback, "tensorboard"),
    "wandb": (WandbCallback, "wandb"),
    "mlflow": (MLflowCallback, "mlflow"),
}


def reporting_callbacks(report_to: List[str]) -> List[TrainerCallback]:
    """Callbacks for `report_to`; an integration whose package is missing is skipped with one warning."""
    import importlib.util

    wanted = set(report_to)
    if "all" in wanted:  # transformers: every integration that is installed
        wanted = {name for name, (_, pkg) in _INTEGRATIONS.items() if importlib.util.find_spec(pkg)}
    out: List[TrainerCallback] = []
    for name in sorted(wanted - {"jsonl"}):
        cls, package = _INTEGRATIONS[name]
        if importlib.util.find_spec(package) is None:
            print(
                f"warning: report_to={name} but the {package} package is not installed; skipping it "
                f"(pip install {package}).",
                file=sys.stderr,
            )
            continue
        out.append(cls())
    return out


class LogLastStepCallback(TrainerCallback):
    """Logs the last step of a run whatever logging_steps says (the CLI adds it: a run's final loss is
    always in log.jsonl; transformers' own flow logs only on its interval)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps and args.logging_strategy != "no":
            control.should_log = True
        return control
