"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot, no display, no global state).

matplotlib is imported when a figure is drawn, not when this module is imported.
"""

from __future__ import annotations

import io
import re
from typing import Any, Dict, List, Sequence, Tuple

from ..errors import LmtrainError
from .runs import Run, num

INSTALL_HINT = "pip install matplotlib"
FIGURES = ("loss", "loss_tokens", "lr", "grad_norm", "throughput")
CAPTIONS = {
    "loss": "Training and evaluation loss against optimizer steps",
    "loss_tokens": "Training and evaluation loss against input tokens seen",
    "lr": "Learning rate",
    "grad_norm": "Gradient norm (before clipping)",
    "throughput": "Training throughput: tokens per second and model FLOPs utilisation",
}
_EVAL_LOSS_RE = re.compile(r"^eval(?:_(.+))?_loss$")


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
        y = num(r.get(key))
        if y is None:
            continue
        xs.append(run.tokens_at(r["step"]) if x == "tokens" else r["step"])
        ys.append(y * scale)
    return xs, ys


def _eval_loss_keys(runs: Sequence[Run]) -> List[str]:
    keys = {k for run in runs for r in run.evals for k in r if _EVAL_LOSS_RE.match(k)}
    return sorted(keys, key=lambda k: (k != "eval_loss", k))


class Plotter:
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
                    match = _EVAL_LOSS_RE.match(key)
                    assert match is not None  # _eval_loss_keys keeps only the keys it matches
                    name = match.group(1)
                    ax.plot(
                        xs,
                        ys,
                        color=color,
                        linestyle="--",
                        marker=markers[i % len(markers)],
                        markersize=4,
                        label=f"{run.label} eval" + (f" ({name})" if name else ""),
                    )
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
