"""`lmtrain report RUN_DIR [RUN_DIR ...]`: plots and a self-contained HTML page of training runs.

One run directory (the ``--output_dir`` of ``lmtrain train``) gives its curves; several are overlaid,
one colour per run, labelled by the directory name. What is written to ``--out`` (default
``RUN_DIR/report/`` for one run, ``./report/`` for several):

* ``loss.png``: training loss (solid) and evaluation loss (dashed, dots) against optimizer steps;
* ``loss_tokens.png``: the same against input tokens seen;
* ``lr.png``, ``grad_norm.png``, ``throughput.png`` (tokens/s and MFU);
* ``report.html``: those figures embedded as ``data:`` URIs (no external CSS, JS, fonts or images,
  so the file can be mailed or archived alone), the final metrics, and the run's arguments: those
  that differ from the defaults of ``lmtrain train`` first, then all of them in a ``<details>``.

Where the numbers come from
---------------------------
``RUN/log.jsonl`` holds one JSON object per logged record. A resumed run appends to the same file,
so steps can repeat; the later record wins (:func:`resolve_records` has the exact rule). Final
metrics come from ``all_results.json`` (else ``train_results.json`` + ``eval_results.json``, else
the log's last summary and evaluation records); arguments from ``training_args.json``; both fall
back to the newest ``checkpoint-*`` of a run still in progress.

Tokens seen at step *s* are ``s * tokens_per_step``. ``tokens_per_step`` is
``num_input_tokens_seen / global_step`` from ``trainer_state.json`` (exact for fixed-length blocks,
the average step otherwise; it counts every process and micro-batch), else
``per_device_train_batch_size * gradient_accumulation_steps * world_size * block_size`` when
``training_args.json`` records a block size. Integrating the logged ``tokens_per_second`` over
wall-clock time is not used: the records' times include evaluation and checkpointing pauses.

matplotlib (Agg, no display needed) is an optional dependency: ``pip install 'lmtrain[report]'``.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import LmtrainError

INSTALL_HINT = "pip install 'lmtrain[report]'"
FIGURES = ("loss", "loss_tokens", "lr", "grad_norm", "throughput")
_CAPTIONS = {
    "loss": "Training and evaluation loss against optimizer steps",
    "loss_tokens": "Training and evaluation loss against input tokens seen",
    "lr": "Learning rate",
    "grad_norm": "Gradient norm (before clipping)",
    "throughput": "Training throughput: tokens per second and model FLOPs utilisation",
}
# always different from the defaults, or derived from output_dir: not worth a row among the changes
_IDENTITY_ARGS = ("output_dir", "logging_dir", "run_name")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_EVAL_LOSS_RE = re.compile(r"^eval(?:_(.+))?_loss$")


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
        if self.train and not any(_num(r.get("mfu")) is not None for r in self.train):
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


# ---- reading a run ---------------------------------------------------------------------------------


def _num(value: Any) -> Optional[float]:
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


def _kind(record: Dict[str, Any]) -> Optional[str]:
    if "train_runtime" in record or "train_loss" in record:
        return "summary"
    if any(k.startswith("eval_") for k in record):
        return "eval"
    if "loss" in record or "learning_rate" in record or "grad_norm" in record:
        return "train"
    return None


def read_log(path: Path) -> Tuple[List[Dict[str, Any]], int]:
    """The JSON objects of a log.jsonl file in order, and how many lines were not JSON objects."""
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
        kind = _kind(record)
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


def _checkpoints(run: Path) -> List[Path]:
    found = []
    for child in run.iterdir() if run.is_dir() else []:
        m = _CHECKPOINT_RE.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found, reverse=True)]


def _first_json(run: Path, name: str) -> Dict[str, Any]:
    """run/name, else the newest checkpoint's copy (a run still in progress)."""
    for folder in [run] + _checkpoints(run):
        value = _read_json(folder / name)
        if value:
            return value
    return {}


def _latest_state(run: Path) -> Dict[str, Any]:
    """The trainer_state.json with the most steps: the run's own, or a newer checkpoint's (resumed, in progress)."""
    best: Dict[str, Any] = {}
    for folder in [run] + _checkpoints(run):
        state = _read_json(folder / "trainer_state.json")
        if state and (not best or (_num(state.get("global_step")) or 0) > (_num(best.get("global_step")) or 0)):
            best = state
    return best


def _tokens_per_step(state: Dict[str, Any], args: Dict[str, Any]) -> Tuple[Optional[float], str]:
    seen, steps = _num(state.get("num_input_tokens_seen")), _num(state.get("global_step"))
    if seen and steps:
        return seen / steps, "num_input_tokens_seen / global_step (trainer_state.json)"
    block = _num(args.get("block_size"))
    batch = _num(args.get("per_device_train_batch_size"))
    if block and batch:
        world = _num(args.get("world_size")) or 1
        accum = _num(args.get("gradient_accumulation_steps")) or 1
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
    log = run / "log.jsonl"
    if not log.is_file():
        raise LmtrainError(f"{run} has no log.jsonl; pass the --output_dir of an `lmtrain train` run "
                           f"(it writes log.jsonl from its first logging step).")
    try:
        records, bad = read_log(log)
    except OSError as e:
        raise LmtrainError(f"cannot read {log} ({e.strerror or e}); check its permissions.") from None
    train, evals, summary, superseded = resolve_records(records)
    if not train and not evals:
        what = "is empty" if not records and not bad else "holds no training or evaluation records"
        raise LmtrainError(f"{log} {what}; report on a run that has logged at least once (every logging_steps).")
    state = _latest_state(run)
    args = _first_json(run, "training_args.json")
    tps, source = _tokens_per_step(state, args)
    return Run(path=run, label=label or run.resolve().name or str(run), train=train, evals=evals, summary=summary,
               state=state, args=args, results=_final_results(run, train, evals, summary), tokens_per_step=tps,
               tokens_source=source, superseded=superseded, bad_lines=bad)


def _labels(paths: Sequence[Path]) -> List[str]:
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


# ---- figures ---------------------------------------------------------------------------------------


def _matplotlib() -> Tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise LmtrainError(f"lmtrain report needs matplotlib: {INSTALL_HINT}") from None
    return Figure, FigureCanvasAgg


def _series(records: List[dict], key: str, x: str, run: Run, scale: float = 1.0) -> Tuple[List[float], List[float]]:
    xs, ys = [], []
    for r in records:
        y = _num(r.get(key))
        if y is None:
            continue
        xs.append(run.tokens_at(r["step"]) if x == "tokens" else r["step"])
        ys.append(y * scale)
    return xs, ys


def _eval_loss_keys(runs: Sequence[Run]) -> List[str]:
    keys = {k for run in runs for r in run.evals for k in r if _EVAL_LOSS_RE.match(k)}
    return sorted(keys, key=lambda k: (k != "eval_loss", k))


class _Plotter:
    """Draws the report's figures with matplotlib's Agg canvas (no pyplot, no global state)."""

    def __init__(self, runs: Sequence[Run]) -> None:
        self.Figure, self.Canvas = _matplotlib()
        from matplotlib import rcParams
        from matplotlib.colors import to_hex

        self.runs = runs
        cycle = [to_hex(c) for c in rcParams["axes.prop_cycle"].by_key().get("color", [])] or ["#1f77b4"]
        self.colors = {run.label: cycle[i % len(cycle)] for i, run in enumerate(runs)}

    def _figure(self, rows: int = 1) -> Tuple[Any, List[Any]]:
        fig = self.Figure(figsize=(8, 4.5 if rows == 1 else 6.0), dpi=100, layout="constrained")
        self.Canvas(fig)
        axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
        for ax in axes:
            ax.grid(True, alpha=0.3)
        return fig, list(axes)

    @staticmethod
    def _png(fig: Any) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    @staticmethod
    def _empty(ax: Any, text: str) -> None:
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")

    def _legend(self, ax: Any) -> None:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")

    def loss(self, x: str) -> bytes:
        fig, (ax,) = self._figure()
        eval_keys = _eval_loss_keys(self.runs)
        markers = "os^vDp*"
        drawn = 0
        for run in self.runs:
            if x == "tokens" and not run.tokens_per_step:
                continue
            color = self.colors[run.label]
            xs, ys = _series(run.train, "loss", x, run)
            if xs:
                ax.plot(xs, ys, color=color, linewidth=1.5, label=f"{run.label} train")
                drawn += 1
            for i, key in enumerate(eval_keys):
                xs, ys = _series(run.evals, key, x, run)
                if xs:
                    name = _EVAL_LOSS_RE.match(key).group(1)
                    ax.plot(xs, ys, color=color, linestyle="--", marker=markers[i % len(markers)], markersize=4,
                            label=f"{run.label} eval" + (f" ({name})" if name else ""))
                    drawn += 1
        if not drawn:
            self._empty(ax, "tokens per step unknown for every run" if x == "tokens" else "no loss logged")
        ax.set_xlabel("input tokens seen" if x == "tokens" else "step")
        ax.set_ylabel("loss")
        ax.set_title("Loss against tokens seen" if x == "tokens" else "Loss")
        self._legend(ax)
        return self._png(fig)

    def simple(self, key: str, title: str, ylabel: str, log_when_wide: bool = False) -> bytes:
        fig, (ax,) = self._figure()
        values = []
        for run in self.runs:
            xs, ys = _series(run.train, key, "step", run)
            if xs:
                ax.plot(xs, ys, color=self.colors[run.label], linewidth=1.5, label=run.label)
                values += ys
        if not values:
            self._empty(ax, f"no {key} logged")
        elif log_when_wide and min(values) > 0 and max(values) / min(values) > 30:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        self._legend(ax)
        return self._png(fig)

    def throughput(self) -> bytes:
        fig, (top, bottom) = self._figure(rows=2)
        for ax, key, scale, name in ((top, "tokens_per_second", 1.0, "tokens/s"), (bottom, "mfu", 100.0, "MFU")):
            drawn = False
            for run in self.runs:
                xs, ys = _series(run.train, key, "step", run, scale)
                if xs:
                    ax.plot(xs, ys, color=self.colors[run.label], linewidth=1.5, label=run.label)
                    drawn = True
            if not drawn:
                self._empty(ax, f"no {name} logged")
            ax.set_ylabel("MFU (%)" if key == "mfu" else "tokens / s")
            self._legend(ax)
        top.set_title("Throughput")
        bottom.set_xlabel("step")
        return self._png(fig)

    def all(self) -> Dict[str, bytes]:
        return {
            "loss": self.loss("step"),
            "loss_tokens": self.loss("tokens"),
            "lr": self.simple("learning_rate", "Learning rate", "learning rate"),
            "grad_norm": self.simple("grad_norm", "Gradient norm", "grad norm", log_when_wide=True),
            "throughput": self.throughput(),
        }


# ---- HTML ------------------------------------------------------------------------------------------

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1400px;
       padding: 0 16px; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
.figs { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 16px; }
figure { margin: 0; border: 1px solid #e3e3e3; border-radius: 6px; padding: 8px; background: #fafafa; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 0.85em; color: #555; margin-top: 4px; }
table { border-collapse: collapse; font-size: 0.9em; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.differ td { background: #fff6d6; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px; vertical-align: -1px; }
details { margin-top: 8px; } summary { cursor: pointer; color: #235; }
code { font-size: 0.95em; } .muted { color: #888; }
"""

_METRIC_ORDER = ("train_loss", "eval_loss", "eval_perplexity", "eval_bits_per_byte", "best_eval_loss",
                 "best_eval_loss_step", "global_step", "epoch", "num_input_tokens_seen", "train_runtime", "train_tokens_per_second",
                 "train_samples_per_second", "train_steps_per_second", "total_flos")


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        if abs(value) >= 1e15:
            return f"{value:.4e}"
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _cell(value: Any) -> str:
    cls = ' class="num"' if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
    return f"<td{cls}>{html.escape(_fmt(value))}</td>"


def _header(runs: Sequence[Run], first: str, colors: Dict[str, str]) -> str:
    cols = "".join(f'<th><span class="swatch" style="background:{colors.get(r.label, "#888")}"></span>'
                   f"{html.escape(r.label)}</th>" for r in runs)
    return f"<tr><th>{html.escape(first)}</th>{cols}</tr>"


def _table(runs: Sequence[Run], first: str, rows: List[Tuple[str, List[Any]]], colors: Dict[str, str],
           mark_differences: bool = False) -> str:
    body = []
    for name, values in rows:
        differ = mark_differences and len(runs) > 1 and len({json.dumps(v, sort_keys=True, default=str)
                                                             for v in values}) > 1
        body.append(f'<tr{" class=differ" if differ else ""}><th>{html.escape(name)}</th>'
                    + "".join(_cell(v) for v in values) + "</tr>")
    return f"<table>{_header(runs, first, colors)}{''.join(body)}</table>"


def _metrics(run: Run) -> Dict[str, Any]:
    out = dict(run.results)
    losses = [(r["step"], _num(r.get("eval_loss"))) for r in run.evals if _num(r.get("eval_loss")) is not None]
    if losses:
        step, best = min(losses, key=lambda t: t[1])
        out["best_eval_loss"] = best
        out["best_eval_loss_step"] = step
    if run.state.get("global_step") is not None:
        out["global_step"] = run.state["global_step"]
    elif run.train or run.evals:
        out["global_step"] = run.last_step
    if run.state.get("num_input_tokens_seen"):
        out["num_input_tokens_seen"] = run.state["num_input_tokens_seen"]
    return out


def _ordered(keys: Iterable[str], order: Sequence[str]) -> List[str]:
    keys = set(keys)
    head = [k for k in order if k in keys]
    return head + sorted(keys - set(head))


def _default_args(output_dir: str) -> Dict[str, Any]:
    """The arguments `lmtrain train` uses when given only --output_dir (library defaults if unknown)."""
    try:
        from .args import TrainingArguments
    except Exception:  # noqa: BLE001 - a report must not need the trainer to import
        return {}
    try:
        from .cli import CLI_TRAINING_DEFAULTS
    except Exception:  # noqa: BLE001
        CLI_TRAINING_DEFAULTS = {}
    try:
        return TrainingArguments(output_dir=output_dir, **CLI_TRAINING_DEFAULTS).to_dict()
    except Exception:  # noqa: BLE001
        try:
            return TrainingArguments(output_dir=output_dir).to_dict()
        except Exception:  # noqa: BLE001
            return {}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def _changed_args(run: Run) -> Dict[str, Any]:
    defaults = _default_args(str(run.args.get("output_dir") or run.path))
    return {k: v for k, v in run.args.items()
            if k not in _IDENTITY_ARGS and (k not in defaults or not _same(v, defaults[k]))}


def render_html(runs: Sequence[Run], pngs: Dict[str, bytes], colors: Optional[Dict[str, str]] = None,
                title: Optional[str] = None) -> str:
    """The report page: figures as data: URIs, run facts, final metrics and arguments."""
    colors = colors or {}
    labels = [r.label for r in runs]
    title = title or ("Training report: " + (labels[0] if len(labels) == 1 else " vs ".join(labels)))
    generated = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    from . import __version__

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">{len(runs)} run{"s" if len(runs) != 1 else ""} · generated {generated} by lmtrain '
        f"{html.escape(__version__)}</p>",
    ]

    # runs
    rows = [
        ("directory", [str(r.path.resolve()) for r in runs]),
        ("last step", [r.last_step for r in runs]),
        ("training records", [len(r.train) for r in runs]),
        ("evaluation records", [len(r.evals) for r in runs]),
        ("tokens per step", [r.tokens_per_step for r in runs]),
        ("tokens per step from", [r.tokens_source for r in runs]),
        ("notes", ["; ".join(r.notes()) or "—" for r in runs]),
    ]
    parts += ["<h2>Runs</h2>", _table(runs, "run", rows, colors)]

    # figures
    parts.append('<h2>Curves</h2><div class="figs">')
    for name in FIGURES:
        if name in pngs:
            data = base64.b64encode(pngs[name]).decode("ascii")
            parts.append(f'<figure id="fig-{name}"><img alt="{html.escape(_CAPTIONS[name])}" '
                         f'src="data:image/png;base64,{data}"><figcaption>{html.escape(_CAPTIONS[name])} '
                         f"(<code>{name}.png</code>)</figcaption></figure>")
    parts.append("</div>")

    # final metrics
    metrics = [_metrics(r) for r in runs]
    keys = _ordered({k for m in metrics for k in m}, _METRIC_ORDER)
    parts.append("<h2>Final metrics</h2>")
    if keys:
        parts.append(_table(runs, "metric", [(k, [m.get(k) for m in metrics]) for k in keys], colors))
    else:
        parts.append('<p class="muted">No final metrics: the run has not finished.</p>')

    # arguments
    parts.append("<h2>Arguments</h2>")
    if not any(r.args for r in runs):
        parts.append('<p class="muted">No training_args.json found.</p>')
    else:
        changed = [_changed_args(r) for r in runs]
        keys = sorted({k for c in changed for k in c})
        note = "Arguments that differ from the defaults of <code>lmtrain train</code>"
        if len(runs) > 1:
            note += "; highlighted rows differ between runs"
        parts.append(f"<p>{note}.</p>")
        if keys:
            parts.append(_table(runs, "argument", [(k, [r.args.get(k) for r in runs]) for k in keys], colors,
                                mark_differences=True))
        else:
            parts.append('<p class="muted">All arguments are at their defaults.</p>')
        all_keys = sorted({k for r in runs for k in r.args})
        parts.append(f"<details><summary>All {len(all_keys)} arguments</summary>"
                     + _table(runs, "argument", [(k, [r.args.get(k) for r in runs]) for k in all_keys], colors,
                              mark_differences=True)
                     + "</details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ---- entry points ----------------------------------------------------------------------------------


def build_report(run_dirs: Sequence["str | os.PathLike[str]"], out_dir: "str | os.PathLike[str] | None" = None,
                 title: Optional[str] = None) -> Path:
    """Write report.html and the PNG figures for one or more runs; return the path of report.html."""
    if not run_dirs:
        raise LmtrainError("no run directory given; pass one or more --output_dir folders of `lmtrain train` runs.")
    paths = [Path(p) for p in run_dirs]
    runs = [load_run(p, label) for p, label in zip(paths, _labels(paths))]
    plotter = _Plotter(runs)  # after reading the runs: a bad run directory is reported before matplotlib
    out = Path(out_dir) if out_dir is not None else (paths[0] / "report" if len(paths) == 1 else Path("report"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LmtrainError(f"cannot create the report folder {out} ({e.strerror or e}); pick another with --out.") \
            from None
    pngs = plotter.all()
    for name, data in pngs.items():
        (out / f"{name}.png").write_bytes(data)
    page = out / "report.html"
    page.write_text(render_html(runs, pngs, plotter.colors, title), encoding="utf-8")
    return page


def cmd_report(argv: Sequence[str]) -> int:
    """`lmtrain report RUN_DIR [RUN_DIR ...] [--out DIR]`."""
    parser = argparse.ArgumentParser(
        prog="lmtrain report",
        description="Plot training runs (loss against steps and tokens, learning rate, grad norm, throughput, MFU) "
                    "into PNG files and one self-contained HTML page with the final metrics and arguments. "
                    "Several runs are overlaid for comparison.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output_dir of an `lmtrain train` run")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where to write report.html and the PNGs (default: RUN_DIR/report for one run, "
                             "./report for several)")
    parser.add_argument("--title", default=None, help="page title (default: the run names)")
    ns = parser.parse_args(list(argv))
    page = build_report(ns.runs, ns.out, ns.title)
    print(f"wrote {page} and {', '.join(f'{n}.png' for n in FIGURES)}")
    return 0


if __name__ == "__main__":  # python -m lmtrain.report RUN_DIR ...
    try:
        raise SystemExit(cmd_report(sys.argv[1:]))
    except LmtrainError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
