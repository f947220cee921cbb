"""``log.jsonl``: every record a run logs, one JSON object a line, appended to ``output_dir/log.jsonl``.

This module owns the format: the trainer writes it through :class:`RunLog` (the JSONL logger callback in
``training/reporting.py``), and the report, the benchmarks and the tests read it with :func:`read_log`
and :func:`resolve_records`.

A record is ``{"step": global_step, "epoch": epoch (4 decimals), "time": unix seconds (ms), **logs}``;
a non-finite float (NaN, inf) is written as ``null``. A resumed run appends to the same file, so steps
can repeat (:func:`resolve_records` has the rule). A process killed mid-write leaves half a line; the
next process that writes ends it with a newline before its first record (it "seals" it), so the cut
line stands alone and :func:`read_log` skips it and counts it as bad.

Reading needs nothing but the standard library (the report imports this without torch).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

LOG_NAME = "log.jsonl"

PathLike = Union[str, "os.PathLike[str]"]


def log_path(output_dir: PathLike) -> str:
    """Where a run in `output_dir` keeps its log."""
    return os.path.join(os.fspath(output_dir), LOG_NAME)


# ---- writing ---------------------------------------------------------------------------------------


def make_record(step: int, epoch: float, logs: Mapping[str, Any], now: Optional[float] = None) -> Dict[str, Any]:
    """The line written for `logs` at `step`: step, epoch, time first; non-finite floats as None."""
    record = {"step": step, "epoch": round(epoch, 4), "time": round(time.time() if now is None else now, 3), **logs}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


class RunLog:
    """Appends records to ``output_dir/log.jsonl``.

    The first append of this object seals the file: a killed run may have left half a line at its end,
    which gets a newline so that it stands alone (and is skipped by :func:`read_log`). Only the main
    process should write.
    """

    def __init__(self, output_dir: PathLike) -> None:
        self.output_dir = os.fspath(output_dir)
        self.path = log_path(self.output_dir)
        self.sealed = False

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record (a JSON object) as one line; creates output_dir if needed."""
        os.makedirs(self.output_dir, exist_ok=True)
        with open(self.path, "a+b") as f:
            if not self.sealed:  # a killed run may have left half a line: end it, so it stands alone
                self.sealed = True
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
            f.write((json.dumps(dict(record)) + "\n").encode("utf-8"))

    def log(self, step: int, epoch: float, logs: Mapping[str, Any]) -> Dict[str, Any]:
        """Append the record for `logs` at `step` (see :func:`make_record`) and return it."""
        record = make_record(step, epoch, logs)
        self.append(record)
        return record


# ---- reading ---------------------------------------------------------------------------------------


def read_log(path: PathLike) -> Tuple[List[Dict[str, Any]], int]:
    """The JSON objects of a log.jsonl file in order, and how many lines were not JSON objects.

    A record needs a numeric ``step``; other lines (a line cut by a kill, stray text) count as bad.
    Blank lines are neither. Raises OSError when the file cannot be read.
    """
    records, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
                records.append(record)
            else:
                bad += 1
    return records, bad


def record_kind(record: Mapping[str, Any]) -> Optional[str]:
    """'summary' (end of training), 'eval', 'train', or None for a record of none of these."""
    if "train_runtime" in record or "train_loss" in record:
        return "summary"
    if any(k.startswith("eval_") for k in record):
        return "eval"
    if "loss" in record or "learning_rate" in record or "grad_norm" in record:
        return "train"
    return None


def resolve_records(records: Iterable[Dict[str, Any]]) -> Tuple[List[dict], List[dict], Optional[dict], int]:
    """Split log records into (train, eval, summary, superseded) with one record per step and kind.

    A resumed run appends to log.jsonl from its checkpoint's step on, so steps can repeat. A training
    record whose step is not past the last training step seen starts the resumed part: every earlier
    record (of any kind) at that step or later is dropped, as that attempt never reached its
    checkpoint; those count as superseded. Otherwise a later record of the same kind for the same step
    replaces the earlier one (e.g. the final evaluation after training repeats the last step's). The
    summary is the last one.
    """
    train: Dict[int, dict] = {}
    evals: Dict[int, dict] = {}
    summary: Optional[dict] = None
    superseded = 0
    for record in records:
        kind = record_kind(record)
        if kind is None:
            continue
        step = int(record["step"])
        if kind == "summary":
            summary = record
            continue
        if kind == "train" and train and step <= max(train):
            for table in (train, evals):
                for s in [s for s in table if s >= step]:
                    del table[s]
                    superseded += 1
        table = train if kind == "train" else evals
        table.pop(step, None)  # keep the dict in log order too
        table[step] = record
    return ([train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)], summary, superseded)


def read_run_log(output_dir: PathLike) -> List[Dict[str, Any]]:
    """The records of the run in `output_dir` ([] before its first one); cut lines are skipped."""
    path = Path(log_path(output_dir))
    return read_log(path)[0] if path.exists() else []
