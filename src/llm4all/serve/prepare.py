"""The file an engine serves, made from whatever model ``llm4all serve`` was given.

llama.cpp serves a GGUF file: a .gguf is served as it is, a registered name whose source is a
GGUF (smollm2-135m) too; an HF directory is exported once with llm4all's GGUF exporter and a
packed checkpoint through :func:`gguf_from_packed`. vLLM serves a directory: an HF directory as
it is, a registered name or .gguf through its converted HF directory, a packed checkpoint
through :func:`hf_from_packed`. Exports are cached under ``$LLM4ALL_CACHE/serve/``, keyed by
the source files' names, sizes and modification times, so a second ``serve`` starts at once
and a retrained model is exported again.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from llm4all.errors import UserError

log = logging.getLogger(__name__)


def fingerprint(path: Path, *extra: str) -> str:
    """A short key for a model file or directory's current version (names, sizes, mtimes)."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256("|".join(extra).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def serve_cache() -> Path:
    from llm4all.models.load import cache_dir

    return cache_dir() / "serve"


def source_of(model: str | Path) -> Path:
    """The file or directory behind ``model``: a path as given, a registered name's source."""
    from llm4all.catalog import MODELS

    path = Path(model)
    if path.exists():
        return path
    if str(model) in MODELS.names():
        return Path(MODELS.get(str(model))())
    from llm4all.models.load import resolve

    return resolve(model)  # raises the UserError listing what a model can be


def gguf_from_packed(packed: Path, out: Path) -> dict:
    """GGUF of a packed checkpoint, lossless: its codes and scales written as the ggml blocks they
    map to exactly (``export.gguf_packed``; symmetric int4 -> Q4_0, asymmetric -> Q5_0 or Q4_1)."""
    from llm4all.export.gguf import export_gguf

    return export_gguf(packed, out, type="auto")


def hf_from_packed(packed: Path, out: Path) -> dict:
    """HF directory of a packed checkpoint for vLLM: compressed-tensors (``export.compressed_tensors``),
    its int4/int8 codes re-packed as vLLM's pack-quantized layout (de-quantised where none maps)."""
    from llm4all.export.hf import export_hf

    return export_hf(packed, out, dtype="bfloat16")


def gguf_for(model: str | Path, type: str = "q8_0") -> Path:
    """A GGUF file of ``model`` for llama.cpp (the file itself, or a cached export in ``type``)."""
    from llm4all.models.packed import is_packed

    source = source_of(model)
    if source.is_file():
        if source.suffix != ".gguf":
            raise UserError(f"{model}: llama.cpp serves .gguf files, HF directories or packed "
                            f"checkpoints; {source.name} is none of them")
        return source
    packed = is_packed(source)
    out = serve_cache() / f"{source.name}-{fingerprint(source, 'packed' if packed else type)}.gguf"
    if out.is_file():  # written atomically: it exists only once complete
        return out
    if packed:
        log.info("exporting packed checkpoint %s to GGUF (once) -> %s", source, out)
        gguf_from_packed(source, out)
    elif type in ("q4_k_m", "q5_k_m", "q6_k"):
        from llm4all.export.kquants import export_kquant

        log.info("exporting %s to GGUF %s (once) -> %s", source, type, out)
        export_kquant(source, out, type=type)
    else:
        from llm4all.export.gguf import export_gguf

        log.info("exporting %s to GGUF %s (once) -> %s", source, type, out)
        export_gguf(source, out, type=type)
    return out


def hf_for(model: str | Path) -> Path:
    """An HF model directory of ``model`` for vLLM."""
    from llm4all.models.load import resolve
    from llm4all.models.packed import is_packed

    source = source_of(model)
    if source.is_dir() and is_packed(source):
        out = serve_cache() / f"{source.name}-{fingerprint(source, 'hf')}"
        if not (out / "config.json").is_file():
            log.info("exporting packed checkpoint %s for vLLM (once) -> %s", source, out)
            hf_from_packed(source, out)
        return out
    return resolve(source)  # an HF directory as it is; a GGUF through its converted directory
