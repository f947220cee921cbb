"""`lmtrain report`: figures and a self-contained HTML page from run directories.

The run directories are synthetic (log.jsonl, trainer_state.json, training_args.json written here, in
the format `lmtrain train` writes them), so these tests train nothing and take seconds. The figures
need matplotlib (the `report` extra); the tests that draw are skipped without it. The Chromium test
renders the page in headless Chromium and checks the screenshot; it is marked `chromium` and skipped
where no `chromium`/`chromium-browser` binary is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import pytest

from lmtrain.errors import LmtrainError
from lmtrain.report import FIGURES, INSTALL_HINT, build_report, cmd_report, load_run
from lmtrain.runlog import resolve_records

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOKENS_PER_STEP = 4 * 64  # batch 4 x block 64


# ---- synthetic runs ------------------------------------------------------------------------------


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


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def png_size(path: Path) -> tuple:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def external_refs(page: str) -> List[str]:
    """src/href/url() values that would fetch something from outside the file."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.I)
    refs += re.findall(r"""url\(\s*["']?([^"')]+)""", page, flags=re.I)
    return [r for r in refs if not r.startswith(("data:", "#"))]


# ---- reading the log -----------------------------------------------------------------------------


def test_resolve_records_later_record_wins_on_resume():
    # logged 5..30 and evaluated at 20; killed after 30 (checkpoint at 20); resumed from 20 with
    # other numbers; then the final evaluation repeats step 40's.
    first = (
        [train_record(s, loss=9.0) for s in (5, 10, 15, 20)]
        + [eval_record(20, loss=9.5)]
        + [train_record(s, loss=9.0) for s in (25, 30)]
    )
    resumed = [train_record(s, loss=1.0) for s in (25, 30, 35, 40)] + [
        eval_record(40, loss=1.5),
        summary_record(40),
        eval_record(40, loss=1.4),
    ]
    train, evals, summary, superseded = resolve_records(first + resumed)
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert [r["loss"] for r in train] == [9.0] * 4 + [1.0] * 4
    assert [(r["step"], r["eval_loss"]) for r in evals] == [(20, 9.5), (40, 1.4)]
    assert summary["train_runtime"] == 12.5
    assert superseded == 2


def test_resolve_records_resume_drops_the_lost_attempt_past_the_restart():
    # the first attempt logged and evaluated past the step the resumed run starts logging from
    first = [train_record(s, loss=9.0) for s in (5, 10, 15)] + [eval_record(15, loss=9.9)]
    resumed = [train_record(s, loss=1.0) for s in (10, 15, 20)]
    train, evals, _, superseded = resolve_records(first + resumed)
    assert [(r["step"], r["loss"]) for r in train] == [(5, 9.0), (10, 1.0), (15, 1.0), (20, 1.0)]
    assert evals == []
    assert superseded == 3


def test_load_run_reads_tokens_per_step_and_skips_a_cut_line(tmp_path):
    run = make_run(tmp_path, "r")
    with open(run / "log.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 45, "loss": 1.')  # killed mid-write
    loaded = load_run(run)
    assert loaded.label == "r"
    assert loaded.tokens_per_step == TOKENS_PER_STEP
    assert loaded.bad_lines == 1
    assert loaded.last_step == 40
    assert loaded.tokens_at(20) == 20 * TOKENS_PER_STEP


def test_tokens_per_step_from_arguments_and_unknown(tmp_path):
    args = training_args(tmp_path / "a", gradient_accumulation_steps=2)
    run = make_run(tmp_path, "a", state=False, args={**args, "block_size": 32})
    loaded = load_run(run)
    assert loaded.tokens_per_step == 4 * 2 * 32
    assert "training_args.json" in loaded.tokens_source
    unknown = load_run(make_run(tmp_path, "b", state=False))
    assert unknown.tokens_per_step is None
    assert any("tokens per step unknown" in n for n in unknown.notes())


def test_newest_checkpoint_state_is_used_for_a_run_in_progress(tmp_path):
    run = make_run(tmp_path, "r", state=False)
    for step in (20, 40):
        (run / f"checkpoint-{step}").mkdir()
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"global_step": step, "num_input_tokens_seen": step * 128}), encoding="utf-8"
        )
        (run / f"checkpoint-{step}" / "COMPLETE").write_text("")  # written whole, as lmtrain writes them
    assert load_run(run).tokens_per_step == 128


def test_a_checkpoint_without_its_complete_marker_is_not_read(tmp_path):
    """The report lists checkpoints as the trainer does (training.checkpoint.list_checkpoints)."""
    run = make_run(tmp_path, "r", state=False)
    for step, tokens, complete in ((20, 128, True), (40, 999, False)):
        folder = run / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(
            json.dumps({"global_step": step, "num_input_tokens_seen": step * tokens}), encoding="utf-8"
        )
        if complete:
            (folder / "COMPLETE").write_text("")
    assert load_run(run).tokens_per_step == 128


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
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
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


def test_cli_prints_one_error_line_and_exits_2(tmp_path, capsys):
    from lmtrain import cli

    if "report" not in cli.COMMANDS:
        pytest.skip("`lmtrain report` is not registered in lmtrain.cli yet")
    (tmp_path / "run").mkdir()
    assert cli.main(["report", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "log.jsonl" in err[0]


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    run = make_run(tmp_path, "r")
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import of a None entry raises ImportError
    with pytest.raises(LmtrainError, match=re.escape(INSTALL_HINT)) as info:
        build_report([run])
    assert "\n" not in str(info.value)


# ---- the report ----------------------------------------------------------------------------------


def test_single_run_writes_figures_and_a_self_contained_page(tmp_path, mpl, capsys):
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


def test_two_runs_are_overlaid_and_labelled(tmp_path, mpl, monkeypatch):
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


def test_same_directory_names_get_distinct_labels(tmp_path, mpl):
    a = make_run(tmp_path / "sweep1", "run")
    b = make_run(tmp_path / "sweep2", "run")
    page = build_report([a, b], tmp_path / "out").read_text(encoding="utf-8")
    assert "sweep1/run" in page and "sweep2/run" in page


def test_resumed_run_report(tmp_path, mpl):
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


def test_run_without_eval_mfu_or_finished_files(tmp_path, mpl):
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
def test_page_renders_in_headless_chromium(tmp_path, mpl):
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
