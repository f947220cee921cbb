"""The report page: HTML with the figures embedded as data: URIs, and `build_report` / `lmtrain report`."""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import LmtrainError
from ..recipe_args import CLI_TRAINING_DEFAULTS
from .figures import CAPTIONS, FIGURES, Plotter
from .runs import Run, load_run, num, run_labels

# always different from the defaults, or derived from output_dir: not worth a row among the changes
_IDENTITY_ARGS = ("output_dir", "logging_dir", "run_name")

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

_METRIC_ORDER = (
    "train_loss",
    "eval_loss",
    "eval_perplexity",
    "eval_bits_per_byte",
    "best_eval_loss",
    "best_eval_loss_step",
    "global_step",
    "epoch",
    "num_input_tokens_seen",
    "train_runtime",
    "train_tokens_per_second",
    "train_samples_per_second",
    "train_steps_per_second",
    "total_flos",
)


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
    cols = "".join(
        f'<th><span class="swatch" style="background:{colors.get(r.label, "#888")}"></span>{html.escape(r.label)}</th>'
        for r in runs
    )
    return f"<tr><th>{html.escape(first)}</th>{cols}</tr>"


def _table(
    runs: Sequence[Run],
    first: str,
    rows: List[Tuple[str, List[Any]]],
    colors: Dict[str, str],
    mark_differences: bool = False,
) -> str:
    body = []
    for name, values in rows:
        differ = (
            mark_differences and len(runs) > 1 and len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1
        )
        body.append(
            f"<tr{' class=differ' if differ else ''}><th>{html.escape(name)}</th>"
            + "".join(_cell(v) for v in values)
            + "</tr>"
        )
    return f"<table>{_header(runs, first, colors)}{''.join(body)}</table>"


def _metrics(run: Run) -> Dict[str, Any]:
    out = dict(run.results)
    losses = [(r["step"], loss) for r in run.evals if (loss := num(r.get("eval_loss"))) is not None]
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
        from ..args import TrainingArguments
    except Exception:  # noqa: BLE001 - a report must not need the trainer to import
        return {}
    try:
        return TrainingArguments(output_dir=output_dir, **CLI_TRAINING_DEFAULTS).to_dict()
    except Exception:  # noqa: BLE001
        try:
            return TrainingArguments(output_dir=output_dir).to_dict()
        except Exception:  # noqa: BLE001
            return {}


def _same(a: Any, b: Any) -> bool:
    if (
        isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return float(a) == float(b)
    return a == b


def _changed_args(run: Run) -> Dict[str, Any]:
    defaults = _default_args(str(run.args.get("output_dir") or run.path))
    return {
        k: v
        for k, v in run.args.items()
        if k not in _IDENTITY_ARGS and (k not in defaults or not _same(v, defaults[k]))
    }


def render_html(
    runs: Sequence[Run], pngs: Dict[str, bytes], colors: Optional[Dict[str, str]] = None, title: Optional[str] = None
) -> str:
    """The report page: figures as data: URIs, run facts, final metrics and arguments."""
    colors = colors or {}
    labels = [r.label for r in runs]
    title = title or ("Training report: " + (labels[0] if len(labels) == 1 else " vs ".join(labels)))
    generated = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    from .. import __version__

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
    rows: List[Tuple[str, List[Any]]] = [
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
            parts.append(
                f'<figure id="fig-{name}"><img alt="{html.escape(CAPTIONS[name])}" '
                f'src="data:image/png;base64,{data}"><figcaption>{html.escape(CAPTIONS[name])} '
                f"(<code>{name}.png</code>)</figcaption></figure>"
            )
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
            parts.append(
                _table(
                    runs, "argument", [(k, [r.args.get(k) for r in runs]) for k in keys], colors, mark_differences=True
                )
            )
        else:
            parts.append('<p class="muted">All arguments are at their defaults.</p>')
        all_keys = sorted({k for r in runs for k in r.args})
        parts.append(
            f"<details><summary>All {len(all_keys)} arguments</summary>"
            + _table(
                runs, "argument", [(k, [r.args.get(k) for r in runs]) for k in all_keys], colors, mark_differences=True
            )
            + "</details>"
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ---- entry points ----------------------------------------------------------------------------------


def build_report(
    run_dirs: Sequence["str | os.PathLike[str]"],
    out_dir: "str | os.PathLike[str] | None" = None,
    title: Optional[str] = None,
) -> Path:
    """Write report.html and the PNG figures for one or more runs; return the path of report.html."""
    if not run_dirs:
        raise LmtrainError("no run directory given; pass one or more --output_dir folders of `lmtrain train` runs.")
    paths = [Path(p) for p in run_dirs]
    runs = [load_run(p, label) for p, label in zip(paths, run_labels(paths))]
    plotter = Plotter(runs)  # after reading the runs: a bad run directory is reported before matplotlib
    out = Path(out_dir) if out_dir is not None else (paths[0] / "report" if len(paths) == 1 else Path("report"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LmtrainError(
            f"cannot create the report folder {out} ({e.strerror or e}); pick another with --out."
        ) from None
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
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="where to write report.html and the PNGs (default: RUN_DIR/report for one run, ./report for several)",
    )
    parser.add_argument("--title", default=None, help="page title (default: the run names)")
    ns = parser.parse_args(list(argv))
    page = build_report(ns.runs, ns.out, ns.title)
    print(f"wrote {page} and {', '.join(f'{n}.png' for n in FIGURES)}")
    return 0
