"""Read a run directory into plain facts: stages, model variants, curves, curation, plans.

Stages are found by the ``command`` key of their ``config.yaml`` (written by ``llm4all run``);
a stage directory without one (a command run by hand) is recognised by the files it holds.
Every reader is tolerant: a missing or malformed file becomes a note saying what is missing,
never an exception, so a half-finished run still gets a report of what exists.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import yaml

#: files that identify a stage run without `llm4all run` (no `command` in config.yaml)
SIGNATURES = [("perplexity.json", "eval perplexity"), ("speed.json", "eval speed"),
              ("tasks.json", "eval tasks"), ("harness.json", "eval harness"),
              ("speculative.json", "eval speculative"), ("sinks.json", "eval sinks"),
              ("llm4all_quant.json", "compress"), ("plan.json", "plan"), ("index.json", "tokenize"),
              ("signals.parquet", "curate"), ("report.html", "report")]
#: SmolLM2-135M pre-training tokens, 2T (Allal et al. 2025, "SmolLM2", Table 1 / Section 4)
SMOLLM2_135M_TOKENS = 2e12


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


def _command(path: Path, config: dict) -> str:
    if isinstance(config.get("command"), str):
        return config["command"]
    names = {p.name for p in path.iterdir()}
    if "metrics.jsonl" in names:
        return "distill" if "mode" in (read_json(path / "result.json") or {}) else "train"
    for file, command in SIGNATURES:
        if file in names:
            return command
    if any(n.endswith(".gguf") for n in names):
        return "export"
    return "unknown"


def stages(run: Path) -> list[dict]:
    """Every stage directory of ``run``, in recipe order (summary.json) then by finish time."""
    order = list((read_json(run / "summary.json") or {}).get("stages", {}))
    found = []
    for path in sorted(p for p in run.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            config = {}
        done = read_json(path / "DONE")
        found.append({"name": path.name, "path": path, "config": config if isinstance(config, dict) else {},
                      "command": _command(path, config if isinstance(config, dict) else {}),
                      "done": done is not None, "seconds": (done or {}).get("seconds"),
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
    try:
        from llm4all.models.load import MODELS, cache_dir
    except ImportError:
        return None
    if name not in MODELS.names():
        return None
    path = cache_dir() / "models" / name
    return path if (path / "config.json").exists() else None


def _local(model: str) -> Path | None:
    """The files of ``model``: its own path, or a registered model's converted cache directory."""
    return Path(model) if Path(model).exists() else registered_model_dir(model)


def _key(model: Any) -> str:
    p = Path(str(model))
    return str(p.resolve()) if p.exists() else str(model)


def _new(name: str, role: str, path: Path | None, stage: str | None = None) -> dict:
    return {"name": name, "role": role, "path": str(path) if path else None, "stage": stage,
            "size_bytes": None, "params": None, "ppl": None, "ppl_source": None, "eval_tokens_per_s": None,
            "decode_tokens_per_s": None, "latency_ms": None, "peak_mib": None, "tasks_acc": None,
            "train_flops": None, "train_seconds": None, "train_tokens": None, "val_loss": None,
            "val_ppl": None, "method": None, "source": None, "config": {}}


def _role_of_trained(config: dict, model_dir: Path) -> str:
    source = str((read_json(model_dir / "llm4all.json") or {}).get("source", ""))
    if config.get("init_from") or source.startswith("student"):
        return "student (teacher init, trained)"
    if source.startswith("preset") or (config.get("model") and not Path(str(config["model"])).exists()
                                       and registered_model_dir(str(config["model"])) is None
                                       and not source.startswith("checkpoint")):
        return "from scratch"
    return "continued pre-training"


def variants(found: list[dict]) -> tuple[list[dict], list[str]]:
    """Every model the run made or measured, with what is known about it; plus notes."""
    table: dict[str, dict] = {}
    notes: list[str] = []

    names = {s["name"] for s in found}

    def in_run(model: str) -> str:
        """``@stage/rest`` for a path inside any copy of this run directory (runs may be moved)."""
        parts = Path(model).parts
        hits = [i for i, p in enumerate(parts) if p in names]
        return "@" + "/".join(parts[hits[-1]:]) if hits else model

    def add(key: str, v: dict, *aliases: str) -> dict:
        for k in (key, *aliases):
            if k in table:
                return table[k]
        for k in (key, *aliases):
            table[k] = v
        return v

    for s in found:  # 1. the models the stages made
        cmd, cfg, path = s["command"], s["config"], s["path"]
        if cmd in ("train", "distill"):
            model_dir = path / "model"
            if not (model_dir / "config.json").exists():
                notes.append(f"stage {s['name']} ({cmd}) has no finished model/ directory")
                continue
            role = "distilled student" if cmd == "distill" else _role_of_trained(cfg, model_dir)
            v = add(_key(model_dir), _new(s["name"], role, model_dir, s["name"]), _key(path),
                    f"@{s['name']}/model", f"@{s['name']}")
            result = read_json(path / "result.json") or {}
            v.update(val_loss=result.get("val_loss"), train_tokens=result.get("tokens"),
                     train_seconds=result.get("seconds_total", result.get("seconds")),
                     val_ppl=result.get("val_ppl"), config=cfg)
            if result.get("val_ppl") is not None:
                v["ppl"], v["ppl_source"] = result["val_ppl"], f"{cmd} validation"
            if cmd == "distill":
                meta = read_json(model_dir / "llm4all.json") or {}
                teacher = str(cfg.get("teacher") or meta.get("teacher", ""))
                if teacher:
                    add(_key(teacher), _new(Path(teacher).name, "teacher", _local(teacher)))
        elif cmd == "compress":
            meta = read_json(path / "llm4all_quant.json") or {}
            method = meta.get("method") or cfg.get("method") or {}
            label = " ".join(f"{v}" if k == "name" else f"{k}={v}" for k, v in dict(method).items()) \
                if isinstance(method, dict) else str(method)
            v = add(_key(path), _new(s["name"], f"compressed ({label})", path, s["name"]), f"@{s['name']}")
            v["method"] = dict(method) if isinstance(method, dict) else {"name": str(method)}
        elif cmd == "export":
            files = sorted(path.glob("*.gguf")) or ([path] if any(path.glob("*.safetensors")) else [])
            for f in files:
                kind = f"gguf {cfg.get('type', '')}".strip() if f.suffix == ".gguf" else "hf"
                add(_key(f), _new(s["name"] if len(files) == 1 else f.name, f"export ({kind})", f, s["name"]),
                    in_run(str(f)), *([_key(path), f"@{s['name']}"] if len(files) == 1 else []))

    for s in found:  # 2. what the eval stages measured, matched to models by path or name
        cmd, cfg, path = s["command"], s["config"], s["path"]
        files = {"eval perplexity": "perplexity.json", "eval speed": "speed.json", "eval tasks": "tasks.json"}
        if cmd not in files:
            continue
        data = read_json(path / files[cmd])
        if data is None:
            notes.append(f"stage {s['name']} ({cmd}) wrote no {files[cmd]}")
            continue
        model = str(cfg.get("model") or data.get("model", ""))
        if not model:
            continue
        registered = registered_model_dir(model) is not None or model.startswith("smollm2")
        v = add(_key(model), _new(Path(model).name, "teacher" if registered else "model", _local(model)),
                in_run(model))
        if cmd == "eval perplexity" and data.get("ppl") is not None:
            if v["ppl_source"] and v["ppl_source"].startswith("eval"):
                notes.append(f"{v['name']}: several perplexity evaluations; the table shows the first")
            else:
                v["ppl"] = data["ppl"]
                v["ppl_source"] = f"eval perplexity ({s['name']}, context {data.get('context', '?')})"
                v["eval_tokens_per_s"] = data.get("tokens_per_second")
        elif cmd == "eval speed":
            dtypes = data.get("dtypes") or {}
            if dtypes:
                r = dtypes.get("float32") or next(iter(dtypes.values()))
                b1 = [d for d in r.get("decode", []) if d.get("batch") == 1]
                if b1:
                    v["decode_tokens_per_s"] = b1[0].get("tokens_per_s")
                    v["latency_ms"] = (b1[0].get("latency_ms") or {}).get("p50")
                v["peak_mib"] = (r.get("memory") or {}).get("peak_rss_mib")
        elif cmd == "eval tasks":
            accs = [r.get("acc") for r in (data.get("results") or {}).values() if r.get("acc") is not None]
            if accs:
                v["tasks_acc"] = sum(accs) / len(accs)

    unique = list({id(v): v for v in table.values()}.values())
    for v in unique:  # 3. sizes, parameters, training compute
        if v["path"]:
            v["size_bytes"], v["params"] = model_files(Path(v["path"]))
        if v["params"] and v["train_tokens"]:
            v["train_flops"] = 6.0 * v["params"] * v["train_tokens"]  # C ≈ 6·N·D (Kaplan et al. 2020)
        if v["name"] == "smollm2-135m" and v["params"]:
            v["train_flops"] = 6.0 * v["params"] * SMOLLM2_135M_TOKENS
            v["train_tokens"] = SMOLLM2_135M_TOKENS
    for v in unique:  # a compressed or exported model has its source's dense parameter count
        if v["role"].startswith(("export", "compressed")):
            stage = next((s for s in found if s["name"] == v["stage"]), None)
            model = str((stage or {}).get("config", {}).get("model", ""))
            src = table.get(_key(model)) or table.get(in_run(model))
            if src is not None:
                v["params"] = v["params"] or src["params"]
                v["source"] = src["name"]
    order = ("teacher", "distilled", "student", "continued", "from scratch", "compressed", "export", "model")
    unique.sort(key=lambda v: next((i for i, o in enumerate(order) if v["role"].startswith(o)), len(order)))
    return unique, notes


# -- curation ------------------------------------------------------------------------------------

def _jsonl_zst(path: Path):
    import io

    import zstandard

    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as raw:
        for line in io.TextIOWrapper(raw, encoding="utf-8"):
            if line.strip():
                yield json.loads(line)


def planted_kind(meta: dict) -> str | None:
    """The planted kind of a document (``meta.planted``), near copies split by their edit rate."""
    kind = meta.get("planted")
    if kind and isinstance(meta.get("rate"), int | float):
        return f"{kind} {meta['rate']:.0%}"
    return kind


def curation(path: Path) -> dict:
    """summary.json, the signal table, which documents each step removed, planted-junk recall."""
    out: dict[str, Any] = {"summary": read_json(path / "summary.json"), "signals": {}, "removed": {},
                           "planted": {}, "notes": []}
    if out["summary"] is None:
        out["notes"].append(f"{path}/summary.json is missing or unreadable")
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path / "signals.parquet").to_pydict()
        ids = table.pop("id")
        out["signals"] = {"ids": ids, "columns": table}
    except Exception as e:  # noqa: BLE001  (any unreadable table: say so, draw the rest)
        out["notes"].append(f"signals.parquet unreadable ({type(e).__name__})")
    planted: dict[str, dict[str, int]] = {}
    try:
        for doc in _jsonl_zst(path / "removed.jsonl.zst"):
            out["removed"][doc.get("id")] = doc.get("step", "?")
            kind = planted_kind(doc.get("meta") or {})
            if kind:
                row = planted.setdefault(kind, {"planted": 0, "removed": 0})
                row["planted"] += 1
                row["removed"] += 1
                row[f"by {doc.get('step', '?')}"] = row.get(f"by {doc.get('step', '?')}", 0) + 1
        if planted or (path / "kept.jsonl.zst").exists():
            for doc in _jsonl_zst(path / "kept.jsonl.zst"):
                kind = planted_kind(doc.get("meta") or {})
                if kind:
                    planted.setdefault(kind, {"planted": 0, "removed": 0})["planted"] += 1
    except (OSError, ValueError) as e:
        out["notes"].append(f"removed/kept documents unreadable ({type(e).__name__}: {e})")
    out["planted"] = planted
    return out
