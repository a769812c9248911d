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
import logging
import os
import time
from pathlib import Path
from typing import Literal

from llm4all import __version__
from llm4all.errors import UserError
from llm4all.runs import atomic_dir, write_json

log = logging.getLogger(__name__)

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

    A packed checkpoint (``llm4all compress``) becomes a compressed-tensors directory
    (``export.compressed_tensors``) when its layout has an exact compressed-tensors form, else
    its de-quantised dense weights (with a printed note saying why).
    Returns a summary: output path, dtype, parameter count, safetensors bytes and SHA-256.
    """
    import torch

    from llm4all.models.load import load, resolve
    from llm4all.models.packed import is_packed, read_quant_file
    from llm4all.models.quiet import quiet_transformers

    if dtype not in HF_DTYPES:
        raise UserError(f"--dtype {dtype!r} is not supported; valid: {', '.join(HF_DTYPES)}")
    out = Path(out)
    if out.suffix == ".gguf":
        raise UserError(f"--out {out}: an HF export is a directory; use --format gguf for a .gguf file")
    start = time.perf_counter()
    source = resolve(model)
    if is_packed(source):  # a compressed checkpoint: compressed-tensors where it maps exactly
        from llm4all.export.compressed_tensors import plan

        schemes, reason = plan(read_quant_file(source)["modules"])
        if reason is None:
            return export_packed(model, source, out, schemes, dtype, start)
        log.warning("%s; exporting the de-quantised dense model instead (docs/export.md)", reason)
    net, tokenizer = load(source, dtype=dtype)
    if is_packed(source):  # no compressed-tensors form: export its de-quantised weights
        from llm4all.models.packed.dense import densify

        densify(net, getattr(torch, dtype))
    params = sum(p.numel() for p in net.parameters())  # tied embeddings count once
    with atomic_dir(out) as tmp:
        with quiet_transformers():
            net.save_pretrained(tmp, safe_serialization=True, max_shard_size="100GB")
            tokenizer.save_pretrained(tmp)
        usual_modes(tmp)
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


def usual_modes(directory: Path) -> None:
    """Give the files in ``directory`` the usual mode (safetensors arrive 0600 from a temp file)."""
    mask = os.umask(0)
    os.umask(mask)
    for f in directory.iterdir():
        os.chmod(f, 0o666 & ~mask)


def export_packed(model: str | Path, source: Path, out: Path, schemes: dict, dtype: str,
                  start: float) -> dict:
    """A packed checkpoint as a compressed-tensors directory (``export.compressed_tensors``).

    Scales and dense tensors stay float16, the packed checkpoint's own storage dtype, so
    nothing is rounded (bfloat16 would round the scales), unless ``dtype`` is float32.
    """
    import torch

    from llm4all.export.compressed_tensors import describe, write_compressed_tensors
    from llm4all.runs import write_manifest

    store = torch.float32 if dtype == "float32" else torch.float16
    with atomic_dir(out) as tmp:
        qconfig = write_compressed_tensors(source, tmp, schemes, store)
        usual_modes(tmp)
        weights = tmp / "model.safetensors"
        groups = "; ".join(describe(g) for g in qconfig["config_groups"].values())
        made = {"format": "compressed-tensors", "dtype": str(store).removeprefix("torch."),
                "scheme": f"{qconfig['format']}, {groups}", "quantized_linears": len(schemes),
                "safetensors_bytes": weights.stat().st_size, "sha256": {weights.name: sha256(weights)}}
        made_model = {"path": ".", "role": "export", "format": "compressed-tensors"}
        write_manifest(tmp, "export", models=[made_model],
                       inputs={"model": str(model), "source_dir": str(source)},
                       metrics={"safetensors_bytes": made["safetensors_bytes"]}, **made,
                       exported_by=f"llm4all {__version__} export --format hf",
                       source_provenance=source_provenance(source),
                       seconds=round(time.perf_counter() - start, 2))
    return {"out": str(out), "source": str(model), "source_dir": str(source), **made}
