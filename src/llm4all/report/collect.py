"""Read a run directory into plain facts: stages, model variants, curves, curation, plans.

Every stage writes a manifest, ``llm4all.json`` (``llm4all.runs.write_manifest``): the command
that ran, the models it made or names with their roles, what it read and the numbers it
measured. This module reads those manifests and nothing else of another stage's layout (the
files a manifest names under ``files`` are read through it). Every reader is tolerant: a
missing or malformed manifest becomes a note saying what is missing, never an exception, so a
half-finished run still gets a report of what exists.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import yaml

from llm4all.runs import read_manifest

#: how a manifest role reads in the report, by the command that made the model
DISPLAY_ROLES = {("distill", "student"): "distilled student",
                 ("train", "student"): "student (teacher init, trained)",
                 ("models init-student", "student"): "student (teacher init, untrained)",
                 "scratch": "from scratch", "adapted": "adapted (continued training)", "teacher": "teacher",
                 "model": "model"}
#: eval manifests' metrics -> variant fields (the report's column names)
EVAL_METRICS = {"eval speed": {"decode_tokens_per_s": "decode_tokens_per_s",
                               "decode_ms_per_token": "latency_ms", "joules_per_token": "joules_per_token",
                               "energy_source": "energy_source"},
                "eval tasks": {"tasks_acc": "tasks_acc"}}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a crash: the rest is still worth plotting
    except OSError:
        pass
    return rows


def stage_file(stage: dict, key: str) -> Path | None:
    """The file a stage's manifest names under ``files[key]`` (None if it names none)."""
    name = ((stage.get("manifest") or {}).get("files") or {}).get(key)
    return stage["path"] / name if name else None


def stages(run: Path) -> list[dict]:
    """Every stage directory of ``run``, in recipe order (summary.json) then by finish time."""
    order = list((read_json(run / "summary.json") or {}).get("stages", {}))
    found = []
    for path in sorted(p for p in run.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            config = {}
        config = config if isinstance(config, dict) else {}
        manifest = read_manifest(path)
        command = (manifest or {}).get("command") or config.get("command") or "unknown"
        done = read_json(path / "DONE")
        found.append({"name": path.name, "path": path, "config": config, "manifest": manifest,
                      "command": command, "done": done is not None, "seconds": (done or {}).get("seconds"),
                      "finished": (done or {}).get("finished", "")})
    rank = {n: i for i, n in enumerate(order)}
    return sorted(found, key=lambda s: (rank.get(s["name"], len(rank)), s["finished"], s["name"]))


# -- model variants: size, parameters, quality, speed --------------------------------------------

def safetensors_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from the headers of every *.safetensors file (no tensor is read)."""
    shapes = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))  # little-endian u64 header length
            header = json.loads(f.read(n))
        shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return shapes


def count_params(model_dir: Path) -> int | None:
    """Parameters of an HF directory; for a packed (compressed) one, its dense equivalent."""
    shapes = safetensors_shapes(model_dir)
    if not shapes:
        return None
    quant = (read_json(model_dir / "llm4all_quant.json") or {}).get("modules", {})
    total = 0
    for name, shape in shapes.items():
        owner = name.rpartition(".")[0]
        if owner not in quant:
            n = 1
            for d in shape:
                n *= d
            total += n
    for spec in quant.values():  # packed Linear: in × out weights (+ out bias)
        total += spec.get("in_features", 0) * spec.get("out_features", 0) + (
            spec.get("out_features", 0) if spec.get("bias") else 0)
    return total


def model_files(path: Path) -> tuple[int | None, int | None]:
    """(bytes on disk of the weights, parameters) of an HF directory or a .gguf file."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return path.stat().st_size, None
    if path.is_dir():
        weights = list(path.glob("*.safetensors"))
        if weights:
            return sum(f.stat().st_size for f in weights), count_params(path)
        ggufs = list(path.glob("*.gguf"))
        if ggufs:
            return sum(f.stat().st_size for f in ggufs), None
    return None, None


def registered_model_dir(name: str) -> Path | None:
    """The cached HF directory of a registered model, only if it was converted already."""
    from llm4all.catalog import MODELS
    from llm4all.models.load import cache_dir

    if name not in MODELS.names():
        return None
    path = cache_dir() / "models" / name
    return path if (path / "config.json").exists() else None


def _new(name: str, role: str, path: Path | None, stage: str | None = None) -> dict:
    return {"name": name, "role": role, "path": str(path) if path else None, "stage": stage,
            "size_bytes": None, "params": None, "ppl": None, "ppl_source": None, "eval_tokens_per_s": None,
            "decode_tokens_per_s": None, "latency_ms": None, "peak_mib": None, "tasks_acc": None,
            "train_flops": None, "train_seconds": None, "train_tokens": None, "val_loss": None,
            "val_ppl": None, "method": None, "source": None, "provenance": {}, "config": {},
            "kind": "model", "runtime": None, "joules_per_token": None, "energy_source": None}


class Models:
    """The run's models, each found by any name it goes by (its path, ``@stage/...``, a registered name)."""

    def __init__(self, found: list[dict]):
        self.names = {s["name"] for s in found}
        self.table: dict[str, dict] = {}

    def in_run(self, model: str) -> str:
        """``@stage/rest`` for a path inside any copy of this run directory (runs may be moved)."""
        parts = Path(model).parts
        hits = [i for i, p in enumerate(parts) if p in self.names]
        return "@" + "/".join(parts[hits[-1]:]) if hits else model

    def keys(self, model: str, stage_path: Path | None = None) -> list[str]:
        """Every key ``model`` (as a manifest names it) may be known by."""
        here = stage_path / model if stage_path is not None and not Path(model).is_absolute() else None
        path = here if here is not None and here.exists() else Path(model)
        keys = [str(path.resolve()) if path.exists() else str(model), self.in_run(str(path))]
        if stage_path is not None and model in (".", ""):
            keys.append(f"@{stage_path.name}")
        elif stage_path is not None:
            keys += [f"@{stage_path.name}/{model}", str((stage_path / model).resolve())]
        return keys

    def get(self, keys: list[str]) -> dict | None:
        return next((self.table[k] for k in keys if k in self.table), None)

    def add(self, keys: list[str], variant: dict) -> dict:
        known = self.get(keys)
        if known is not None:
            for k in keys:
                self.table.setdefault(k, known)
            return known
        for k in keys:
            self.table[k] = variant
        return variant

    def unique(self) -> list[dict]:
        return list({id(v): v for v in self.table.values()}.values())


def _display_role(command: str, entry: dict) -> str:
    role = entry.get("role", "model")
    if role == "compressed":
        method = entry.get("method") or {}
        label = " ".join(f"{v}" if k == "name" else f"{k}={v}" for k, v in dict(method).items())
        return f"compressed ({label})" if label else "compressed"
    if role == "export":
        kind = " ".join(str(x) for x in (entry.get("format"), entry.get("type")) if x)
        return f"export ({kind})"
    return DISPLAY_ROLES.get((command, role)) or DISPLAY_ROLES.get(role, role)


def _made(models: Models, s: dict, notes: list[str]) -> None:
    """The models a stage's manifest declares, with what that stage measured of them."""
    manifest, path = s["manifest"], s["path"]
    def here(entry: dict) -> Path | None:  # a model the stage made: a path inside its directory
        rel = str(entry.get("path", ""))
        inside = not Path(rel).is_absolute() and entry.get("role") != "teacher"
        return path / rel if inside and (path / rel).exists() else None

    made = [e for e in manifest.get("models", []) if here(e) is not None]
    for entry in manifest.get("models", []):
        rel, local = str(entry.get("path", "")), here(entry)
        if local is None:  # a model the stage read, not made
            target = _local(rel)
            v = models.add(models.keys(rel), _new(Path(rel).name, _display_role(s["command"], entry), target))
            if entry.get("role") not in (None, "model") and v["kind"] == "model":
                v["role"], v["kind"] = _display_role(s["command"], entry), entry["role"]
            continue
        name = s["name"] if len(made) == 1 else f"{s['name']}/{rel}"
        v = models.add(models.keys(rel, path),
                       _new(name, _display_role(s["command"], entry), local, s["name"]))
        v["source"], v["method"], v["kind"] = entry.get("source"), entry.get("method"), entry.get("role")
        v["config"] = s["config"]
        metrics = manifest.get("metrics") or {}
        if s["command"] in ("train", "distill"):
            v.update(val_loss=metrics.get("val_loss"), train_tokens=metrics.get("tokens"),
                     train_seconds=metrics.get("seconds_total", metrics.get("seconds")),
                     val_ppl=metrics.get("val_ppl"))
            if metrics.get("val_ppl") is not None:
                v["ppl"], v["ppl_source"] = metrics["val_ppl"], f"{s['command']} validation"


def _local(model: str) -> Path | None:
    """The files of ``model``: its own path, or a registered model's converted cache directory."""
    return Path(model) if Path(model).exists() else registered_model_dir(model)


def _measured(models: Models, s: dict, notes: list[str]) -> None:
    """What an eval stage's manifest measured, matched to the model it names."""
    manifest = s["manifest"]
    model = str((manifest.get("inputs") or {}).get("model") or "")
    if not model:
        return
    v = models.add(models.keys(model), _new(Path(model).name, "model", _local(model)))
    metrics = manifest.get("metrics") or {}
    if s["command"] == "eval perplexity" and metrics.get("ppl") is not None:
        if v["ppl_source"] and v["ppl_source"].startswith("eval"):
            notes.append(f"{v['name']}: several perplexity evaluations; the table shows the first")
        else:
            v["ppl"] = metrics["ppl"]
            v["ppl_source"] = f"eval perplexity ({s['name']}, context {metrics.get('context', '?')})"
            seconds = (manifest.get("metrics") or {}).get("seconds")
            v["eval_tokens_per_s"] = metrics.get("tokens_per_second") or (
                metrics["tokens"] / seconds if seconds else None)
    for key, field in EVAL_METRICS.get(s["command"], {}).items():
        if metrics.get(key) is not None:
            v[field] = metrics[key]
    if s["command"] == "eval speed":
        v["runtime"] = metrics.get("runtime")
        if metrics.get("peak_rss_bytes") is not None:
            v["peak_mib"] = metrics["peak_rss_bytes"] / 2**20


def variants(found: list[dict]) -> tuple[list[dict], list[str]]:
    """Every model the run made or measured, with what is known about it; plus notes."""
    from llm4all.models.load import pretraining_tokens

    models, notes = Models(found), []
    for s in found:  # 1. the models the stages made or name
        if s["manifest"] is None:
            if s["command"] != "report":
                notes.append(f"stage {s['name']} has no manifest (llm4all.json): not read")
            continue
        _made(models, s, notes)
    for s in found:  # 2. what the eval stages measured
        if s["manifest"] is not None and s["command"].startswith("eval "):
            _measured(models, s, notes)
    unique = models.unique()
    for v in unique:  # 3. sizes, parameters, training compute
        if v["path"]:
            v["size_bytes"], v["params"] = model_files(Path(v["path"]))
            meta = Path(v["path"]) / "llm4all.json"
            v["provenance"] = (read_json(meta) or {}) if meta.exists() else {}
        if v["params"] and v["train_tokens"]:
            v["train_flops"] = 6.0 * v["params"] * v["train_tokens"]  # C ≈ 6·N·D (Kaplan et al. 2020)
        tokens = pretraining_tokens(v["name"])
        if tokens and v["params"]:
            v["train_flops"], v["train_tokens"] = 6.0 * v["params"] * tokens, tokens
    for v in unique:  # a compressed or exported model has its source's dense parameter count
        if v["role"].startswith(("export", "compressed")) and v["source"]:
            src = models.get(models.keys(str(v["source"])))
            if src is not None:
                v["params"] = v["params"] or src["params"]
                v["source"] = src["name"]
    order = ("teacher", "adapted", "distilled", "student", "from scratch", "compressed", "export", "model")
    unique.sort(key=lambda v: next((i for i, o in enumerate(order) if v["role"].startswith(o)), len(order)))
    return unique, notes


# -- curation ------------------------------------------------------------------------------------

def _jsonl_zst(path: Path):
    import io

    from llm4all.data.readers import ZstdFrames

    with ZstdFrames(open(path, "rb")) as raw:  # noqa: SIM115 - every frame, truncation an error
        for line in io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8"):
            if line.strip():
                yield json.loads(line)


def planted_kind(meta: dict) -> str | None:
    """The planted kind of a document (``meta.planted``), near copies split by their edit rate."""
    kind = meta.get("planted")
    if kind and isinstance(meta.get("rate"), int | float):
        return f"{kind} {meta['rate']:.0%}"
    return kind


def curation(stage: dict) -> dict:
    """A curate stage's summary, signal table, which documents each step removed, planted-junk
    recall: the files its manifest names (``summary``, ``signals``, ``removed``, ``kept``)."""
    out: dict[str, Any] = {"summary": (stage.get("manifest") or {}).get("metrics"), "signals": {},
                           "removed": {}, "planted": {}, "notes": []}
    files = {key: stage_file(stage, key) for key in ("summary", "signals", "removed", "kept")}
    missing = [key for key, file in files.items() if file is None or not file.exists()]
    if missing:
        out["notes"].append(f"stage {stage['name']}: its manifest names no readable {', '.join(missing)}")
    if files["summary"] is not None:
        out["summary"] = read_json(files["summary"]) or out["summary"]
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(files["signals"]).to_pydict()
        ids = table.pop("id")
        out["signals"] = {"ids": ids, "columns": table}
    except Exception as e:  # noqa: BLE001  (any unreadable table: say so, draw the rest)
        out["notes"].append(f"signal table unreadable ({type(e).__name__})")
    planted: dict[str, dict[str, int]] = {}
    try:
        for doc in _jsonl_zst(files["removed"]):
            out["removed"][doc.get("id")] = doc.get("step", "?")
            kind = planted_kind(doc.get("meta") or {})
            if kind:
                row = planted.setdefault(kind, {"planted": 0, "removed": 0})
                row["planted"] += 1
                row["removed"] += 1
                row[f"by {doc.get('step', '?')}"] = row.get(f"by {doc.get('step', '?')}", 0) + 1
        if files["kept"] is not None and files["kept"].exists():
            for doc in _jsonl_zst(files["kept"]):
                kind = planted_kind(doc.get("meta") or {})
                if kind:
                    planted.setdefault(kind, {"planted": 0, "removed": 0})["planted"] += 1
    except (OSError, ValueError, TypeError, EOFError) as e:  # EOFError: a truncated .zst
        out["notes"].append(f"removed/kept documents unreadable ({type(e).__name__}: {e})")
    out["planted"] = planted
    return out
