"""lmtrain.report.page: `build_report` / `lmtrain report` write the figures and a self-contained HTML page.

The Chromium test renders the page in headless Chromium and checks the screenshot; it is marked
`chromium` and skipped where no `chromium`/`chromium-browser` binary is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from lmtrain.errors import LmtrainError
from lmtrain.report import FIGURES, build_report, cmd_report, load_run, render_html
from tests.report.helpers import (
    TOKENS_PER_STEP,
    external_refs,
    make_run,
    png_size,
    summary_record,
    train_record,
)


def test_importing_the_report_imports_neither_torch_nor_matplotlib():
    code = (
        "import sys, lmtrain.report, lmtrain.runlog; "
        "print(sorted(m for m in ('torch', 'transformers', 'matplotlib', 'lmtrain.cli') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["no_dir", "no_log", "empty_log", "blank_lines", "no_curves"])
def test_unusable_run_is_one_clear_error(tmp_path, case):
    run = tmp_path / "run"
    if case != "no_dir":
        run.mkdir()
    if case == "empty_log":
        (run / "log.jsonl").write_text("", encoding="utf-8")
    elif case == "blank_lines":
        (run / "log.jsonl").write_text("\n\n", encoding="utf-8")
    elif case == "no_curves":
        (run / "log.jsonl").write_text(json.dumps(summary_record(10)) + "\n", encoding="utf-8")
    with pytest.raises(LmtrainError) as info:
        cmd_report([str(run), "--out", str(tmp_path / "out")])
    message = str(info.value)
    assert "\n" not in message and str(run) in message
    assert {
        "no_dir": "no such run directory",
        "no_log": "has no log.jsonl",
        "empty_log": "is empty",
        "blank_lines": "is empty",
        "no_curves": "no training or evaluation records",
    }[case] in message
    assert not (tmp_path / "out").exists()


# ---- the report ----------------------------------------------------------------------------------


def test_single_run_writes_figures_and_a_self_contained_page(tmp_path, capsys):
    run = make_run(tmp_path, "run1", lr=3e-3)
    assert cmd_report([str(run)]) == 0
    out = run / "report"
    assert "report.html" in capsys.readouterr().out
    for name in FIGURES:
        width, height = png_size(out / f"{name}.png")
        assert width >= 400 and height >= 300
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(FIGURES)
    assert external_refs(page) == []
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    # final metrics and arguments: the changed ones first, all of them folded
    assert "Final metrics" in page and "eval_perplexity" in page and "best_eval_loss" in page
    changed, folded = page.split("<details>", 1)
    changed = changed.split("<h2>Arguments</h2>", 1)[1]
    assert "learning_rate" in changed and "max_steps" in changed
    assert "adam_beta1" not in changed and "output_dir" not in changed  # at its default / the run itself
    assert "adam_beta1" in folded and "</details>" in folded


def test_two_runs_are_overlaid_and_labelled(tmp_path, monkeypatch):
    a = make_run(tmp_path, "lr_high", lr=1e-2)
    b = make_run(tmp_path, "lr_low", lr=1e-3, mfu=False, evals=False)
    monkeypatch.chdir(tmp_path)
    assert cmd_report([str(a), str(b)]) == 0
    out = tmp_path / "report"  # several runs: ./report
    for name in FIGURES:
        png_size(out / f"{name}.png")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "lr_high" in page and "lr_low" in page
    assert "Training report: lr_high vs lr_low" in page
    assert re.search(r"<tr class=differ><th>learning_rate</th>", page)  # differs between the runs
    assert not re.search(r"<tr class=differ><th>max_steps</th>", page)
    assert "no evaluation records" in page and "no MFU logged" in page
    assert external_refs(page) == []


def test_same_directory_names_get_distinct_labels(tmp_path):
    a = make_run(tmp_path / "sweep1", "run")
    b = make_run(tmp_path / "sweep2", "run")
    page = build_report([a, b], tmp_path / "out").read_text(encoding="utf-8")
    assert "sweep1/run" in page and "sweep2/run" in page


def test_resumed_run_report(tmp_path):
    records = (
        [train_record(s, loss=9.0) for s in (5, 10, 15, 20, 25)]
        + [train_record(s, loss=1.0) for s in (25, 30, 35, 40)]
        + [summary_record(40)]
    )
    run = make_run(tmp_path, "resumed", records=records, evals=False)
    loaded = load_run(run)
    assert [r["step"] for r in loaded.train] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert loaded.train[4]["loss"] == 1.0
    page = build_report([run]).read_text(encoding="utf-8")
    assert "resumed: 1 earlier record" in page


def test_final_metrics_add_the_best_evaluation_and_the_run_state(tmp_path):
    records = [train_record(s) for s in (10, 20, 30)] + [
        {"step": step, "epoch": step / 100, "time": 1.7e9 + step, "eval_loss": loss}
        for step, loss in ((10, 3.0), (20, 2.0), (30, 2.5))
    ]
    run = load_run(make_run(tmp_path, "r", records=records, steps=30))
    page = render_html([run], {})
    metrics = page.split("<h2>Final metrics</h2>", 1)[1].split("<h2>", 1)[0]
    rows = dict(re.findall(r"<tr><th>([a-z_]+)</th><td[^>]*>([^<]*)</td></tr>", metrics))
    assert rows["best_eval_loss"] == "2" and rows["best_eval_loss_step"] == "20"  # the lowest, not the last
    assert rows["global_step"] == "30" and rows["num_input_tokens_seen"] == f"{30 * TOKENS_PER_STEP:,}"
    assert rows["eval_loss"] == "5.3" and rows["train_loss"] == "5.4"  # all_results.json
    order = [name for name in rows if name in ("train_loss", "eval_loss", "best_eval_loss", "global_step")]
    assert order == ["train_loss", "eval_loss", "best_eval_loss", "global_step"]


def test_run_without_eval_mfu_or_finished_files(tmp_path):
    records = [train_record(s, mfu=False) for s in range(1, 11)]
    records[3]["loss"] = None  # a non-finite loss is logged as null
    run = tmp_path / "bare"
    run.mkdir()
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    page = build_report([run], tmp_path / "out").read_text(encoding="utf-8")
    for name in FIGURES:
        png_size(tmp_path / "out" / f"{name}.png")
    assert "No training_args.json found" in page
    assert "tokens per step unknown" in page


# ---- the page in a browser -----------------------------------------------------------------------


def _chromium() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.chromium
def test_page_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium or chromium-browser binary (Debian: apt-get install -y chromium)")
    a = make_run(tmp_path, "run_a", lr=1e-2)
    b = make_run(tmp_path, "run_b", lr=1e-3)
    page = build_report([a, b], tmp_path / "report")
    shot = tmp_path / "shot.png"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,1600",
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), f"chromium wrote no screenshot (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
    assert png_size(shot) == (1200, 1600)

    from matplotlib.image import imread

    pixels = imread(str(shot))[..., :3]  # floats in [0, 1]
    flat = pixels.reshape(-1, 3)
    assert (flat != flat[0]).any(axis=1).mean() > 0.05, "the screenshot is (nearly) one colour"
    # the figures were decoded from their data: URIs: matplotlib's first two line colours are on screen
    for hex_colour in ("#1f77b4", "#ff7f0e"):
        rgb = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        near = (abs(flat - rgb) < 0.06).all(axis=1).sum()
        assert near > 200, f"hardly any {hex_colour} pixels: the figures did not render"
