"""Write a packed checkpoint as a compressed-tensors checkpoint, the format vLLM serves.

compressed-tensors (Neural Magic / Red Hat; the format llm-compressor writes and vLLM's
``compressed-tensors`` quantization method reads) stores a quantised Linear ``NAME`` as
(layouts read from the package's source, release 0.20.1: ``compressors/pack_quantized``,
``compressors/naive_quantized``, ``quantization/quant_args.py``, ``quant_scheme.py``):

* ``pack-quantized`` (weight-only W4A16 / W8A16): ``NAME.weight_packed`` int32
  (out, ceil(in·b/32)), the b-bit values of each row packed along the input dimension, value
  k at bits k·b … k·b + b − 1 of the little-endian bit stream (so 8 codes per int32 for
  b = 4, value 0 in the lowest nibble; 4 per int32 for b = 8), each stored as q + 2^(b−1)
  where q ∈ [−2^(b−1), 2^(b−1) − 1] is the signed value; ``NAME.weight_scale`` (out, groups)
  in the model dtype; ``NAME.weight_shape`` int64 (out, in); and, when asymmetric,
  ``NAME.weight_zero_point`` int32 (ceil(out·b/32), groups): the signed zero points z_s
  packed the same way along the *output* dimension. W = (q − z_s)·scale.
* ``int-quantized`` (W8A8): ``NAME.weight`` int8 (out, in) and ``NAME.weight_scale``
  (out, 1), input activations quantised per token at run time.

llm4all's codes are unsigned (``models/packed/formats.py``): W = (c − z)·s, with z = 2^(b−1)
when symmetric. With q = c − 2^(b−1) and z_s = z − 2^(b−1) the two agree, and the stored
value q + 2^(b−1) *is* c (likewise z): the export re-packs llm4all's codes and zero points
bit for bit, it never re-quantises. ``config.json`` gets the ``quantization_config``
(``quant_method: compressed-tensors``, ``format``, ``config_groups``, ``ignore``).

Layouts without an exact compressed-tensors form that vLLM runs (2- and 3-bit codes, ternary,
LLM.int8() outlier columns, low-rank, unstructured sparsity) are exported as the de-quantised
dense model instead (``plan`` says why); structured pruning is refused. The table is in
docs/export.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llm4all.errors import UserError

#: bits of the codes vLLM's WNA16 (Marlin) kernels take: uint4b8 / uint8b128, uint4 / uint8 with zero points
VLLM_BITS = (4, 8)


@dataclass(frozen=True)
class Scheme:
    """One compressed-tensors quantisation scheme (a ``config_groups`` entry)."""

    format: str  # "pack-quantized" (weight-only) or "int-quantized" (W8A8)
    bits: int
    symmetric: bool
    group_size: int | None  # None: one scale per output channel (strategy "channel")
    dynamic_tokens: bool = False  # input activations quantised to int8 per token at run time

    def to_config(self, targets: list[str], with_format: bool = False) -> dict:
        """The ``config_groups`` entry: QuantizationScheme fields, as llm-compressor writes them.

        ``with_format`` names the format in the group too (needed by ``mixed-precision``; left out
        otherwise, for older readers whose QuantizationScheme has no ``format`` field).
        """
        weights = {"num_bits": self.bits, "type": "int", "symmetric": self.symmetric,
                   "strategy": "channel" if self.group_size is None else "group",
                   "group_size": self.group_size, "dynamic": False, "actorder": None,
                   "block_structure": None, "observer": "minmax", "observer_kwargs": {}}
        activations = None
        if self.dynamic_tokens:
            activations = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                           "group_size": None, "dynamic": True, "actorder": None,
                           "block_structure": None, "observer": None, "observer_kwargs": {}}
        group = {"targets": targets, "weights": weights, "input_activations": activations,
                 "output_activations": None}
        return {**group, "format": self.format} if with_format else group


def scheme_for(spec: dict) -> Scheme | str:
    """The scheme of one ``llm4all_quant.json`` module entry, or why it has none vLLM runs."""
    kind = spec["kind"]
    if kind == "int":
        bits = spec["bits"]
        if bits not in VLLM_BITS:
            return (f"{bits}-bit codes: compressed-tensors can store them but vLLM's W{bits}A16 "
                    f"kernels take {' and '.join(map(str, VLLM_BITS))}-bit codes only")
        group = None if spec["group_size"] == spec["in_features"] else spec["group_size"]
        return Scheme("pack-quantized", bits, spec["symmetric"], group)
    if kind == "int8":
        if spec.get("outliers", 0):
            return ("LLM.int8() outlier columns (fp16 columns beside int8 weights) have no "
                    "compressed-tensors form")
        return Scheme("int-quantized", 8, True, None, dynamic_tokens=True)
    if kind == "ternary":
        return "ternary (BitNet b1.58) weights have no compressed-tensors scheme that vLLM runs"
    if kind == "lowrank":
        return "low-rank (U·V) factors have no compressed-tensors form"
    if kind == "sparse":
        return "unstructured sparsity has no compressed-tensors form that vLLM runs (only 2:4)"
    raise ValueError(f"unknown module kind {kind!r} in llm4all_quant.json")


def plan(modules: dict[str, dict]) -> tuple[dict[str, Scheme], str | None]:
    """The scheme of every compressed Linear, or ``({}, reason)`` when the model must go dense.

    Args:
        modules: the ``modules`` mapping of a packed checkpoint's ``llm4all_quant.json``.
    """
    schemes: dict[str, Scheme] = {}
    for name, spec in modules.items():
        if spec["kind"] == "embedding":
            continue  # written dense: see docs/export.md
        if spec["kind"] == "dense":  # a Linear whose shape structured pruning changed
            raise UserError(f"{name}: a structurally pruned model has per-layer shapes that a Llama "
                            "config cannot describe; it cannot be exported to HF or GGUF")
        scheme = scheme_for(spec)
        if isinstance(scheme, str):
            return {}, f"{name}: {scheme}"
        schemes[name] = scheme
    return schemes, None


def pack_int32(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned b-bit values (rows, cols) -> int32 (rows, ceil(cols·b/32)), value k at bits k·b.

    Only for b dividing 32 (4 and 8 here), where no value straddles two words.
    """
    per = 32 // bits
    rows, cols = values.shape
    v = torch.nn.functional.pad(values.to(torch.int64), (0, (-cols) % per))
    v = v.view(rows, -1, per)  # (rows, words, values per word)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    words = (v << shifts).sum(-1)  # int64 in [0, 2^32)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # same 32 bits, signed


def unpack_int32(words: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of ``pack_int32``: unsigned values (rows, cols) as int64."""
    per = 32 // bits
    w = words.to(torch.int64) & 0xFFFFFFFF  # the 32 bits as an unsigned number
    shifts = torch.arange(per, dtype=torch.int64) * bits
    values = (w[:, :, None] >> shifts) & ((1 << bits) - 1)  # (rows, words, per)
    return values.reshape(words.shape[0], -1)[:, :cols]


def linear_tensors(module: nn.Module, scheme: Scheme, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors (leaf name -> tensor) of a QuantLinear or an Int8Linear."""
    if scheme.format == "int-quantized":  # Int8Linear: int8 (in, out) transposed, fp32 scale per row
        out = {"weight": module.qweight_t.T.contiguous(),
               "weight_scale": module.scales.float()[:, None].contiguous()}  # float32, as vLLM allocates it
    else:
        codes = module.codes()  # uint8 (out, in) unsigned, = the stored value q + 2^(b−1)
        out = {"weight_packed": pack_int32(codes, scheme.bits),
               "weight_scale": module.scales.to(dtype).contiguous(),  # (out, groups)
               "weight_shape": torch.tensor([module.out_features, module.in_features], dtype=torch.int64)}
        if not scheme.symmetric:  # zero points packed along the output dimension
            out["weight_zero_point"] = pack_int32(module.zeros.T, scheme.bits).T.contiguous()
    if module.bias is not None:
        out["bias"] = module.bias.to(dtype)
    return out


def quantization_config(schemes: dict[str, Scheme], ignore: list[str]) -> dict:
    """config.json's ``quantization_config``: one group per distinct scheme.

    A scheme shared by every quantised Linear targets the class ``Linear`` (what llm-compressor
    writes; the Linears left dense are in ``ignore``); otherwise each group lists its modules.
    """
    groups: dict[Scheme, list[str]] = {}
    for name, scheme in schemes.items():
        groups.setdefault(scheme, []).append(name)
    single = len(groups) == 1
    formats = {s.format for s in groups}
    mixed = len(formats) > 1
    return {
        "quant_method": "compressed-tensors",
        "format": "mixed-precision" if mixed else formats.pop(),
        "quantization_status": "compressed",
        "config_groups": {f"group_{i}": s.to_config(["Linear"] if single else names, with_format=mixed)
                          for i, (s, names) in enumerate(groups.items())},
        "ignore": ignore if single else [],
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
    }


def compressed_state(model: nn.Module, schemes: dict[str, Scheme],
                     dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of the export: compressed Linears, and the rest dense in ``dtype``."""
    from llm4all.models.packed.embedding import PackedEmbedding

    tensors: dict[str, torch.Tensor] = {}
    owned: set[str] = set()  # modules whose tensors are written here, not from the state dict
    for name, m in model.named_modules():
        if name in schemes:
            tensors.update({f"{name}.{k}": v for k, v in linear_tensors(m, schemes[name], dtype).items()})
            owned.add(name)
        elif isinstance(m, PackedEmbedding):  # float16 or int8 rows -> dense rows in dtype
            tensors[f"{name}.weight"] = m.dense_weight(torch.float32).to(dtype)
            owned.add(name)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for key, t in model.state_dict().items():
        owner = key.rpartition(".")[0]
        if owner in owned or (tied and key == "lm_head.weight"):
            continue
        tensors[key] = t.detach().to(dtype) if t.is_floating_point() else t.detach()
    return {k: v.contiguous() for k, v in tensors.items()}


def write_compressed_tensors(source: Path, directory: Path, schemes: dict[str, Scheme],
                             dtype: torch.dtype) -> dict:
    """Write the packed checkpoint ``source`` as a compressed-tensors HF model into ``directory``.

    Args:
        source: a packed checkpoint directory (``llm4all compress`` output).
        directory: an existing, empty directory: gets config.json (with the
            ``quantization_config``), generation_config.json, the tokenizer and model.safetensors.
        schemes: ``plan``'s scheme of every compressed Linear.
        dtype: dtype of the scales and of the dense tensors (embeddings, norms) and of config.json.
    Returns the ``quantization_config``.
    """
    from safetensors.torch import save_file

    from llm4all.models.packed import load_packed
    from llm4all.models.quiet import quiet_transformers

    net, tokenizer = load_packed(source, dtype=torch.float32)
    dense_linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and n not in schemes]
    if "lm_head" not in dense_linears:
        dense_linears.append("lm_head")  # a tied or packed head: written dense either way
    qconfig = quantization_config(schemes, sorted(dense_linears))
    tensors = compressed_state(net, schemes, dtype)
    config = net.config
    config.quantization_config = qconfig
    config.dtype = dtype
    with quiet_transformers():
        config.save_pretrained(directory)
        if net.generation_config is not None:
            net.generation_config.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return qconfig


def describe(group: dict) -> str:
    """A config group in a few words, e.g. ``int4 symmetric, group 128``."""
    w = group["weights"]
    where = f"group {w['group_size']}" if w["strategy"] == "group" else "per channel"
    acts = ", int8 activations per token" if group["input_activations"] else ""
    return f"int{w['num_bits']} {'symmetric' if w['symmetric'] else 'asymmetric'}, {where}{acts}"
