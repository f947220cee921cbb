"""`lmtrain report RUN_DIR [RUN_DIR ...]`: the command is lmtrain.report's (the report does not need the CLI)."""

from __future__ import annotations

from typing import Sequence


def cmd_report(argv: Sequence[str]) -> int:
    from ..report import cmd_report as report

    return report(argv)
