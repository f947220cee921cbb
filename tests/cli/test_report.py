"""`lmtrain report`: the command is lmtrain.report's (tests/report/ has the report itself)."""

from __future__ import annotations

from lmtrain import cli


def test_cli_prints_one_error_line_and_exits_2(tmp_path, capsys):
    assert "report" in cli.COMMANDS
    (tmp_path / "run").mkdir()
    assert cli.main(["report", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "log.jsonl" in err[0]


def test_the_command_hands_its_arguments_to_the_report(monkeypatch):
    import lmtrain.report

    seen = []
    monkeypatch.setattr(lmtrain.report, "cmd_report", lambda argv: seen.append(list(argv)) or 7)
    assert cli.main(["report", "runs/a", "runs/b", "--out", "cmp"]) == 7
    assert seen == [["runs/a", "runs/b", "--out", "cmp"]]
