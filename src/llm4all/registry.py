"""Registry[T]: plug-ins under short stable names.

Each plug-in module registers its entries with ``@REGISTRY.register("name")``; a duplicate
name is an error at import time, an unknown name or option is an error before any work
starts. ``llm4all ls KIND`` lists a registry with each entry's first docstring line.

A registry knows which modules populate it (``modules=``), so listing or looking up an entry
imports only what it needs.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from llm4all.errors import UserError, did_you_mean

T = TypeVar("T")

#: every registry by kind, e.g. ``REGISTRIES["quantizers"]``
REGISTRIES: dict[str, Registry] = {}


class Registry(Generic[T]):
    """Named entries of one kind (signals, quantizers, kd_losses, ...)."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()):
        if kind in REGISTRIES:
            raise ValueError(f"registry {kind!r} defined twice")
        self.kind = kind
        self._modules = modules
        self._entries: dict[str, T] = {}
        self._requires: dict[str, tuple[str, ...]] = {}
        REGISTRIES[kind] = self

    def register(self, name: str, *, requires: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``; ``requires`` lists optional packages."""

        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind}: {name!r} is registered twice")
            self._entries[name] = obj
            self._requires[name] = tuple(requires)
            return obj

        return decorator

    def _load(self) -> None:
        """Import the modules that fill this registry (a package: all its submodules)."""
        for name in self._modules:
            module = importlib.import_module(name)
            for sub in pkgutil.iter_modules(getattr(module, "__path__", [])):
                importlib.import_module(f"{name}.{sub.name}")

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} entry {name!r}; {did_you_mean(name, self.names())}")
        return self._entries[name]

    def requires(self, name: str) -> tuple[str, ...]:
        self.get(name)
        return self._requires[name]

    def describe(self) -> list[tuple[str, str]]:
        """(name, first docstring line) for every entry, sorted by name."""
        return [(n, first_line(self._entries[n])) for n in self.names()]

    def build(self, spec: str | dict[str, Any], **defaults: Any) -> Any:
        """Turn ``"name"`` or ``{"name": "gptq", "bits": 4}`` into a call of the entry.

        Options are checked against the entry's signature first, so a misspelt option is an
        error naming it and the valid ones.
        """
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or "name" not in spec:
            raise UserError(f"{self.kind}: expected a name or a mapping with 'name', got {spec!r}")
        options = {k: v for k, v in spec.items() if k != "name"}
        entry = self.get(spec["name"])
        check_options(entry, options, where=f"{self.kind} {spec['name']!r}")
        return entry(**{**defaults, **options})


def check_options(fn: Callable, options: dict[str, Any], where: str) -> None:
    """Raise UserError if ``options`` has keys that ``fn`` does not accept."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in options:
        if key not in valid:
            raise UserError(f"{where}: unknown option {key!r}; {did_you_mean(key, valid)}")


def first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
