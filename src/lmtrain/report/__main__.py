"""`python3 -m lmtrain.report RUN_DIR ...`: the same as `lmtrain report`."""

import sys

from ..errors import LmtrainError
from .page import cmd_report

try:
    raise SystemExit(cmd_report(sys.argv[1:]))
except LmtrainError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
