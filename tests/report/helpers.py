"""Synthetic run directories for the report tests, in the format `lmtrain train` writes them.

log.jsonl, trainer_state.json, training_args.json and all_results.json are written here, so the tests
train nothing and take seconds.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOKENS_PER_STEP = 4 * 64  # batch 4 x block 64


def train_record(
    step: int, *, lr: float = 1e-3, mfu: bool = True, loss: Optional[float] = None, t0: float = 1.7e9
) -> Dict[str, Any]:
    record = {
        "step": step,
        "epoch": round(step / 100, 4),
        "time": t0 + step,
        "loss": 6.0 - 0.02 * step - 20 * lr if loss is None else loss,
        "grad_norm": 1.0 / (1 + 0.05 * step),
        "tokens_per_second": 2000.0 + step,
        "learning_rate": lr * (1 - step / 100),
    }
    if mfu:
        record["mfu"] = 0.1 + step / 1000
    return record


def eval_record(step: int, loss: Optional[float] = None) -> Dict[str, Any]:
    loss = 6.1 - 0.02 * step if loss is None else loss
    return {
        "step": step,
        "epoch": round(step / 100, 4),
        "time": 1.7e9 + step + 0.5,
        "eval_loss": loss,
        "eval_perplexity": 2.718**loss,
        "eval_bits_per_byte": loss / 2,
        "eval_runtime": 0.25,
    }


def summary_record(step: int) -> Dict[str, Any]:
    return {
        "step": step,
        "epoch": step / 100,
        "time": 1.7e9 + step + 1,
        "train_runtime": 12.5,
        "train_loss": 5.4,
        "train_tokens_per_second": 2040.0,
        "total_flos": 1.0e9,
    }


def training_args(output_dir: Path, **changes: Any) -> Dict[str, Any]:
    from lmtrain.args import TrainingArguments
    from lmtrain.recipe_args import CLI_TRAINING_DEFAULTS

    values = {**CLI_TRAINING_DEFAULTS, "per_device_train_batch_size": 4, **changes}
    return TrainingArguments(output_dir=str(output_dir), **values).to_dict()


def make_run(
    root: Path,
    name: str,
    records: Optional[Iterable[Dict[str, Any]]] = None,
    *,
    lr: float = 1e-3,
    mfu: bool = True,
    evals: bool = True,
    steps: int = 40,
    state: bool = True,
    args: Optional[Dict[str, Any]] = None,
) -> Path:
    """A finished run directory as `lmtrain train` leaves it (log every 5 steps, eval every 20)."""
    run = root / name
    run.mkdir(parents=True)
    if records is None:
        records = []
        for step in range(5, steps + 1, 5):
            records.append(train_record(step, lr=lr, mfu=mfu))
            if evals and step % 20 == 0:
                records.append(eval_record(step))
        records.append(summary_record(steps))
        if evals:
            records.append(eval_record(steps))  # the final evaluation repeats the last step's
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    if state:
        (run / "trainer_state.json").write_text(
            json.dumps(
                {
                    "global_step": steps,
                    "max_steps": steps,
                    "num_input_tokens_seen": steps * TOKENS_PER_STEP,
                    "epoch": steps / 100,
                    "log_history": list(records),
                }
            ),
            encoding="utf-8",
        )
    (run / "training_args.json").write_text(
        json.dumps(
            args
            if args is not None
            else training_args(
                run,
                learning_rate=lr,
                max_steps=steps,
                logging_steps=5,
                eval_strategy="steps" if evals else "no",
                eval_steps=20,
            )
        ),
        encoding="utf-8",
    )
    (run / "all_results.json").write_text(
        json.dumps(
            {
                "train_loss": 5.4,
                "train_runtime": 12.5,
                **({"eval_loss": 5.3, "eval_perplexity": 200.3} if evals else {}),
            }
        ),
        encoding="utf-8",
    )
    return run


def png_size(path: Path) -> tuple:
    return png_bytes_size(path.read_bytes(), str(path))


def png_bytes_size(data: bytes, name: str = "the data") -> tuple:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == PNG_SIGNATURE, f"{name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def external_refs(page: str) -> List[str]:
    """src/href/url() values that would fetch something from outside the file."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.I)
    refs += re.findall(r"""url\(\s*["']?([^"')]+)""", page, flags=re.I)
    return [r for r in refs if not r.startswith(("data:", "#"))]
