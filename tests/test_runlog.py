"""lmtrain.runlog: log.jsonl written by one writer and read back by one reader (report, bench, tests)."""

from __future__ import annotations

import json
import math

from lmtrain.runlog import LOG_NAME, RunLog, make_record, read_log, read_run_log, record_kind, resolve_records
from tests.report.helpers import eval_record, summary_record, train_record


def test_write_read_round_trip(tmp_path):
    out = tmp_path / "run"  # created by the first write
    log = RunLog(out)
    written = [
        log.log(1, 0.01, {"loss": 4.5, "learning_rate": 1e-3}),
        log.log(2, 0.02, {"eval_loss": 4.2}),
        log.log(2, 0.02, {"train_runtime": 1.5, "train_loss": 4.4}),
    ]
    records, bad = read_log(out / LOG_NAME)
    assert bad == 0 and records == written
    assert [list(r)[:3] for r in records] == [["step", "epoch", "time"]] * 3
    assert read_run_log(out) == written
    assert read_run_log(tmp_path / "nothing yet") == []


def test_record_fields_and_non_finite_values():
    record = make_record(7, 0.123456, {"loss": float("nan"), "grad_norm": math.inf, "n": 3}, now=100.12345)
    assert record == {"step": 7, "epoch": 0.1235, "time": 100.123, "loss": None, "grad_norm": None, "n": 3}
    assert json.loads(json.dumps(record)) == record  # strict JSON: no NaN/Infinity tokens


def test_a_line_cut_by_a_kill_is_sealed_then_skipped(tmp_path):
    path = tmp_path / LOG_NAME
    path.write_text('{"step": 1, "loss": 4.0}\n{"step": 2, "lo')  # killed mid-write
    log = RunLog(tmp_path)
    log.log(2, 0.5, {"loss": 3.9})
    log.log(3, 0.75, {"loss": 3.8})
    lines = path.read_text().splitlines()
    assert lines[1] == '{"step": 2, "lo'  # ended by a newline, left as it was
    assert [json.loads(line)["step"] for line in (lines[0], *lines[2:])] == [1, 2, 3]
    records, bad = read_log(path)
    assert bad == 1 and [r["step"] for r in records] == [1, 2, 3]


def test_only_the_first_write_seals(tmp_path):
    path = tmp_path / LOG_NAME
    log = RunLog(tmp_path)
    log.log(1, 0.0, {"loss": 1.0})
    assert log.sealed
    with open(path, "ab") as f:  # something else appends without a newline after this writer sealed
        f.write(b'{"step": 9')
    log.log(2, 0.0, {"loss": 1.0})
    assert path.read_text().count("\n") == 2  # not sealed again: the writer owns the file after its first write


def test_a_complete_file_gets_no_extra_newline(tmp_path):
    path = tmp_path / LOG_NAME
    path.write_text('{"step": 1, "loss": 4.0}\n')
    RunLog(tmp_path).log(2, 0.0, {"loss": 3.0})
    assert path.read_text().splitlines()[1].startswith('{"step": 2')


def test_bad_lines_are_counted_blank_lines_are_not(tmp_path):
    path = tmp_path / LOG_NAME
    path.write_text(
        "\n".join(
            [
                '{"step": 1, "loss": 2.0}',
                "",  # blank: neither
                "   ",  # blank: neither
                '{"step": 2, "lo',  # cut short
                "[1, 2, 3]",  # JSON but not an object
                '{"loss": 1.0}',  # an object without a step
                '{"step": "3", "loss": 1.0}',  # a step that is not a number
                "not json at all",
                '{"step": 4.0, "loss": 1.5}',
            ]
        )
        + "\n"
    )
    records, bad = read_log(path)
    assert [r["step"] for r in records] == [1, 4.0]
    assert bad == 5


def test_invalid_utf8_is_a_bad_line_not_an_error(tmp_path):
    path = tmp_path / LOG_NAME
    path.write_bytes(b'{"step": 1, "loss": 2.0}\n{"step": 2, "note": "\xff\xfe\n' + b'{"step": 3, "loss": 1.0}\n')
    records, bad = read_log(path)
    assert [r["step"] for r in records] == [1, 3] and bad == 1


def test_record_kinds():
    assert record_kind({"step": 1, "loss": 1.0}) == "train"
    assert record_kind({"step": 1, "learning_rate": 1e-3}) == "train"
    assert record_kind({"step": 1, "eval_loss": 1.0}) == "eval"
    assert record_kind({"step": 1, "train_runtime": 2.0, "train_loss": 1.0}) == "summary"
    assert record_kind({"step": 1, "total_flos": 5}) is None


def test_resolve_records_of_what_the_writer_wrote(tmp_path):
    """A run killed after step 3 (checkpoint at 2) and resumed from 2: the resumed records win."""
    log = RunLog(tmp_path)
    for step in (1, 2, 3):
        log.log(step, step / 10, {"loss": 5.0 - step})
    log.log(2, 0.2, {"eval_loss": 4.0})
    resumed = RunLog(tmp_path)
    for step in (3, 4):
        resumed.log(step, step / 10, {"loss": 1.0 - step / 10})
    resumed.log(4, 0.4, {"train_runtime": 3.0, "train_loss": 2.0})
    train, evals, summary, superseded = resolve_records(read_run_log(tmp_path))
    assert [(r["step"], r["loss"]) for r in train] == [(1, 4.0), (2, 3.0), (3, 0.7), (4, 0.6)]
    assert [r["step"] for r in evals] == [2] and summary["train_loss"] == 2.0 and superseded == 1


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
