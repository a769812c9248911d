"""Export a model as a clean Hugging Face directory: config, one safetensors file, tokenizer.

The directory is what ``transformers``, vLLM and the Hub expect (``config.json``,
``model.safetensors``, the tokenizer files, ``generation_config.json``) plus ``llm4all.json``
recording where the weights came from, their dtype, size and SHA-256. It is written to a
temporary sibling and renamed into place (``llm4all.runs.atomic_dir``), so an error never
leaves half a model behind. Tied input/output embeddings are stored once, as transformers
does.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Literal

from llm4all import __version__
from llm4all.errors import UserError
from llm4all.runs import atomic_dir, write_json

HF_DTYPES = ("bfloat16", "float16", "float32")


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def source_provenance(model_dir: Path) -> dict:
    """The ``llm4all.json`` of the source directory (empty if it has none)."""
    meta = model_dir / "llm4all.json"
    return json.loads(meta.read_text()) if meta.exists() else {}


def export_hf(model: str | Path, out: str | Path,
              dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16") -> dict:
    """Write ``model`` (registered name, HF directory or .gguf) as an HF directory at ``out``.

    Returns a summary: output path, dtype, parameter count, safetensors bytes and SHA-256.
    """
    import torch

    from llm4all.models.load import load, resolve
    from llm4all.models.quiet import quiet_transformers

    if dtype not in HF_DTYPES:
        raise UserError(f"--dtype {dtype!r} is not supported; valid: {', '.join(HF_DTYPES)}")
    out = Path(out)
    if out.suffix == ".gguf":
        raise UserError(f"--out {out}: an HF export is a directory; use --format gguf for a .gguf file")
    start = time.perf_counter()
    source = resolve(model)
    net, tokenizer = load(source, dtype=dtype)
    if (source / "llm4all_quant.json").exists():  # a compressed checkpoint: export its de-quantised weights
        from llm4all.models.packed.dense import densify

        densify(net, getattr(torch, dtype))
    params = sum(p.numel() for p in net.parameters())  # tied embeddings count once
    with atomic_dir(out) as tmp:
        with quiet_transformers():
            net.save_pretrained(tmp, safe_serialization=True, max_shard_size="100GB")
            tokenizer.save_pretrained(tmp)
        mask = os.umask(0)
        os.umask(mask)
        for f in tmp.iterdir():  # safetensors arrive 0600 from a temp file; give them the usual mode
            os.chmod(f, 0o666 & ~mask)
        weights = sorted(tmp.glob("*.safetensors"))
        summary = {
            "format": "hf", "out": str(out), "source": str(model), "source_dir": str(source),
            "dtype": dtype, "parameters": params,
            "safetensors_bytes": sum(f.stat().st_size for f in weights),
            "sha256": {f.name: sha256(f) for f in weights},
        }
        write_json(tmp / "llm4all.json", {
            **summary, "exported_by": f"llm4all {__version__} export --format hf",
            "source_provenance": source_provenance(source),
            "seconds": round(time.perf_counter() - start, 2),
        })
    return summary
