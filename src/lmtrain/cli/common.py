"""What the `lmtrain` commands share: `--config` files, parsing, messages, and checks made before any work."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import ConfigError, LmtrainError
from ..recipe_args import DataArguments, ModelArguments


def split_config(argv: Sequence[str]) -> Tuple[List[str], Dict[str, Any]]:
    """Pull `--config FILE` out of argv and load it (YAML or JSON): (the other arguments, the file's values)."""
    from ..parser import read_yaml

    rest = list(argv)
    for i, arg in enumerate(rest):
        if arg == "--config" or arg.startswith("--config="):
            path = arg.split("=", 1)[1] if "=" in arg else (rest[i + 1] if i + 1 < len(rest) else "")
            del rest[i : i + (1 if "=" in arg else 2)]
            if not os.path.isfile(path):
                raise LmtrainError(f"--config {path!r}: no such file; check the path.")
            values = read_yaml(path) or {}  # JSON is YAML too
            if not isinstance(values, dict):
                raise LmtrainError(f"{path} must hold a mapping of option names to values.")
            return rest, values
    return rest, {}


def parse(dataclass_types: list, argv: Sequence[str], prog: str, defaults: Optional[dict] = None) -> tuple:
    """The dataclasses from argv, over `defaults` and a `--config` file's values (the command line wins)."""
    from ..parser import HfArgumentParser

    parser = HfArgumentParser(dataclass_types, prog=prog)
    rest, from_file = split_config(argv)
    return parser.parse_args_with_defaults(rest, {**(defaults or {}), **from_file})


def default_output_dir() -> str:
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))


def say(msg: str) -> None:
    """Print on the main process only (RANK 0 under torchrun)."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(msg, flush=True)


def check_output_dir(path: str) -> None:
    """Refuse an output_dir that cannot be a folder (it, or a folder above it, is a file) before any work."""
    here = os.path.abspath(path)
    while True:
        if os.path.exists(here):
            if os.path.isdir(here):
                return
            if here == os.path.abspath(path):
                raise ConfigError(
                    f"--output_dir {path} is a file, not a folder; pass a folder path (it is created if missing)."
                )
            raise ConfigError(
                f"--output_dir {path} cannot be created: {here} is a file, not a folder; "
                f"pass an --output_dir outside it (or move the file away)."
            )
        parent = os.path.dirname(here)
        if parent == here:
            return
        here = parent


def check_model_dir(path: Optional[str]) -> None:
    """A --model_name_or_path / --model that is not a local folder: one line naming the model (not its tokenizer)."""
    if path:
        from ..models import local_dir

        local_dir(path, "model")


@contextlib.contextmanager
def quiet_model_loading() -> Iterator[None]:
    """No transformers progress bars ("Loading weights") while a command loads its model; lmtrain's own output
    (its tqdm bars and lines) is not affected. The previous setting is restored afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


STREAMING_BPE_CHARS = 16 << 20
"""Text a streamed run's new BPE tokenizer is trained on (about 16 MB: a few seconds on two cores)."""


def tokenizer_for(model_args: ModelArguments, train_files: List[Any], data_args: DataArguments) -> Any:
    """The model's (or --tokenizer_name's) tokenizer, else a byte-level BPE tokenizer trained on the files."""
    from ..models import load_tokenizer

    source = model_args.tokenizer_name or model_args.model_name_or_path
    if source:
        tok = load_tokenizer(source, model_args.use_fast_tokenizer, model_args.model_revision)
    else:
        from ..data.bpe import train_bpe_tokenizer

        # a streamed run must start in seconds: its tokenizer learns from the first part of the text only
        sample = STREAMING_BPE_CHARS if getattr(data_args, "streaming", False) else None
        where = f"the first {sample >> 20}M characters of " if sample else ""
        say(f"training a byte-level BPE tokenizer (vocab {model_args.vocab_size}) on {where}the training files")
        tok = train_bpe_tokenizer(
            train_files,
            vocab_size=model_args.vocab_size,
            text_column=data_args.text_column,
            encoding_errors=data_args.encoding_errors,
            max_chars=sample,
        )
    if model_args.mlm and tok.mask_token is None:
        raise LmtrainError(
            "the tokenizer has no mask token, which --mlm needs; use a tokenizer with one "
            "(or leave out --tokenizer_name to train one)."
        )
    return tok
