"""Turn a stage function's signature and docstring into its CLI and its recipe schema.

One place defines a command (STYLE.md habit 4): ``def main(data: Path, *, out: Path,
batch_size: int = 8)`` with a Google-style ``Args:`` section *is* ``llm4all CMD DATA --out
OUT [--batch-size N]``, its ``--help``, and the keys a recipe stage may set.

A parameter typed with a dataclass (``training: TrainingConfig``) is a group of options
shared by several commands: its fields are expanded into flags and recipe keys of their own
(``--lr``, ``lr:``), documented by the string literal under each field, and validated
together by the dataclass's ``__post_init__`` when a recipe is loaded or a command starts.
``@takes_configs`` lets Python callers pass those fields flat too (``main(data, lr=1e-3)``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
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
    in_args, current, indent = False, None, None
    for line in doc.splitlines():
        if re.match(r"^(Args|Arguments|Parameters):\s*$", line):
            in_args = True
            continue
        if in_args:
            if line and not line.startswith(" "):
                break
            m = re.match(r"^(\s{2,8})(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
            # a new argument stands at the first one's indentation; deeper lines continue it,
            # even one that starts like "HOST:PORT ..."
            if m and (indent is None or len(m.group(1)) == indent):
                indent, current = len(m.group(1)), m.group(2)
                out[current] = m.group(3).strip()
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
            value = _yaml(value, where)
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
            return _yaml(value, where)
        return value
    return value


def _yaml(text: str, where: str) -> Any:
    """A YAML value given on the command line; malformed YAML is a one-line UserError."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}: not valid YAML{at} ({problem}): {text!r}") from None


def field_docs(cls: type) -> dict[str, str]:
    """{field: the string literal under it} for a dataclass (its one doc line per field)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            body = ast.parse(inspect.getsource(klass)).body[0].body  # type: ignore[attr-defined]
        except (OSError, TypeError, IndexError, AttributeError):
            continue
        for node, after in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def config_groups(fn: Callable) -> dict[str, tuple[type, Any]]:
    """{parameter: (dataclass, default instance)} for ``fn``'s dataclass-typed parameters."""
    hints = typing.get_type_hints(fn)
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        tp, _ = _unwrap_optional(hints.get(name, p.annotation))
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out[name] = (tp, p.default if p.default is not p.empty else tp())
    return out


def params(fn: Callable) -> dict[str, tuple[inspect.Parameter, Any]]:
    """{name: (parameter, type)} of a command: its own parameters, dataclass groups expanded."""
    hints = typing.get_type_hints(fn)
    groups = config_groups(fn)
    out: dict[str, tuple[inspect.Parameter, Any]] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        if name not in groups:
            out[name] = (p, hints.get(name, p.annotation))
            continue
        cls, default = groups[name]
        field_hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in out or f.name in inspect.signature(fn).parameters:
                raise TypeError(f"{fn.__qualname__}: option {f.name!r} of {cls.__name__} is defined twice")
            value = getattr(default, f.name)
            out[f.name] = (inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=value,
                                             annotation=field_hints[f.name]), field_hints[f.name])
    return out


def pack_configs(fn: Callable, kwargs: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Gather flat config fields of ``kwargs`` into their dataclass instances (validated)."""
    kwargs = dict(kwargs)
    groups = config_groups(fn)
    try:
        for name, (cls, default) in groups.items():
            names = {f.name for f in dataclasses.fields(cls)}
            flat = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            base = kwargs.get(name) or default
            if flat or name not in kwargs:
                kwargs[name] = dataclasses.replace(base, **flat)
        for name in groups:  # checks across groups: `def cross_check(self, training)`
            check = getattr(kwargs[name], "cross_check", None)
            if check is not None:
                check(**{p: kwargs[p] for p in inspect.signature(check).parameters if p in groups})
    except UserError as e:
        raise UserError(f"{where}: {e}" if where else str(e)) from None
    return kwargs


def takes_configs(fn: Callable) -> Callable:
    """Decorator: ``fn``'s dataclass-typed parameters may also be given field by field."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **pack_configs(fn, kwargs))

    return wrapper


def bind(fn: Callable, config: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate a recipe/config mapping against ``fn``'s signature; return typed (flat) kwargs.

    Option groups (dataclasses) are built once here, so their cross-field checks run when the
    recipe is loaded, before any stage starts.
    """
    spec = params(fn)
    kwargs = {}
    for key, value in config.items():
        if key not in spec:
            raise UserError(f"{where}: unknown key {key!r}; {did_you_mean(key, list(spec))}")
        kwargs[key] = coerce(value, spec[key][1], f"{where}.{key}")
    missing = [n for n, (p, _) in spec.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise UserError(f"{where}: missing required key(s): {', '.join(missing)}")
    pack_configs(fn, kwargs, where)  # validates every group
    return kwargs


def flat_arguments(values: dict[str, Any]) -> dict[str, Any]:
    """A command's arguments as plain values, option groups (dataclasses) expanded in place.

    What a run records as its provenance and hashes to tie its checkpoints to its configuration.
    """
    out: dict[str, Any] = {}
    for name, value in values.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update({f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)})
        else:
            out[name] = _plain(value)
    return out


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
    for cls, _ in config_groups(fn).values():
        helps.update(field_docs(cls))
    for name, (p, tp) in params(fn).items():
        base, _ = _unwrap_optional(tp)
        help_text = helps.get(name, "").replace("%", "%%")  # argparse %-formats help
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
