"""Reading a run directory for the report: its log (through lmtrain.runlog), state, arguments and results.

Final metrics come from ``all_results.json`` (else ``train_results.json`` + ``eval_results.json``, else
the log's last summary and evaluation records); arguments from ``training_args.json``; both fall back to
the newest complete checkpoint (``lmtrain.training.checkpoint.list_checkpoints``) of a run still in
progress. Tokens seen per step: see the package docstring.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import LmtrainError
from ..runlog import LOG_NAME, read_log, resolve_records


@dataclass
class Run:
    """What a report shows of one run directory."""

    path: Path
    label: str
    train: List[Dict[str, Any]]
    """Training records, one per step, sorted by step."""
    evals: List[Dict[str, Any]]
    """Evaluation records, one per step, sorted by step."""
    summary: Optional[Dict[str, Any]]
    """The last end-of-training record (train_runtime, train_loss, ...), if any."""
    state: Dict[str, Any] = field(default_factory=dict)
    args: Dict[str, Any] = field(default_factory=dict)
    results: Dict[str, Any] = field(default_factory=dict)
    tokens_per_step: Optional[float] = None
    tokens_source: str = "unknown"
    superseded: int = 0
    """Records dropped because a resumed run logged those steps again."""
    bad_lines: int = 0
    """Lines of log.jsonl that are not JSON objects (a line cut short by a crash)."""

    @property
    def last_step(self) -> int:
        steps = [r["step"] for r in self.train + self.evals]
        return max(steps) if steps else int(self.state.get("global_step") or 0)

    def tokens_at(self, step: float) -> float:
        return step * self.tokens_per_step if self.tokens_per_step else math.nan

    def notes(self) -> List[str]:
        out = []
        if not self.train:
            out.append("no training records")
        if not self.evals:
            out.append("no evaluation records")
        if self.train and not any(num(r.get("mfu")) is not None for r in self.train):
            out.append("no MFU logged")
        skipped = max((int(r.get("skipped_steps") or 0) for r in self.train), default=0)
        if skipped:
            out.append(f"{skipped} step(s) skipped (non-finite loss or gradients)")
        if self.superseded:
            out.append(f"resumed: {self.superseded} earlier record(s) replaced by the resumed run's")
        if self.bad_lines:
            out.append(f"{self.bad_lines} unreadable line(s) in log.jsonl ignored")
        if not self.tokens_per_step:
            out.append("tokens per step unknown: not in the tokens plot")
        return out


def num(value: Any) -> Optional[float]:
    """A finite float, or None (the log writes non-finite values as null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _checkpoints(run: Path) -> List[Path]:
    """The run's complete checkpoints, newest first (the checkpoint module decides what is complete)."""
    if not run.is_dir() or not any(child.name.startswith("checkpoint-") for child in run.iterdir()):
        return []  # the checkpoint module imports torch: only when there is something to list
    from ..training.checkpoint import list_checkpoints

    return [Path(p) for p in reversed(list_checkpoints(str(run)))]


def _first_json(folders: Sequence[Path], name: str) -> Dict[str, Any]:
    """folder/name of the first folder that has it (the run, then its newest checkpoint: a run in progress)."""
    for folder in folders:
        value = _read_json(folder / name)
        if value:
            return value
    return {}


def _latest_state(folders: Sequence[Path]) -> Dict[str, Any]:
    """The trainer_state.json with the most steps: the run's own, or a newer checkpoint's (resumed, in progress)."""
    best: Dict[str, Any] = {}
    for folder in folders:
        state = _read_json(folder / "trainer_state.json")
        if state and (not best or (num(state.get("global_step")) or 0) > (num(best.get("global_step")) or 0)):
            best = state
    return best


def _tokens_per_step(state: Dict[str, Any], args: Dict[str, Any]) -> Tuple[Optional[float], str]:
    seen, steps = num(state.get("num_input_tokens_seen")), num(state.get("global_step"))
    if seen and steps:
        return seen / steps, "num_input_tokens_seen / global_step (trainer_state.json)"
    block = num(args.get("block_size"))
    batch = num(args.get("per_device_train_batch_size"))
    if block and batch:
        world = num(args.get("world_size")) or 1
        accum = num(args.get("gradient_accumulation_steps")) or 1
        return batch * accum * world * block, "batch size x accumulation x world size x block size (training_args.json)"
    return None, "unknown"


def _final_results(run: Path, train: List[dict], evals: List[dict], summary: Optional[dict]) -> Dict[str, Any]:
    results = _read_json(run / "all_results.json")
    if not results:
        results = {**_read_json(run / "train_results.json"), **_read_json(run / "eval_results.json")}
    if not results:
        if summary:
            results.update({k: v for k, v in summary.items() if k not in ("step", "time")})
        if evals:
            results.update({k: v for k, v in evals[-1].items() if k.startswith("eval_")})
        if not results and train:
            results = {k: v for k, v in train[-1].items() if k not in ("step", "time")}
    return results


def load_run(path: "str | os.PathLike[str]", label: Optional[str] = None) -> Run:
    """Read a run directory; a missing, empty or unreadable log.jsonl raises LmtrainError."""
    run = Path(path)
    if not run.is_dir():
        raise LmtrainError(f"{path}: no such run directory; pass the --output_dir of an `lmtrain train` run.")
    log = run / LOG_NAME
    if not log.is_file():
        raise LmtrainError(
            f"{run} has no log.jsonl; pass the --output_dir of an `lmtrain train` run "
            f"(it writes log.jsonl from its first logging step)."
        )
    try:
        records, bad = read_log(log)
    except OSError as e:
        raise LmtrainError(f"cannot read {log} ({e.strerror or e}); check its permissions.") from None
    train, evals, summary, superseded = resolve_records(records)
    if not train and not evals:
        what = "is empty" if not records and not bad else "holds no training or evaluation records"
        raise LmtrainError(f"{log} {what}; report on a run that has logged at least once (every logging_steps).")
    folders = [run] + _checkpoints(run)
    state = _latest_state(folders)
    args = _first_json(folders, "training_args.json")
    tps, source = _tokens_per_step(state, args)
    return Run(
        path=run,
        label=label or run.resolve().name or str(run),
        train=train,
        evals=evals,
        summary=summary,
        state=state,
        args=args,
        results=_final_results(run, train, evals, summary),
        tokens_per_step=tps,
        tokens_source=source,
        superseded=superseded,
        bad_lines=bad,
    )


def run_labels(paths: Sequence[Path]) -> List[str]:
    """Directory names; parent/name where two runs share a name, then a #n suffix if still equal."""
    resolved = [p.resolve() for p in paths]
    names = [p.name or str(p) for p in resolved]
    labels = [f"{p.parent.name}/{p.name}" if names.count(names[i]) > 1 else names[i] for i, p in enumerate(resolved)]
    seen: Dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label}#{seen[label]}")
    return out
