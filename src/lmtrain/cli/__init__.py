"""`lmtrain` command line: train, prepare, eval, generate, report.

Every TrainingArguments field is a flag; `--config run.yaml` supplies the same fields from a file
(the command line wins). Errors a user can fix print one line and exit with status 2.

One module per command (:mod:`.train`, :mod:`.eval`, :mod:`.generate`, :mod:`.prepare`, :mod:`.report`),
what they share in :mod:`.common`; the arguments of the train recipe and its defaults are in
:mod:`lmtrain.recipe_args`. The train recipe is callable from Python: :func:`lmtrain.cli.train.train`.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from ..errors import LmtrainError
from ..recipe_args import CLI_TRAINING_DEFAULTS, DataArguments, ModelArguments
from .eval import EvalArguments, cmd_eval
from .generate import GenerateArguments, cmd_generate
from .prepare import PrepareArguments, cmd_prepare
from .report import cmd_report
from .train import SAMPLE_NOTE, cmd_train

# the names lmtrain.cli had when it was one module (the arguments and defaults now live in recipe_args)
__all__ = [
    "CLI_TRAINING_DEFAULTS",
    "COMMANDS",
    "DataArguments",
    "EvalArguments",
    "GenerateArguments",
    "ModelArguments",
    "PrepareArguments",
    "SAMPLE_NOTE",
    "cmd_eval",
    "cmd_generate",
    "cmd_prepare",
    "cmd_report",
    "cmd_train",
    "main",
]

COMMANDS = {
    "train": (cmd_train, "train or fine-tune a model on text files"),
    "prepare": (cmd_prepare, "tokenize and pack text into the cache, and print its statistics"),
    "eval": (cmd_eval, "loss and perplexity of a trained model on a file"),
    "generate": (cmd_generate, "continue a prompt with a trained causal LM"),
    "report": (cmd_report, "plots and an HTML page of one or more runs (lmtrain report RUN [RUN ...])"),
}


def _usage() -> str:
    lines = ["usage: lmtrain COMMAND [options]   (lmtrain COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from .. import __version__

        print(f"lmtrain {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; use one of {', '.join(COMMANDS)}."
        print(f"error: unknown command {argv[0]!r}{hint}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    try:
        return COMMANDS[argv[0]][0](argv[1:])
    except LmtrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
