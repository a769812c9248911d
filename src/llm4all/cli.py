"""The ``llm4all`` command: one table maps command names to stage functions.

A command's arguments, help and recipe keys all come from its function's signature and
docstring (see ``signature.py``); nothing about a command is written twice. Modules are
imported only when their command is used, so ``llm4all plan`` never imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import os
import sys
import time
from collections.abc import Callable

from llm4all import __version__, logs
from llm4all.errors import UserError, did_you_mean
from llm4all.runs import check_out
from llm4all.signature import add_arguments, description, summary

#: command name -> "module:function", or a nested table for commands with subcommands
COMMANDS: dict[str, str | dict[str, str]] = {
    "run": "llm4all.recipe:run",
    "ls": "llm4all.cli:ls",
    "demo-corpus": "llm4all.data.demo:main",
    "curate": "llm4all.curate.pipeline:main",
    "plant": "llm4all.curate.planted:main",
    "tokenize": "llm4all.data.tokenize:main",
    "train": "llm4all.train.command:main",
    "distill": "llm4all.distill.command:main",
    "adapt": "llm4all.distill.adapt:main",
    "report": "llm4all.report.html:main",
    "compress": "llm4all.compress.command:main",
    "compress-prompt": "llm4all.compress.prompt:main",
    "teacher-cache": "llm4all.distill.teacher_cache:main",
    "export": "llm4all.export.command:main",
    "serve": "llm4all.serve.command:main",
    "diversity": "llm4all.curate.diversity:main",
    "generate": "llm4all.serve.generate:main",
    "chat": "llm4all.serve.chat:main",
    "models": {
        "convert": "llm4all.models.load:convert",
        "info": "llm4all.models.load:info",
        "init-student": "llm4all.distill.student:init_student",
        "presets": "llm4all.models.presets:presets",
    },
    "eval": {
        "perplexity": "llm4all.evaluate.perplexity:main",
        "tasks": "llm4all.evaluate.tasks:main",
        "harness": "llm4all.evaluate.harness:main",
        "speed": "llm4all.evaluate.speed:main",
        "speculative": "llm4all.evaluate.speculative:main",
        "sinks": "llm4all.evaluate.sinks:main",
        "kv-cache": "llm4all.evaluate.kvcache:main",
    },
    "plan": {
        "chinchilla": "llm4all.plan.commands:chinchilla",
        "kaplan": "llm4all.plan.commands:kaplan",
        "inference": "llm4all.plan.commands:inference",
        "fit": "llm4all.plan.commands:fit",
        "memory": "llm4all.plan.commands:memory",
        "cost": "llm4all.plan.commands:cost",
        "hardware": "llm4all.plan.commands:hardware",
    },
}


def resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def ls(kind: str = "", /) -> list[tuple[str, str]]:
    """List a registry's entries with their one-line descriptions.

    Args:
        kind: registry to list (signals, quantizers, kd_losses, ...); empty lists the kinds.
    """
    from rich.console import Console
    from rich.table import Table

    from llm4all import catalog  # noqa: F401  (defines every registry)
    from llm4all.registry import REGISTRIES

    console = Console()
    if not kind:
        rows = [(k, f"{len(r.names())} entries") for k, r in sorted(REGISTRIES.items())]
        title = "registries (llm4all ls KIND)"
    else:
        if kind not in REGISTRIES:
            raise UserError(f"unknown registry {kind!r}; {did_you_mean(kind, list(REGISTRIES))}")
        rows = REGISTRIES[kind].describe()
        title = kind
    table = Table(title=title)
    table.add_column("name", style="bold")
    table.add_column("description")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return rows


def _command_parser(prog: str, fn: Callable) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description(fn), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, fn)
    return parser


def _table_help(prog: str, table: dict) -> str:
    lines = [f"usage: {prog} COMMAND [ARGS] ...   ({prog} COMMAND --help for details)", "", "commands:"]
    for name, target in table.items():
        text = summary(resolve(target)) if isinstance(target, str) else ", ".join(target)
        lines.append(f"  {name:<14} {text}")
    return "\n".join(lines)


def _verbosity(quiet: bool) -> None:
    """``-q``: no progress bars and no output but errors (results are in the files written);
    ``-v``: debug logging, transformers' and llama.cpp's own messages included."""
    import logging

    os.environ["LLM4ALL_QUIET" if quiet else "LLM4ALL_VERBOSE"] = "1"
    before = list(logging.getLogger().handlers)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # a handler, if none yet
    for handler in logging.getLogger().handlers:
        if handler not in before:  # llm4all's own records have their handler (logs.py)
            handler.addFilter(logs.not_llm4all)
    logging.getLogger().setLevel(logging.ERROR if quiet else logging.DEBUG)
    logs.setup(logging.ERROR if quiet else logging.DEBUG)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--version":
        print(f"llm4all {__version__}")
        return 0
    quiet = False
    logs.setup()  # status lines (INFO) on stderr unless -q / -v below say otherwise
    while argv and argv[0] in ("-q", "--quiet", "-v", "--verbose"):
        flag = argv.pop(0)
        quiet = flag in ("-q", "--quiet")
        _verbosity(quiet)
    prog, table = "llm4all", COMMANDS
    target: str | dict = table
    while isinstance(target, dict):
        if not argv or argv[0] in ("-h", "--help"):
            print(_table_help(prog, target))
            return 0 if argv else 2
        name = argv.pop(0)
        if name not in target:
            print(f"{prog}: error: unknown command {name!r}; {did_you_mean(name, list(target))}",
                  file=sys.stderr)
            return 2
        prog, target = f"{prog} {name}", target[name]
    fn = resolve(target)
    args = vars(_command_parser(prog, fn).parse_args(argv))
    start = time.perf_counter()
    positional_only = [n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.POSITIONAL_ONLY]
    try:
        if args.get("out"):
            check_out(args["out"], args)
        with contextlib.redirect_stdout(open(os.devnull, "w")) if quiet else contextlib.nullcontext():  # noqa: SIM115
            fn(*[args.pop(n) for n in positional_only], **args)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted after {time.perf_counter() - start:.0f} s", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
