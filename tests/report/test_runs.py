"""lmtrain.report.runs: reading a run directory (log, state, arguments, results) for the report."""

from __future__ import annotations

import json

from lmtrain.report import load_run
from lmtrain.report.runs import run_labels
from tests.report.helpers import TOKENS_PER_STEP, eval_record, make_run, summary_record, train_record, training_args


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


def test_final_metrics_fall_back_to_the_split_files_then_to_the_log(tmp_path):
    run = make_run(tmp_path, "r")
    assert load_run(run).results == {
        "train_loss": 5.4,
        "train_runtime": 12.5,
        "eval_loss": 5.3,
        "eval_perplexity": 200.3,
    }

    (run / "all_results.json").unlink()  # written by transformers' example scripts, not by every run
    (run / "train_results.json").write_text(json.dumps({"train_loss": 4.0}), encoding="utf-8")
    (run / "eval_results.json").write_text(json.dumps({"eval_loss": 3.0}), encoding="utf-8")
    assert load_run(run).results == {"train_loss": 4.0, "eval_loss": 3.0}

    (run / "train_results.json").unlink()
    (run / "eval_results.json").unlink()
    results = load_run(run).results  # the last summary record and the last evaluation, from log.jsonl
    summary, last_eval = summary_record(40), eval_record(40)
    assert results == {
        **{k: v for k, v in summary.items() if k not in ("step", "time")},
        **{k: v for k, v in last_eval.items() if k.startswith("eval_")},
    }


def test_notes_name_what_the_run_lacks(tmp_path):
    records = [train_record(5, mfu=False), {**train_record(10, mfu=False), "skipped_steps": 2}]
    loaded = load_run(make_run(tmp_path, "r", records=records, state=False))
    assert loaded.notes() == [
        "no evaluation records",
        "no MFU logged",
        "2 step(s) skipped (non-finite loss or gradients)",
        "tokens per step unknown: not in the tokens plot",
    ]
    assert load_run(make_run(tmp_path, "full")).notes() == []


def test_run_labels_are_directory_names_made_distinct(tmp_path):
    a, b, c = tmp_path / "sweep1" / "run", tmp_path / "sweep2" / "run", tmp_path / "other"
    assert run_labels([a, c]) == ["run", "other"]
    assert run_labels([a, b, c]) == ["sweep1/run", "sweep2/run", "other"]
    assert run_labels([a, a]) == ["sweep1/run#1", "sweep1/run#2"]  # the same directory twice
