"""The argument set of the installed transformers, read from its source without importing it.

`lmtrain.TrainingArguments` accepts every field of `transformers.TrainingArguments`. The list is not
copied by hand: it is read from the installed `transformers/training_args.py` (and the enums from
`trainer_utils.py`) with `ast`, which takes milliseconds, where importing that module pulls in
accelerate and peft and takes seconds (too slow for `lmtrain --help`). Each field keeps its name,
default, a simplified type for the command line, and transformers' own help text.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union


@dataclass(frozen=True)
class HfField:
    """One field of transformers' TrainingArguments."""

    name: str
    default: Any
    """The default (for a `default_factory`, the value it builds)."""
    type: Any
    """A type the argument parser understands (bool, Optional[int], Optional[str], ...)."""
    help: str


def _transformers_dir() -> Optional[str]:
    spec = importlib.util.find_spec("transformers")  # locates the package without running it
    if spec is None or not spec.origin:
        return None
    return os.path.dirname(spec.origin)


@functools.lru_cache(maxsize=None)
def _parse(name: str) -> Optional[ast.Module]:  # cached: enum defaults look a module up again
    folder = _transformers_dir()
    path = os.path.join(folder, name) if folder else ""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read())


@functools.lru_cache(maxsize=None)
def hf_enums() -> Dict[str, List[str]]:
    """Enum classes of transformers' training modules: class name -> member values, in order."""
    out: Dict[str, List[str]] = {}
    for module in ("trainer_utils.py", "training_args.py"):
        tree = _parse(module)
        for node in tree.body if tree else []:
            if not isinstance(node, ast.ClassDef):
                continue
            values = [
                stmt.value.value
                for stmt in node.body
                if isinstance(stmt, ast.Assign)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
                and stmt.targets
                and isinstance(stmt.targets[0], ast.Name)
                and stmt.targets[0].id.isupper()
            ]
            if values:
                out[node.name] = values
    return out


def _enum_member(node: ast.AST) -> Any:
    """`IntervalStrategy.STEPS` -> "steps", looked up in the parsed enums."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        for tree_name in ("trainer_utils.py", "training_args.py"):
            tree = _parse(tree_name)
            for cls in tree.body if tree else []:
                if isinstance(cls, ast.ClassDef) and cls.name == node.value.id:
                    for stmt in cls.body:
                        if (
                            isinstance(stmt, ast.Assign)
                            and isinstance(stmt.targets[0], ast.Name)
                            and stmt.targets[0].id == node.attr
                            and isinstance(stmt.value, ast.Constant)
                        ):
                            return stmt.value.value
    raise ValueError("not an enum member")


def _value(node: Optional[ast.AST]) -> Any:
    """Evaluate a default expression: literals, enum members, `list`/`dict` and `lambda: <literal>`."""
    if node is None:
        return None
    if isinstance(node, ast.Lambda):
        node = node.body
    if isinstance(node, ast.Name) and node.id in ("list", "dict"):
        return [] if node.id == "list" else {}
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    try:
        return _enum_member(node)
    except ValueError:
        return None


def _cli_type(annotation: str, default: Any) -> Any:
    """A parser-friendly type for a transformers annotation (`str | bool`, `Optional[Union[dict, str]]`...)."""
    words = set(annotation.replace("|", " ").replace("[", " ").replace("]", " ").replace(",", " ").split())
    optional = "None" in words or "Optional" in words or default is None
    if words & {"dict", "Dict"}:
        tp: Any = Union[dict, str]
    elif words & {"list", "List"}:
        tp = List[str]
    elif words == {"bool"} or (words - {"None", "Optional"} == {"bool"}):
        tp = bool
    elif words - {"None", "Optional"} <= {"int"}:
        tp = int
    elif words - {"None", "Optional"} <= {"float", "int", "Union"}:
        tp = float
    else:
        tp = str
    if optional and tp is not bool:
        return Optional[tp]
    if optional and tp is bool:
        return Optional[bool]
    return tp


def _help(meta: Optional[ast.AST]) -> str:
    """The `help` entry of a field's metadata dict (its other entries need not be literals)."""
    if not isinstance(meta, ast.Dict):
        return ""
    for key, value in zip(meta.keys, meta.values):
        if isinstance(key, ast.Constant) and key.value == "help":
            text = _value(value)
            return text if isinstance(text, str) else ""
    return ""


def _class_constants(body: List[ast.stmt], into: Dict[str, Any]) -> None:
    """Literal values assigned to plain names in a class body (also under `if`), the last one winning,
    as the class body runs top to bottom (e.g. `default_optim = "adamw_torch_fused"`)."""
    for stmt in body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                into[stmt.targets[0].id] = ast.literal_eval(stmt.value)
            except ValueError:
                pass
        elif isinstance(stmt, ast.If):
            _class_constants(stmt.body, into)


def _call_keywords(node: Optional[ast.AST]) -> Tuple[Dict[str, ast.expr], bool]:
    """Keywords of a `field(...)` call, and whether the value was such a call."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "field":
        return {k.arg: k.value for k in node.keywords if k.arg}, True
    return {}, False


@functools.lru_cache(maxsize=None)
def hf_training_fields() -> Dict[str, HfField]:
    """Every init field of the installed `transformers.TrainingArguments`, in declaration order."""
    tree = _parse("training_args.py")
    cls = next(
        (n for n in (tree.body if tree else []) if isinstance(n, ast.ClassDef) and n.name == "TrainingArguments"), None
    )
    out: Dict[str, HfField] = {}
    constants: Dict[str, Any] = {}
    _class_constants(cls.body if cls else [], constants)
    for stmt in cls.body if cls else []:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        name = stmt.target.id
        if name.startswith("_"):
            continue
        keywords, is_field = _call_keywords(stmt.value)
        init = keywords.get("init")
        if is_field and isinstance(init, ast.Constant) and init.value is False:
            continue
        if is_field:
            node = keywords.get("default", keywords.get("default_factory"))
            default = constants.get(node.id) if isinstance(node, ast.Name) and node.id in constants else _value(node)
            help_text = _help(keywords.get("metadata"))
        else:
            default, help_text = _value(stmt.value), ""
        annotation = ast.unparse(stmt.annotation)
        out[name] = HfField(name, default, _cli_type(annotation, default), " ".join(str(help_text).split()))
    return out


def hf_version() -> str:
    """Version string of the installed transformers (read from its metadata, no import)."""
    try:
        from importlib.metadata import version

        return version("transformers")
    except Exception:  # pragma: no cover - transformers is a dependency
        return "unknown"
