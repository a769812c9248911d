"""Write a Llama-architecture model as a GGUF file that llama.cpp and transformers both load.

GGUF (ggml's single-file format, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) holds
key/value metadata (hyper-parameters, tokenizer) and named tensors. This module does what
llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel``) does for a ``LlamaForCausalLM``:

* hyper-parameters under ``llama.*`` and tensors under llama.cpp's names (``token_embd``,
  ``blk.N.attn_q`` ...; ``output`` only when the embeddings are not tied);
* the rows of the Q and K projections permuted per head from Hugging Face's ``rotate_half``
  layout (first half of a head's dimensions paired with the second half) to the interleaved
  layout ggml's RoPE expects (dimensions 2i and 2i+1 paired): :func:`permute_qk`;
* a GPT-2-style byte-level BPE vocabulary (``tokenizer.ggml.model = "gpt2"``), see ``vocab.py``;
* 1-D tensors (norm weights) in F32, 2-D weights in the requested type; for dense weights
  Q8_0, Q5_0, Q4_1 and Q4_0 use ggml's reference block quantisers as ported to numpy in the
  ``gguf`` package (``gguf.quants``, bit-exact with ``quantize_row_q8_0_ref`` /
  ``quantize_row_q4_0_ref``);
* the packed modules of a compressed checkpoint (``llm4all.models.packed``) are written from
  their codes and scales, in the ggml block type they map to exactly when there is one
  (``gguf_packed.py``, blocks in ``gguf_blocks.py``): ``--type auto``.

Q4_0 keeps the output projection (the tied embedding when there is no separate one) at Q8_0:
llama.cpp's ``llama-quantize`` also keeps that tensor at higher precision (Q6_K, which ``gguf``
cannot write), and the Q4_1 SmolLM2 GGUF this toolkit ships stores ``token_embd`` as Q8_0.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from llm4all.errors import UserError
from llm4all.export.gguf_packed import Encoded
from llm4all.runs import atomic_path

GGUF_TYPES = ("auto", "f32", "f16", "q8_0", "q5_0", "q4_1", "q4_0")
GgufType = Literal["auto", "f32", "f16", "q8_0", "q5_0", "q4_1", "q4_0"]
QK = 32  # elements per Q8_0 / Q5_0 / Q4_1 / Q4_0 block (ggml-common.h QK8_0, QK5_0, QK4_1, QK4_0)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a (n_head * head_dim, in) Q or K weight from HF to GGML RoPE layout.

    Within each head, row j < head_dim/2 moves to 2j and row head_dim/2 + j to 2j + 1, so the
    pair that HF's ``rotate_half`` rotates together lands on adjacent rows as in ggml's
    ``rope``. Same as ``LlamaModel.permute`` in llama.cpp's convert_hf_to_gguf.py.
    """
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_qk` (what transformers' GGUF loader applies on reading)."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def ggml_type(name: str, shape: tuple[int, ...], qtype: str, has_output: bool):
    """The GGML type a tensor is stored in for the requested file type ``qtype``."""
    from gguf import GGMLQuantizationType as T

    if len(shape) == 1 or qtype == "f32":
        return T.F32  # norms and other 1-D tensors stay F32, as in llama.cpp
    if qtype == "f16":
        return T.F16
    if shape[-1] % QK:
        return T.F16  # rows that do not split into 32-element blocks cannot be block-quantised
    head = name == "output.weight" or (not has_output and name == "token_embd.weight")
    if qtype in ("q4_0", "q4_1", "q5_0") and head:
        return T.Q8_0
    return T[qtype.upper()]


def encode(w: np.ndarray, t) -> np.ndarray:
    """``w`` (float32, rows along the last axis) in GGML type ``t``: float arrays or raw bytes."""
    from gguf import quants

    return quants.quantize(np.ascontiguousarray(w, dtype=np.float32), t)


def check_llama(config) -> None:
    """Raise a UserError unless ``config`` is a plain Llama that llama.cpp's ``llama`` arch runs."""
    arch = (getattr(config, "architectures", None) or [config.__class__.__name__])[0]
    if getattr(config, "model_type", None) != "llama" or arch != "LlamaForCausalLM":
        window = (f"; it attends through a {config.sliding_window}-token sliding window, which "
                  "llama.cpp's llama architecture would replace by full attention"
                  if getattr(config, "sliding_window", None) else "")
        raise UserError(f"GGUF export supports LlamaForCausalLM (model_type 'llama'); this model is "
                        f"{arch} (model_type {getattr(config, 'model_type', None)!r}){window}; "
                        "use --format hf for other architectures")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise UserError(f"GGUF export: {flag}=True is not supported by the llama GGUF layout")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UserError(f"GGUF export: hidden_act {config.hidden_act!r} is not supported (llama uses silu)")
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise UserError(f"GGUF export: rope_type {rope['rope_type']!r} is not supported; "
                        "valid: default, linear")


def rope_parameters(config) -> dict:
    """RoPE settings across transformers versions (``rope_parameters`` or ``rope_theta``)."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def add_hparams(writer, config) -> None:
    """The ``llama.*`` hyper-parameters, as LlamaModel.set_gguf_parameters writes them."""
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    rope = rope_parameters(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    if rope["rope_type"] == "linear":
        from gguf import RopeScalingType

        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def llama_weights(model) -> Iterator[tuple[str, torch.Tensor | nn.Module, int | None]]:
    """(GGUF name, tensor or packed module, heads whose Q/K rows to permute or None) per weight.

    A packed module (``gguf_packed.packed_modules``: QuantLinear, PackedEmbedding, ...) comes
    once as the module itself, so its codes and scales can be written as ggml blocks.
    """
    from llm4all.export.gguf_packed import packed_modules

    config = model.config
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                 "post_attention_layernorm": "ffn_norm"}
    tied = bool(getattr(config, "tie_word_embeddings", False))
    packed = dict(packed_modules(model))
    done: set[str] = set()
    for key, tensor in model.state_dict().items():
        owner, _, kind = key.rpartition(".")
        if owner == "lm_head" and tied:
            continue  # llama.cpp reuses token_embd for the output when there is no output tensor
        if key.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from rope.freq_base
        source: torch.Tensor | nn.Module = tensor
        if owner in packed:
            if owner in done:
                continue
            done.add(owner)
            source, kind = packed[owner], "weight"
        if owner.startswith("model.layers."):
            layer, _, module = owner[len("model.layers."):].partition(".")
            if module not in per_layer:
                raise UserError(f"GGUF export: unexpected tensor {key!r} in a Llama model")
            name = f"blk.{layer}.{per_layer[module]}.{kind}"
        elif owner in names and kind == "weight":
            name = f"{names[owner]}.weight"
        else:
            raise UserError(f"GGUF export: unexpected tensor {key!r} in a Llama model")
        heads = n_head if name.endswith("attn_q.weight") else n_kv if name.endswith("attn_k.weight") else None
        yield name, source, heads


def llama_tensors(model) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in HF (out, in) order) for every weight, Q/K rows permuted.

    Packed modules give the weights they compute (de-quantised), as ``densify`` would.
    """
    from llm4all.export.gguf_packed import dense

    for name, source, heads in llama_weights(model):
        w = source.detach().float().numpy() if isinstance(source, torch.Tensor) else dense(source)
        yield name, w if heads is None else permute_qk(w, heads)


def encode_tensor(name: str, source, qtype: str, has_output: bool) -> Encoded:
    """One weight in the file's type: packed modules through ``gguf_packed`` (exact where they map)."""
    from llm4all.export.gguf_packed import dense_shape, encode_packed

    if isinstance(source, torch.Tensor):
        w = source.detach().float().numpy()
        t = ggml_type(name, w.shape, "f16" if qtype == "auto" else qtype, has_output)
        data = encode(w, t)
        exact = t.name == "F32" or (t.name == "F16" and bool((data.astype(np.float32) == w).all()))
        return Encoded(t.name, data, exact, "" if exact else f"float weights re-rounded to {t.name}")
    want = "AUTO" if qtype == "auto" else ggml_type(name, dense_shape(source), qtype, has_output).name
    return encode_packed(source, want)


def file_type(counts: dict[str, int]):
    """``general.file_type`` from the commonest 2-D tensor type (llama.cpp prints it as the model's type)."""
    from gguf import LlamaFileType as F

    types = {"F32": F.ALL_F32, "F16": F.MOSTLY_F16, "Q8_0": F.MOSTLY_Q8_0, "Q4_0": F.MOSTLY_Q4_0,
             "Q4_1": F.MOSTLY_Q4_1, "Q5_0": F.MOSTLY_Q5_0}
    weights = {t: n for t, n in counts.items() if t != "F32"} or counts
    return types[max(weights.items(), key=lambda kv: kv[1])[0]]


def write_gguf(model, tokenizer, out: str | Path, qtype: str = "f16", model_dir: Path | None = None,
               name: str = "") -> dict:
    """Write ``model`` + ``tokenizer`` to the GGUF file ``out``; returns per-type tensor counts.

    ``qtype`` "auto" writes a compressed model's packed weights in the ggml types they map to
    exactly (``gguf_packed``) and a dense model in F16. For a model with packed modules the
    result also says whether every tensor is exact (``lossless``) and, when not, why
    (``not_exact``: note → tensor count).
    """
    import gguf

    from llm4all.export.gguf_packed import packed_modules
    from llm4all.export.vocab import add_vocab
    from llm4all.progress import progress

    if qtype not in GGUF_TYPES:
        raise UserError(f"unknown GGUF type {qtype!r}; valid: {', '.join(GGUF_TYPES)}")
    check_llama(model.config)
    out = Path(out)
    if out.suffix != ".gguf":
        raise UserError(f"--out {out}: a GGUF export is a single file ending in .gguf")
    packed = any(True for _ in packed_modules(model))
    weights = list(llama_weights(model))
    has_output = any(n == "output.weight" for n, _, _ in weights)
    counts: dict[str, int] = {}
    not_exact: dict[str, int] = {}
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch="llama")
        inherited = add_vocab(writer, tokenizer, model.config.vocab_size, model_dir)
        writer.add_type("model")
        if "general.name" not in inherited:
            writer.add_name(name or out.stem)
        add_hparams(writer, model.config)
        with progress(f"export gguf ({qtype})", len(weights), "tensors") as advance:
            for tname, source, heads in weights:
                enc = encode_tensor(tname, source, qtype, has_output)
                data = enc.data if heads is None else permute_qk(enc.data, heads)
                # quantised data is raw bytes (rows, bytes per row); the writer derives the shape
                writer.add_tensor(tname, data, raw_dtype=gguf.GGMLQuantizationType[enc.type]
                                  if data.dtype == np.uint8 else None)
                counts[enc.type] = counts.get(enc.type, 0) + 1
                if not enc.exact:
                    not_exact[enc.note] = not_exact.get(enc.note, 0) + 1
                advance()
        writer.add_file_type(file_type(counts))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    result = {"tensor_types": counts, "bytes": out.stat().st_size}
    if packed:
        result.update(lossless=not not_exact, not_exact=not_exact)
    return result


def export_gguf(model: str | Path, out: str | Path, type: GgufType = "auto") -> dict:
    """Load ``model`` (registered name, HF directory, .gguf, packed checkpoint); write it as GGUF ``type``.

    A packed (compressed) checkpoint keeps its codes and scales: ``type="auto"`` writes each
    packed weight in the ggml block type it maps to exactly (``gguf_packed``), an explicit
    type re-expresses the codes when they fit and re-rounds the de-quantised weight when not.
    """
    from llm4all.models.load import load, resolve

    if type not in GGUF_TYPES:
        raise UserError(f"--type {type!r} is not a GGUF type; valid: {', '.join(GGUF_TYPES)}")
    start = time.perf_counter()
    source = resolve(model)
    net, tokenizer = load(source, dtype="float32")
    resized = [n for n, m in net.named_modules() if getattr(m, "llm4all_resized", False)]
    if resized:
        raise UserError(f"{resized[0]}: a structurally pruned model has per-layer shapes that a Llama "
                        "config cannot describe; it cannot be exported to GGUF")
    result = write_gguf(net, tokenizer, out, type, model_dir=source, name=Path(str(model)).name)
    from llm4all.export.gguf_packed import dense_shape

    weights = [s.numel() if isinstance(s, torch.Tensor) else int(np.prod(dense_shape(s)))
               for _, s, _ in llama_weights(net)]
    return {"format": "gguf", "out": str(out), "source": str(model), "type": type,
            "parameters": sum(weights), **result,
            "seconds": round(time.perf_counter() - start, 2)}
