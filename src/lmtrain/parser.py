"""`HfArgumentParser`: command-line flags (and dict/JSON/YAML configs) from dataclasses.

API-compatible with `transformers.HfArgumentParser`, built on stdlib argparse. Differences a user
may notice: help text also comes from the docstring under each field, an unknown flag fails with
the closest valid names, prefix abbreviations are off (a typo never silently hits another flag),
and `list[str] | str` fields such as `report_to` accept several values.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import json
import os
import re
import sys
import textwrap
import types
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

__all__ = ["HfArgumentParser", "HfArg", "string_to_bool", "make_choice_type_function"]

# Names from other trainers that people type by habit, mapped to ours (used for suggestions only).
_COMMON_NAMES = {
    "lr": "learning_rate",
    "epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size",
    "bs": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "warmup": "warmup_steps",
    "out_dir": "output_dir",
}

# Keys of `field.metadata` that argparse understands; anything else is ignored, not passed on.
_ARGPARSE_KEYS = {"choices", "metavar", "nargs", "const", "help"}


def string_to_bool(v: Any) -> bool:
    """Parse yes/no, true/false, t/f, y/n, 1/0 (any case) into a bool."""
    if isinstance(v, bool):
        return v
    if str(v).lower() in ("yes", "true", "t", "y", "1"):
        return True
    if str(v).lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false (or yes/no, 1/0), got {v!r}")


def make_choice_type_function(choices: list) -> Callable[[str], Any]:
    """Map each choice's string form back to the choice itself (so Literal[1, 2] gives ints)."""
    str_to_choice = {str(choice): choice for choice in choices}
    return lambda arg: str_to_choice.get(arg, arg)


def HfArg(
    *,
    aliases: Union[str, list, None] = None,
    help: Optional[str] = None,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    metadata: Optional[dict] = None,
    **kwargs: Any,
) -> Any:
    """`dataclasses.field` with `aliases` and `help` shortcuts, as in transformers."""
    metadata = dict(metadata or {})
    if aliases is not None:
        metadata["aliases"] = aliases
    if help is not None:
        metadata["help"] = help
    return dataclasses.field(metadata=metadata, default=default, default_factory=default_factory, **kwargs)


@functools.lru_cache(maxsize=None)
def _class_docstrings(cls: type) -> dict:
    """Attribute docstrings (the string literal under `name: type = ...`) of one class body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return {}  # classes from a REPL, exec or a zip without sources: no docstrings, no failure
    body = next((node.body for node in tree.body if isinstance(node, ast.ClassDef)), [])
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split())
    return docs


def _field_docstring(dtype: type, name: str) -> Optional[str]:
    """The docstring of field `name`, looking through base classes for inherited fields."""
    for cls in dtype.__mro__:
        doc = _class_docstrings(cls).get(name)
        if doc:
            return doc
    return None


def _escape_percent(text: str) -> str:
    """argparse %-formats help strings: keep `%(default)s` and `%%`, escape lone `%`."""
    return re.sub(r"%%|%\(\w+\)\w|%", lambda m: m.group(0) if len(m.group(0)) > 1 else "%%", text)


def _is_union(tp: Any) -> bool:
    return get_origin(tp) is Union or isinstance(tp, getattr(types, "UnionType", ()))


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Enum)


def _is_list(tp: Any) -> bool:
    origin = get_origin(tp) or tp
    return isinstance(origin, type) and issubclass(origin, (list, tuple)) and origin is not str


def _is_dict(tp: Any) -> bool:
    origin = get_origin(tp) or tp
    return isinstance(origin, type) and issubclass(origin, dict)


def _json_value(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"key\": 1}}', got {text!r}") from None


def _first_of(*converters: Callable[[str], Any]) -> Callable[[str], Any]:
    """Try each converter in turn (for `Union[int, str]`-like fields); the last one's error wins."""

    def convert(text: str) -> Any:
        for conv in converters[:-1]:
            try:
                return conv(text)
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                pass
        return converters[-1](text)

    convert.__name__ = getattr(converters[0], "__name__", "value")
    return convert


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults after every option (documented or not); `(required)` instead of `(default: None)`."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = (action.help or "").strip()
        if action.required:
            return help_text if help_text.endswith("(required)") else f"{help_text} (required)".strip()
        if "%(default)" in help_text or action.default is argparse.SUPPRESS or not action.option_strings:
            return help_text
        return f"{help_text} (default: %(default)s)".strip()


class HfArgumentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose options are the fields of one or more dataclasses."""

    def __init__(self, dataclass_types: Any = None, **kwargs: Any) -> None:
        if dataclass_types is None:
            dataclass_types = []
        elif dataclasses.is_dataclass(dataclass_types) or not isinstance(dataclass_types, Iterable):
            dataclass_types = [dataclass_types]
        kwargs.setdefault("formatter_class", _HelpFormatter)
        # Prefix matching would let `--learning_rat` silently mean `--learning_rate`; we suggest instead.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)
        self.dataclass_types = list(dataclass_types)
        self._list_or_str: set = set()  # dests whose single value is passed on as a plain string
        for dtype in self.dataclass_types:
            self._add_dataclass_arguments(dtype)

    # ---- building options --------------------------------------------------------------------

    def _add_dataclass_arguments(self, dtype: type) -> None:
        group = self.add_argument_group(dtype._argument_group_name) if hasattr(dtype, "_argument_group_name") else self
        try:
            hints = get_type_hints(dtype)
        except NameError as e:
            raise TypeError(
                f"cannot resolve the type annotations of {dtype.__name__} ({e}); define the types it uses at "
                "module level or drop `from __future__ import annotations`"
            ) from None
        for field in dataclasses.fields(dtype):
            if field.init:
                self._add_field(group, dtype, field, hints[field.name])

    def _add_field(self, group: Any, dtype: type, field: dataclasses.Field, tp: Any) -> None:
        name = field.name
        options = [f"--{name}"]
        if "_" in name:
            options.append(f"--{name.replace('_', '-')}")
        meta = dict(field.metadata)
        aliases = meta.get("aliases", [])
        options += [aliases] if isinstance(aliases, str) else list(aliases)
        help_text = meta.get("help") or _field_docstring(dtype, name) or ""
        default = _default_of(field)
        # argparse prints no help line at all for an empty help, so undocumented fields get one.
        placeholder = "(required)" if default is dataclasses.MISSING else "(default: %(default)s)"
        kwargs: dict = {"help": _escape_percent(help_text) or placeholder}

        # Strip Optional; a remaining `str` next to a richer type (Union[Enum, str]) is a
        # convenience for Python callers, so the richer type decides the flag's shape.
        args = [a for a in get_args(tp) if a is not type(None)] if _is_union(tp) else [tp]
        richer = [a for a in args if a is not str] or [str]
        if len(richer) > 1:
            raise TypeError(
                f"field {name!r} has type {tp}; the parser supports one type per field (optionally with None or str)"
            )
        base = richer[0]
        str_allowed = str in args and base is not str

        is_bool = base is bool
        if get_origin(base) is Literal or _is_enum(base):
            choices = list(get_args(base)) if get_origin(base) is Literal else [e.value for e in base]
            kwargs["choices"] = choices
            kwargs["type"] = make_choice_type_function(choices)
        elif is_bool:
            kwargs["type"] = _first_of(string_to_bool, str) if str_allowed else string_to_bool
            kwargs["nargs"] = "?"  # `--flag` alone means true; `--flag false` also works
            kwargs["const"] = True
            kwargs["metavar"] = "{true,false}"
            if default is dataclasses.MISSING and not _is_union(tp):
                default = False  # as transformers: a plain bool without default is off, not required
        elif _is_list(base):
            item = (get_args(base) or (str,))[0]
            kwargs["type"] = item if callable(item) and item is not Any else str
            kwargs["nargs"] = "+"
            if str_allowed:
                self._list_or_str.add(name)
        elif _is_dict(base):
            kwargs["type"] = _json_value
            kwargs["metavar"] = "JSON"
        elif base is Any:
            kwargs["type"] = str
        else:
            kwargs["type"] = _first_of(base, str) if str_allowed else base

        for key in _ARGPARSE_KEYS - {"help"}:
            if key in meta:  # explicit metadata (e.g. choices=[...] on an Optional[str]) wins
                kwargs[key] = meta[key]
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        group.add_argument(*options, dest=name, **kwargs)

        # The `--no_flag` complement goes after the flag itself: for a shared dest, argparse takes
        # the default from the first action that names it.
        if is_bool and default is True:
            negatives = [f"--no_{name}"]
            if "_" in name:
                negatives.append(f"--no-{name.replace('_', '-')}")
            group.add_argument(
                *negatives, action="store_false", dest=name, default=argparse.SUPPRESS, help=f"Set {name} to false."
            )

    # ---- parsing -----------------------------------------------------------------------------

    def _suggest(self, word: str) -> list:
        """Close valid option names for an unknown `word` (best first, at most 3)."""
        names: dict = {}  # "learning_rate" -> "--learning_rate", one entry per spelling, canonical option kept
        for action in self._actions:
            for opt in action.option_strings:
                names.setdefault(opt.lstrip("-").replace("-", "_"), action.option_strings[0])
        key = word.lstrip("-").replace("-", "_")
        scored = sorted(((difflib.SequenceMatcher(None, key, n).ratio(), n) for n in names), reverse=True)
        # Near-misses first; else names that contain the word (`--epochs` -> `--num_train_epochs`).
        found = [n for r, n in scored if r >= 0.6 and r >= scored[0][0] - 0.15] if scored else []
        if len(key) >= 3:
            found += [n for n in names if key in n]
        if _COMMON_NAMES.get(key) in names:
            found.insert(0, _COMMON_NAMES[key])
        return list(dict.fromkeys(names[n] for n in found))[:3]

    def _unknown_message(self, remaining: list) -> str:
        flags = [s.split("=", 1)[0] for s in remaining if s.startswith("-")] or remaining
        hints = {flag: " or ".join(self._suggest(flag)) for flag in flags}
        if len(flags) == 1:
            flag = flags[0]
            fix = f"did you mean {hints[flag]}?" if hints[flag] else "run with --help to list the valid options"
            return f"unrecognized argument {flag}; {fix}"
        listed = ", ".join(f"{f} (did you mean {hints[f]}?)" if hints[f] else f for f in flags)
        return f"unrecognized arguments {listed}; run with --help to list the valid options"

    def parse_args_into_dataclasses(
        self,
        args: Optional[list] = None,
        return_remaining_strings: bool = False,
        look_for_args_file: bool = True,
        args_filename: Optional[str] = None,
        args_file_flag: Optional[str] = None,
    ) -> tuple:
        """Parse command-line strings (default `sys.argv[1:]`) into one instance per dataclass.

        Also returns a Namespace of non-dataclass options added to the parser, and, with
        `return_remaining_strings=True`, the list of strings nobody claimed.
        """
        if args_file_flag or args_filename or (look_for_args_file and len(sys.argv)):
            args_files = []
            if args_filename:
                args_files.append(Path(args_filename))
            elif look_for_args_file and len(sys.argv) and sys.argv[0]:
                args_files.append(Path(sys.argv[0]).with_suffix(".args"))
            if args_file_flag:
                flag_parser = argparse.ArgumentParser(allow_abbrev=False)
                flag_parser.add_argument(args_file_flag, type=str, action="append")
                cfg, args = flag_parser.parse_known_args(args=args)
                args_files += [Path(p) for p in vars(cfg).get(args_file_flag.lstrip("-").replace("-", "_")) or []]
            file_args: list = []
            for args_file in args_files:
                if args_file.is_file():
                    file_args += args_file.read_text().split()
            # The command line comes last so that it overrides the files.
            args = file_args + (list(args) if args is not None else sys.argv[1:])

        namespace, remaining = self.parse_known_args(args=args)
        if remaining and not return_remaining_strings:
            self.error(self._unknown_message(remaining))
        outputs = self._namespace_to_dataclasses(namespace)
        return (*outputs, remaining) if return_remaining_strings else tuple(outputs)

    def _namespace_to_dataclasses(self, namespace: argparse.Namespace) -> list:
        values = vars(namespace)
        for name in self._list_or_str:
            # `--report_to none` is the string "none", not ["none"], as when the field is set in Python.
            if isinstance(values.get(name), list) and len(values[name]) == 1:
                values[name] = values[name][0]
        outputs: list = []
        for dtype in self.dataclass_types:
            keys = {f.name for f in dataclasses.fields(dtype) if f.init}
            outputs.append(dtype(**{k: values.pop(k) for k in list(values) if k in keys}))
        if values:
            outputs.append(argparse.Namespace(**values))  # options added to the parser by hand
        return outputs

    def _known_dests(self) -> set:
        return {a.dest for a in self._actions if a.dest != argparse.SUPPRESS and a.dest != "help"}

    def _unknown_keys_error(self, unknown: Iterable[str], where: str) -> ConfigError:
        known = sorted(self._known_dests())
        parts = []
        for key in sorted(unknown):
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            parts.append(f"{key!r}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
        return ConfigError(f"unknown {where} {', '.join(parts)}; remove or rename them")

    def parse_args_with_defaults(
        self, args: Optional[list] = None, defaults: Optional[dict] = None, return_remaining_strings: bool = False
    ) -> tuple:
        """Parse `args` on top of `defaults` (e.g. a config file's values): the command line wins.

        Unknown keys in `defaults` raise ConfigError; the parser's own defaults are restored afterwards.
        """
        defaults = dict(defaults or {})
        unknown = set(defaults) - self._known_dests()
        if unknown:
            raise self._unknown_keys_error(unknown, "config keys")
        saved = [(a, a.default, a.required) for a in self._actions]
        saved_defaults = dict(self._defaults)
        try:
            for action in self._actions:
                if action.dest in defaults:
                    action.required = False  # the config provides the value
            self.set_defaults(**defaults)
            return self.parse_args_into_dataclasses(
                args=list(args) if args is not None else sys.argv[1:],
                return_remaining_strings=return_remaining_strings,
                look_for_args_file=False,
            )
        finally:
            for action, default, required in saved:
                action.default, action.required = default, required
            self._defaults = saved_defaults

    def parse_dict(self, args: dict, allow_extra_keys: bool = False) -> tuple:
        """Build the dataclasses from a dict without argparse (values are used as given)."""
        if not isinstance(args, dict):
            raise ConfigError(f"expected a mapping of option names to values, got {type(args).__name__}")
        unused = set(args)
        outputs = []
        for dtype in self.dataclass_types:
            fields = [f for f in dataclasses.fields(dtype) if f.init]
            inputs = {f.name: args[f.name] for f in fields if f.name in args}
            missing = [f.name for f in fields if f.name not in inputs and _default_of(f) is dataclasses.MISSING]
            if missing:
                raise ConfigError(f"missing required {', '.join(missing)} for {dtype.__name__}; add them to the config")
            unused -= set(inputs)
            outputs.append(dtype(**inputs))
        if unused and not allow_extra_keys:
            raise self._unknown_keys_error(unused, "keys")
        return tuple(outputs)

    def parse_json_file(self, json_file: Union[str, os.PathLike], allow_extra_keys: bool = False) -> tuple:
        """Build the dataclasses from a JSON file holding one object."""
        with open(json_file, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{json_file} is not valid JSON ({e}); fix the file") from None
        return self.parse_dict(data, allow_extra_keys=allow_extra_keys)

    def parse_yaml_file(self, yaml_file: Union[str, os.PathLike], allow_extra_keys: bool = False) -> tuple:
        """Build the dataclasses from a YAML file holding one mapping."""
        return self.parse_dict(read_yaml(yaml_file) or {}, allow_extra_keys=allow_extra_keys)


def read_yaml(path: Union[str, os.PathLike]) -> Any:
    """The value in a YAML file (JSON is YAML too); a syntax error is one ConfigError line naming the file.

    lmtrain's one YAML loader: `HfArgumentParser.parse_yaml_file` and the CLI's `--config` use it.
    """
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({' '.join(str(e).split())}); fix the file") from None
