"""Which files to read: supported extensions, the shipped sample corpus, and path/glob expansion."""

from __future__ import annotations

import glob
import os
from importlib import resources
from pathlib import Path
from typing import Sequence

from lmtrain.data.readers.compression import COMPRESSIONS
from lmtrain.errors import DataError

_BASE_EXTENSIONS = (".txt", ".jsonl", ".json", ".csv")
# every text format plain or compressed (x.jsonl.zst ...), then .parquet (compressed inside already)
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    _BASE_EXTENSIONS + tuple(f"{e}.{c}" for c in COMPRESSIONS for e in _BASE_EXTENSIONS) + (".parquet",)
)
_TEXT_EXTENSIONS = (".txt",) + tuple(f".txt.{c}" for c in COMPRESSIONS)  # one file = one document
_GLOB_CHARS = "*?["


def sample_corpus_files() -> list[Path]:
    """The small Shakespeare corpus shipped with the package (sorted)."""
    root = resources.files("lmtrain.data") / "sample"
    # The package is installed as plain files (no zip), so this is a real path.
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".txt"))


def extension(path: Path) -> str:
    """The supported extension ``path`` ends with ('' if none)."""
    name = path.name.lower()
    # Longest first so 'x.jsonl.gz' is not mistaken for '.gz' alone.
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return ""


def is_text_file(path: str | Path) -> bool:
    """Whether ``path`` is named as plain text (``.txt``, or ``.txt.gz`` / ``.zst`` / ``.bz2`` / ``.xz``): one document."""
    return extension(Path(path)) in _TEXT_EXTENSIONS


def _supported_list() -> str:
    compressed = ", ".join("." + c for c in COMPRESSIONS)
    return ", ".join(_BASE_EXTENSIONS + (".parquet",)) + f" (or {compressed} of the text formats)"


def resolve_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files, directories (recursively) and glob patterns to a file list.

    Order is kept as given; directory contents and glob matches are sorted so
    the token stream (and hence the cache) is deterministic. Duplicates are
    dropped.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise DataError("no input files given; pass --train_file PATH (a file, directory or glob)")
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)

    for raw in paths:
        text = os.path.expanduser(str(raw))
        path = Path(text)
        if not path.exists() and any(c in text for c in _GLOB_CHARS):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise DataError(f"no files match the pattern {raw}; check the pattern")
            files: list[Path] = []
            for m in matches:
                mp = Path(m)
                files.extend(_files_in_dir(mp) if mp.is_dir() else [mp])
            files = [f for f in files if extension(f)]
            if not files:
                raise DataError(f"the pattern {raw} matches no supported files; use {_supported_list()}")
            for f in files:
                add(f)
        elif path.is_dir():
            everything = _files_in_dir(path)
            if not everything:
                raise DataError(f"directory {raw} is empty; add data files or pass another path")
            files = [f for f in everything if extension(f)]
            if not files:
                raise DataError(f"directory {raw} has no supported files; use {_supported_list()}")
            for f in files:
                add(f)
        elif path.is_file():
            if not extension(path):
                raise DataError(
                    f"{raw} has an unsupported file type; use {_supported_list()} (rename plain text to .txt)"
                )
            add(path)
        else:
            raise DataError(f"no such file or directory: {raw}; check the path")
    return out


def _files_in_dir(directory: Path) -> list[Path]:
    """All non-hidden regular files below ``directory``, sorted by path."""
    found = []
    for p in directory.rglob("*"):
        rel = p.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts):
            continue  # editor swap files, .DS_Store, .git ...
        if p.is_file():
            found.append(p)
    return sorted(found)


def check_readable(path: Path) -> None:
    """The checks every reader makes before opening ``path``: it exists and is not empty."""
    if not path.is_file():
        raise DataError(f"no such file or directory: {path}; check the path")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty; remove it or add text")
