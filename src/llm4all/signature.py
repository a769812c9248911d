"""Turn a stage function's signature and docstring into its CLI and its recipe schema.

One place defines a command (STYLE.md habit 4): ``def main(data: Path, *, out: Path,
batch_size: int = 8)`` with a Google-style ``Args:`` section *is* ``llm4all CMD DATA --out
OUT [--batch-size N]``, its ``--help``, and the keys a recipe stage may set.
"""

from __future__ import annotations

import argparse
import inspect
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml

from llm4all.errors import UserError, did_you_mean


def doc_args(fn: Callable) -> dict[str, str]:
    """Parse the ``Args:`` section of a Google-style docstring into {name: help}."""
    doc = inspect.getdoc(fn) or ""
    out: dict[str, str] = {}
    in_args, current = False, None
    for line in doc.splitlines():
        if re.match(r"^(Args|Arguments|Parameters):\s*$", line):
            in_args = True
            continue
        if in_args:
            if line and not line.startswith(" "):
                break
            m = re.match(r"^\s{2,8}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
            if m:
                current = m.group(1)
                out[current] = m.group(2).strip()
            elif current and line.strip():
                out[current] += " " + line.strip()
    return out


def summary(fn: Callable) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def description(fn: Callable) -> str:
    """The docstring without its Args/Returns sections."""
    doc = inspect.getdoc(fn) or ""
    keep = []
    for line in doc.splitlines():
        if re.match(r"^(Args|Arguments|Parameters|Returns|Raises):\s*$", line):
            break
        keep.append(line)
    return "\n".join(keep).strip()


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert/validate ``value`` (from YAML or a command line string) to annotation ``tp``."""
    if tp is inspect.Parameter.empty or tp is Any:
        return value
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise UserError(f"{where}: a value is required")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(f"{where}: {value!r} is not allowed; valid: {', '.join(map(str, choices))}")
        return value
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, item_tp, where) for v in value]
    if tp is dict or origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: expected a number, got {value!r}") from None
    if tp is Path:
        if not isinstance(value, str | Path):
            raise UserError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if tp is str:
        if isinstance(value, dict | list):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return str(value)
    # str | dict and other unions: accept YAML strings for the dict side
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if isinstance(value, str) and dict in typing.get_args(tp) and value.lstrip().startswith("{"):
            return yaml.safe_load(value)
        return value
    return value


def params(fn: Callable) -> dict[str, tuple[inspect.Parameter, Any]]:
    hints = typing.get_type_hints(fn)
    return {
        name: (p, hints.get(name, p.annotation))
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def bind(fn: Callable, config: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate a recipe/config mapping against ``fn``'s signature; return typed kwargs."""
    spec = params(fn)
    kwargs = {}
    for key, value in config.items():
        if key not in spec:
            raise UserError(f"{where}: unknown key {key!r}; {did_you_mean(key, list(spec))}")
        kwargs[key] = coerce(value, spec[key][1], f"{where}.{key}")
    missing = [n for n, (p, _) in spec.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise UserError(f"{where}: missing required key(s): {', '.join(missing)}")
    return kwargs


def resolved(fn: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every parameter's value, defaults filled in: what goes into config.yaml."""
    out = {}
    for name, (p, _) in params(fn).items():
        out[name] = _plain(kwargs.get(name, None if p.default is p.empty else p.default))
    return out


def _plain(value: Any) -> Any:
    """Paths to strings, tuples to lists, recursively: a YAML/JSON-safe value."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _Coerce:
    """argparse ``type=`` that reports errors like coerce() does."""

    def __init__(self, tp: Any, flag: str):
        self.tp, self.flag = tp, flag
        self.__name__ = getattr(tp, "__name__", str(tp))

    def __call__(self, text: str) -> Any:
        try:
            return coerce(text, self.tp, self.flag)
        except UserError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None


def add_arguments(parser: argparse.ArgumentParser, fn: Callable) -> None:
    """Parameters without a default become positionals, the rest ``--flags``.

    A positional-only parameter with a default (``def ls(kind="", /)``) is an optional
    positional.
    """
    helps = doc_args(fn)
    for name, (p, tp) in params(fn).items():
        base, _ = _unwrap_optional(tp)
        help_text = helps.get(name, "")
        flag = "--" + name.rstrip("_").replace("_", "-")  # from_ -> --from
        is_list = typing.get_origin(base) in (list, tuple)
        choices = list(typing.get_args(base)) if typing.get_origin(base) is Literal else None
        if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD:
            parser.add_argument(
                name, type=_Coerce(typing.get_args(base)[0] if is_list else tp, name),
                nargs="+" if is_list else None, help=help_text, metavar=name.upper(),
            )
            continue
        if p.kind is p.POSITIONAL_ONLY:  # `def ls(kind: str = "", /)`: an optional positional
            parser.add_argument(name, type=_Coerce(tp, name), nargs="?", default=p.default,
                                help=help_text, metavar=name.upper())
            continue
        if base is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=p.default, help=help_text)
            continue
        default = p.default if p.default is not p.empty else None
        parser.add_argument(
            flag, dest=name, required=p.default is p.empty,
            type=_Coerce(typing.get_args(base)[0] if is_list else tp, flag),
            nargs="+" if is_list else None, choices=choices, default=default,
            help=f"{help_text} (default: {default})" if p.default is not p.empty else help_text,
            metavar=name.upper() if choices is None else None,
        )
