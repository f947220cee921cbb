"""`python3 -m lmtrain.cli ...`: the same as `lmtrain ...`."""

from . import main

raise SystemExit(main())
