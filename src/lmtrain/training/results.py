"""What a run leaves in output_dir besides checkpoints: the model (as `save_model` writes it), the
arguments, and the result files transformers' example scripts write (*_results.json,
all_results.json, a model card)."""

from __future__ import annotations

import json
import os
import pickle
from typing import Any, Dict, List, Optional

import torch

from .weights import save_model_files


def format_metrics(split: str, metrics: Dict[str, Any]) -> str:
    width = max((len(k) for k in metrics), default=0)
    lines = [f"***** {split} metrics *****"]
    for key in sorted(metrics):
        value = metrics[key]
        lines.append(f"  {key:<{width}} = {value:.4g}" if isinstance(value, float) else f"  {key:<{width}} = {value}")
    return "\n".join(lines)


def save_metrics(output_dir: str, split: str, metrics: Dict[str, Any], combined: bool = True) -> None:
    """Write {split}_results.json and merge the metrics into all_results.json."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, f"{split}_results.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    if combined:
        path = os.path.join(output_dir, "all_results.json")
        merged: Dict[str, Any] = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                merged = json.load(f)
        merged.update(metrics)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(merged, f, indent=2, sort_keys=True)


def write_model_card(
    output_dir: str, log_history: List[Dict[str, Any]], global_step: int, epoch: float, **kwargs: Any
) -> None:
    """A short README.md: what was trained, on what, and the last evaluation."""
    evals = [r for r in log_history if any(k.startswith("eval_loss") for k in r)]
    title = kwargs.get("model_name") or os.path.basename(os.path.abspath(output_dir))
    lines = [f"# {title}", "", f"Trained with lmtrain for {global_step} steps ({epoch:.2f} epochs).", ""]
    for key in ("finetuned_from", "dataset", "dataset_name", "tasks"):
        if kwargs.get(key):
            lines.append(f"- {key}: {kwargs[key]}")
    if evals:
        lines += ["", "Last evaluation:", ""] + [f"- {k}: {v}" for k, v in evals[-1].items()]
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


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


def save_model_dir(
    model: torch.nn.Module, out: str, tokenizer: Any, args: Any, state_dict: Optional[Dict[str, Any]] = None
) -> None:
    """Weights, config, tokenizer and arguments, so that `from_pretrained(out)` loads the model."""
    os.makedirs(out, exist_ok=True)
    save_model_files(model, out, safe_serialization=args.save_safetensors, state_dict=state_dict)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(out)
    save_args(args, out)
