"""lmtrain.report.figures: the report's figures, drawn with matplotlib's Agg canvas.

The figures are checked through what they plot (the lines on the axes of each matplotlib Figure the
Plotter creates) and through the PNG they are saved as. matplotlib is a dependency of lmtrain (the
README's install gives it; the `report` extra adds nothing more), so these tests need no skip.
"""

from __future__ import annotations

import re
import sys

import pytest

from lmtrain.errors import LmtrainError
from lmtrain.report import FIGURES, INSTALL_HINT, Plotter, build_report, load_run
from tests.report.helpers import TOKENS_PER_STEP, make_run, png_bytes_size, train_record


def recorded(plotter: Plotter) -> list:
    """The matplotlib Figures `plotter` creates from now on, in order."""
    figures = []
    make = plotter.Figure

    def figure(*args, **kwargs):
        figures.append(make(*args, **kwargs))
        return figures[-1]

    plotter.Figure = figure
    return figures


def lines_by_label(fig, axes: int = 0) -> dict:
    return {line.get_label(): line for line in fig.axes[axes].get_lines()}


def test_missing_matplotlib_is_one_line_naming_the_install(tmp_path, monkeypatch):
    run = make_run(tmp_path, "r")
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import of a None entry raises ImportError
    with pytest.raises(LmtrainError, match=re.escape(INSTALL_HINT)) as info:
        build_report([run])
    assert "\n" not in str(info.value)


def test_every_figure_is_a_png_of_its_figure_size(tmp_path):
    pngs = Plotter([load_run(make_run(tmp_path, "r"))]).all()
    assert tuple(pngs) == FIGURES
    for name, data in pngs.items():
        # 8 x 4.5 inches at 100 dpi; the throughput figure stacks two axes in 8 x 6 inches
        assert png_bytes_size(data, name) == ((800, 600) if name == "throughput" else (800, 450)), name


def test_each_run_gets_the_next_colour_of_matplotlibs_cycle(tmp_path):
    runs = [load_run(make_run(tmp_path, name)) for name in ("a", "b", "c")]
    assert Plotter(runs).colors == {"a": "#1f77b4", "b": "#ff7f0e", "c": "#2ca02c"}


def test_loss_against_steps_and_tokens(tmp_path):
    records = [train_record(s, loss=float(s)) for s in (5, 10, 15, 20)]
    records[1]["loss"] = None  # a non-finite loss is logged as null: no point
    records.append({"step": 20, "epoch": 0.2, "time": 1.7e9 + 21, "eval_loss": 2.5, "eval_other_loss": 3.5})
    a = load_run(make_run(tmp_path, "a", records=records))  # trainer_state.json: TOKENS_PER_STEP
    b = load_run(make_run(tmp_path, "b", records=records[:1], state=False))  # tokens per step unknown
    plotter = Plotter([a, b])
    figures = recorded(plotter)

    plotter.loss("step")
    lines = lines_by_label(figures[0])
    assert set(lines) == {"a train", "a eval", "a eval (other)", "b train"}
    assert list(lines["a train"].get_xdata()) == [5, 15, 20] and list(lines["a train"].get_ydata()) == [5.0, 15.0, 20.0]
    assert list(lines["a eval"].get_ydata()) == [2.5] and list(lines["a eval (other)"].get_ydata()) == [3.5]
    assert lines["a eval"].get_linestyle() == "--" and lines["a train"].get_linestyle() == "-"
    assert lines["a train"].get_color() == lines["a eval"].get_color() == plotter.colors["a"]
    assert lines["b train"].get_color() == plotter.colors["b"]

    plotter.loss("tokens")
    lines = lines_by_label(figures[1])
    assert set(lines) == {"a train", "a eval", "a eval (other)"}  # b: no token count, left out
    assert list(lines["a train"].get_xdata()) == [s * TOKENS_PER_STEP for s in (5, 15, 20)]
    assert list(lines["a eval"].get_xdata()) == [20 * TOKENS_PER_STEP]
    assert figures[1].axes[0].get_xlabel() == "input tokens seen"


def test_grad_norm_goes_logarithmic_only_when_its_range_is_wide(tmp_path):
    narrow = [{**train_record(s), "grad_norm": g} for s, g in ((5, 1.0), (10, 2.0), (15, 29.0))]
    wide = [{**train_record(s), "grad_norm": g} for s, g in ((5, 1.0), (10, 2.0), (15, 31.0))]
    scales = []
    for records in (narrow, wide):
        plotter = Plotter([load_run(make_run(tmp_path, f"r{len(scales)}", records=records))])
        figures = recorded(plotter)
        plotter.simple("grad_norm", "Gradient norm", "grad norm", log_when_wide=True)
        assert list(lines_by_label(figures[0])[f"r{len(scales)}"].get_ydata()) == [r["grad_norm"] for r in records]
        scales.append(figures[0].axes[0].get_yscale())
    assert scales == ["linear", "log"]  # max/min 29 vs 31: the threshold is 30


def test_throughput_plots_tokens_per_second_and_mfu_in_percent(tmp_path):
    records = [train_record(s) for s in (5, 10)]
    run = load_run(make_run(tmp_path, "r", records=records))
    plotter = Plotter([run])
    figures = recorded(plotter)
    plotter.throughput()
    top, bottom = lines_by_label(figures[0], 0)["r"], lines_by_label(figures[0], 1)["r"]
    assert list(top.get_ydata()) == [r["tokens_per_second"] for r in records]
    assert list(bottom.get_ydata()) == pytest.approx([100 * r["mfu"] for r in records])
    assert figures[0].axes[1].get_ylabel() == "MFU (%)"
