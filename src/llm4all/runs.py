"""Run directories and atomic writes.

Every output is written to a temporary sibling and renamed into place, so a crash or a
user error never leaves a half-written file or directory behind. A finished stage leaves a
``DONE`` marker; ``llm4all run`` skips stages that have one.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from llm4all.errors import UserError

DONE = "DONE"
MANIFEST = "llm4all.json"
MARKER = ".llm4all"  # an empty file in every directory atomic_dir makes: "llm4all wrote this"
#: what a model made or read by a stage is to the run (the report groups and compares by role)
ROLES = ("teacher", "adapted", "student", "scratch", "compressed", "export", "model")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` (old content removed).

    An existing ``path`` is replaced only if llm4all made it (``made_by_llm4all``): a user's
    folder given as ``--out`` is an error before any work, never deleted.
    """
    path = Path(path)
    refuse_foreign(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    olds: list[Path] = []
    try:
        yield tmp
        (tmp / MARKER).touch()
        # another writer may finish on the same path meanwhile: move whatever is there aside and
        # retry, so the last to finish wins and neither crashes (ENOTEMPTY on a non-empty target)
        for attempt in range(20):
            if path.exists():
                old = path.with_name(f"{_prefix(path)}old{attempt}.tmp")
                with contextlib.suppress(FileNotFoundError):  # the other writer moved it first
                    os.replace(path, old)
                    olds.append(old)
            try:
                os.replace(tmp, path)
                break
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == 19:
                    raise
    finally:
        for leftover in (tmp, *olds):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def _prefix(path: Path) -> str:
    """Temporaries beside ``path`` are named ``.NAME.HOST-PID.…tmp``: ``clean_stale`` knows whose."""
    return f".{path.name}.{_HOST}-{os.getpid()}."


_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"


def clean_stale(path: Path) -> None:
    """Remove the temporaries a killed llm4all process left beside ``path`` (this host's only, of
    processes no longer running): a SIGKILL skips every ``finally``."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{_HOST}-(\d+)\..*\.tmp$")
    for p in path.parent.glob(f".{glob.escape(path.name)}.{_HOST}-*.tmp"):
        m = pattern.match(p.name)
        if m is None or _running(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def made_by_llm4all(path: Path) -> bool:
    """Whether the directory ``path`` is llm4all's to replace: empty, or it or a directory above
    it holds a marker (``.llm4all``, a manifest ``llm4all.json``, a stage's ``DONE`` or a packed
    checkpoint's ``llm4all_quant.json``; the last three also mark what older versions wrote)."""
    if not path.is_dir() or not any(path.iterdir()):
        return path.is_dir()
    marks = (MARKER, MANIFEST, DONE, "llm4all_quant.json")
    return any((d / m).exists() for d in (path, *path.resolve().parents) for m in marks)


def refuse_foreign(path: Path) -> None:
    """A UserError unless ``path`` is absent or llm4all's to replace."""
    here = Path.cwd().resolve()
    if path.name in ("", ".", "..") or path.resolve() in (here, *here.parents):
        raise UserError(f"--out {path}: the current folder or one above it cannot be replaced; "
                        "name a new folder, e.g. --out out")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a directory; choose another --out")
    if path.exists() and not made_by_llm4all(path):
        raise UserError(f"{path}: exists and was not written by llm4all (no {MARKER} or {MANIFEST} in it); "
                        f"llm4all never deletes what it did not create: choose another --out, or empty it")


def check_out(out: str | Path, arguments: dict[str, Any], state: tuple[str, ...] = ("cache", "resume",
                                                                                  "log_to")) -> None:
    """A UserError if ``out`` is, or contains, a path another argument names (an input): a command
    that replaces its output directory would delete that input. ``state`` arguments (a teacher
    cache, a checkpoint to resume) may live inside ``out``."""
    target = Path(out).resolve()
    for name, value in arguments.items():
        if name == "out" or name in state:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(v, (str, Path)) or not str(v) or not Path(v).exists():
                continue
            p = Path(v).resolve()
            if p == target or target in p.parents:
                where = "is" if p == target else "contains"
                raise UserError(f"--out {out} {where} the input {v} (--{name.replace('_', '-')}); writing "
                                f"there would replace it: choose another --out")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    return Path(path)


def write_yaml(path: str | Path, obj: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(json.loads(json.dumps(obj, default=_jsonable)), sort_keys=False))
    return Path(path)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def config_hash(arguments: dict[str, Any],
                ignore: tuple[str, ...] = ("stop_after", "out", "threads", "device")) -> str:
    """A short stable hash of a command's arguments (a checkpoint belongs to one configuration;
    where and on how many threads it runs does not change which: a run resumes on another device)."""
    import hashlib

    kept = {k: v for k, v in arguments.items() if k not in ignore}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def mark_done(out: str | Path, config: dict[str, Any], seconds: float) -> None:
    """Write the resolved config and the DONE marker of a finished stage."""
    out = Path(out)
    write_yaml(out / "config.yaml", config)
    write_json(out / DONE, {"seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})


def is_done(out: str | Path) -> bool:
    return (Path(out) / DONE).exists()


def write_manifest(out: str | Path, command: str, *, models: list[dict] | None = None,
                   inputs: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                   **extra: Any) -> Path:
    """Write the stage manifest ``OUT/llm4all.json``: what the stage made, read and measured.

    Args:
        out: the stage's output directory.
        command: the command that ran (``"distill"``, ``"eval perplexity"``, ...).
        models: the models the stage made or names, each ``{"path", "role", "format", ...}``:
            ``path`` relative to ``out`` for what the stage made (``"model"``, ``"."``), or
            as the user gave it for a model it read (a registered name, a directory);
            ``role`` one of ``ROLES``; ``format`` hf, packed, gguf or compressed-tensors.
        inputs: what it read, e.g. ``{"model": "smollm2-135m", "data": "runs/x/tokenize"}``.
        metrics: numbers the stage measured (perplexity, tokens/s, bytes, ...).
        extra: more keys (provenance: arguments, source, ...).

    The report reads these manifests, never other stages' file names.
    """
    for m in models or []:
        if m.get("role") not in ROLES:
            raise ValueError(f"manifest model role {m.get('role')!r} is not one of {ROLES}")
    manifest = {"command": command, "models": list(models or []), "inputs": dict(inputs or {}),
                "metrics": dict(metrics or {}), **extra}
    return write_json(Path(out) / MANIFEST, manifest)


def read_manifest(out: str | Path) -> dict | None:
    """The manifest of a stage directory, or None when it has none (or it is unreadable)."""
    try:
        manifest = json.loads((Path(out) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "command" in manifest else None
