"""Which GGUF type a packed llm4all weight maps to, exactly or as the closest, and its bytes.

A packed Linear or embedding (``llm4all.models.packed``) whose weight is an integer grid
W = k·d with one float16 scale d per 32 input columns is re-expressed in ggml blocks
(``gguf_blocks.py``) without re-rounding: ``--type auto`` picks the smallest block type that
holds it exactly, in the order Q4_0 (4.5 bits/weight), Q4_1 (5.0), Q5_0 (5.5), Q8_0 (8.5):

* symmetric ≤ 4-bit codes, and every 2- or 3-bit layout: Q4_0 (k = code − zero ∈ [−8, 7]);
* asymmetric 4-bit: Q4_1 when every block's m = −offset·d is a float16 number, else Q5_0
  (k ∈ [−15, 15] always fits; 10 % larger than Q4_1);
* symmetric int8 (per channel or groups of 32·n) and ``--embeddings int8`` rows: Q8_0;
* float16 embeddings, norms, sparse (pruned) Linears: F16 / F32, the stored values.

Layouts no ggml type holds exactly get the closest type and a note saying why: asymmetric
int8 (k spans up to [−255, 255]: Q8_0 re-rounded; F32 is exact at 4 bytes/weight), groups
that are not a multiple of 32 or rows not a multiple of 32, LLM.int8() outlier columns
(Q8_0 re-rounded), ternary and W8A8 weights whose scale is float32 (Q4_0 / Q8_0 with the scale
rounded to float16), low-rank U·V (F16 of the product). Structurally pruned models are refused
by the caller (their per-layer shapes do not fit a Llama config).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from llm4all.export import gguf_blocks as gb

AUTO_ORDER = ("Q4_0", "Q4_1", "Q5_0", "Q8_0")  # smallest first


@dataclass
class Grid:
    """A weight W = k·d: integers k (rows, cols) and one scale d per 32-weight block."""

    k: np.ndarray  # int16 (rows, cols)
    d: np.ndarray  # float16 (rows, cols / 32)
    exact_scale: bool  # d is the module's own scale (float16), not a rounding of it
    layout: str  # e.g. "4-bit asymmetric codes in groups of 64"


@dataclass
class Encoded:
    """One tensor as written: ggml type name, data, and whether it de-quantises exactly."""

    type: str  # "Q4_0", "F16", ...
    data: np.ndarray  # uint8 (rows, bytes) blocks, or float32/float16 (rows, cols)
    exact: bool
    note: str = ""  # when not exact: what the layout is and what was written instead


def layout(module: nn.Module) -> str:
    """A short description of a packed module's storage, for notes."""
    from llm4all.models.packed.embedding import PackedEmbedding
    from llm4all.models.packed.qlinear import QuantLinear

    if isinstance(module, QuantLinear):
        kind = "symmetric" if module.symmetric else "asymmetric"
        groups = ("per channel" if module.group_size == module.in_features
                  else f"in groups of {module.group_size}")
        return f"{module.bits}-bit {kind} codes {groups}"
    if isinstance(module, PackedEmbedding):
        return f"{module.kind} embedding rows"
    spec = module.spec() if hasattr(module, "spec") else {"kind": "dense"}
    return {"int8": "int8 (W8A8 / LLM.int8()) weights", "ternary": "ternary weights",
            "lowrank": "low-rank U·V factors"}.get(spec["kind"], f"{spec['kind']} weights")


def fp16_exact(x: torch.Tensor) -> bool:
    x = x.float()
    return bool((x.half().float() == x).all())


def integer_grid(module: nn.Module) -> Grid | str:
    """The module's weight as a ``Grid``, or the reason it is not one (a line for the user)."""
    from llm4all.models.packed.embedding import PackedEmbedding
    from llm4all.models.packed.formats import unpack_ternary
    from llm4all.models.packed.int8 import Int8Linear, TernaryLinear
    from llm4all.models.packed.qlinear import QuantLinear

    desc = layout(module)
    rows, cols = dense_shape(module)
    if cols % gb.QK:
        return f"{desc}: rows of {cols} weights do not split into ggml's 32-weight blocks"

    def per_block(scales: torch.Tensor) -> np.ndarray:
        """(rows, groups) scales → float16 (rows, cols/32): each group's scale for each of its blocks."""
        return scales.half().repeat_interleave(cols // gb.QK // scales.shape[1], dim=1).numpy()

    if isinstance(module, QuantLinear):
        if module.group_size % gb.QK:
            return f"{desc}: groups of {module.group_size} are not a multiple of ggml's 32-weight blocks"
        codes = module.codes().to(torch.int16)  # (rows, cols)
        zero = (torch.full_like(module.scales, 2 ** (module.bits - 1), dtype=torch.int16) if module.symmetric
                else module.zeros.to(torch.int16))  # (rows, groups)
        k = codes - zero.repeat_interleave(module.group_size, dim=1)
        return Grid(k.numpy(), per_block(module.scales), True, desc)
    if isinstance(module, PackedEmbedding) and module.kind == "int8":
        return Grid(module.qweight.to(torch.int16).numpy(), per_block(module.scales[:, None]), True, desc)
    if isinstance(module, TernaryLinear):  # one γ for the matrix (TQ1_0/TQ2_0 would be smaller; not written)
        gamma = module.scales.float().reshape(1, 1).expand(rows, 1)
        return Grid(unpack_ternary(module.qweight, cols).to(torch.int16).numpy(), per_block(gamma),
                    fp16_exact(module.scales), desc)
    if isinstance(module, Int8Linear):
        if module.outlier_idx.numel():
            return f"{desc}: float16 outlier columns inside the int8 blocks"
        k = module.qweight_t.T.to(torch.int16).numpy()
        return Grid(k, per_block(module.scales[:, None]), fp16_exact(module.scales), desc)
    return f"{desc}: not an integer grid"


def dense_shape(module: nn.Module) -> tuple[int, int]:
    """(rows, cols) of the weight a module computes (out, in) — (vocabulary, hidden) for embeddings."""
    if hasattr(module, "num_embeddings") and hasattr(module, "embedding_dim"):
        return module.num_embeddings, module.embedding_dim
    return module.out_features, module.in_features


def dense(module: nn.Module) -> np.ndarray:
    """The float32 weight llm4all computes with (out, in)."""
    with torch.no_grad():
        w = module.dense_weight(torch.float32) if hasattr(module, "dense_weight") else module.weight
        return w.detach().float().numpy()


def written(module: nn.Module, kind: str, note: str) -> Encoded:
    """The de-quantised weight in ``kind``: F32/F16 values, or ggml's reference quantisers (re-rounded).

    F32 is exact (k·d has at most 20 significant bits) except for low-rank factors, whose
    product llm4all never forms; F16 is exact when every value is a float16 number.
    """
    from gguf import GGMLQuantizationType, quants

    w = dense(module)
    data = quants.quantize(np.ascontiguousarray(w), GGMLQuantizationType[kind])
    lowrank = "low-rank" in layout(module)
    exact = not lowrank and (kind == "F32" or (kind == "F16" and bool((data.astype(np.float32) == w).all())))
    return Encoded(kind, data, exact, "" if exact else note)


@dataclass
class Choice:
    """``--type auto`` for one module: the ggml type, whether exact, and how it is written."""

    kind: str
    exact: bool
    note: str = ""
    from_grid: bool = True  # False: written from the de-quantised weight (``written``)


def choose(module: nn.Module) -> Choice:
    """The smallest ggml type that stores the module exactly, else the closest one (with a note)."""
    from llm4all.models.packed.embedding import PackedEmbedding

    if isinstance(module, PackedEmbedding) and module.kind == "float16":
        return Choice("F16", True, from_grid=False)
    grid = integer_grid(module)
    if isinstance(grid, str):
        if "low-rank" in grid:
            return Choice("F16", False, f"{grid}: F16 of the product (closest)", False)
        if "rows of" in grid:
            return Choice("F16", False, f"{grid}: F16 (closest)", False)
        return Choice("Q8_0", False, f"{grid}: Q8_0 re-rounded from the de-quantised weights (closest)",
                      False)
    for kind in AUTO_ORDER:
        if gb.fits(grid.k, grid.d, kind):
            if grid.exact_scale:
                return Choice(kind, True)
            return Choice(kind, False, f"{grid.layout}: float32 scale rounded to float16 in {kind} (closest)")
    return Choice("Q8_0", False, f"{grid.layout}: code − zero spans more integers than any ggml block type "
                  "holds with one scale; Q8_0 re-rounded (closest; F32 is exact at 4 bytes/weight)", False)


def encode_packed(module: nn.Module, want: str = "AUTO") -> Encoded:
    """Encode a packed module as ggml type ``want`` ("AUTO", "Q4_0", ..., "F16", "F32"), exactly when it can.

    The weight is (rows, cols) in Hugging Face order: the caller permutes Q/K rows afterwards
    (every encoding here is row by row, so permuting rows of the result is permuting the weight).
    """
    from llm4all.models.packed.embedding import PackedEmbedding

    if isinstance(module, PackedEmbedding) and module.kind == "float16" and want in ("AUTO", "F16"):
        return Encoded("F16", module.weight.detach().numpy().astype(np.float16), True)
    if want == "AUTO":
        choice = choose(module)
        if not choice.from_grid:
            return written(module, choice.kind, choice.note)
        want = choice.kind
    if want in ("F32", "F16"):
        return written(module, want, f"{layout(module)}: {want} of the de-quantised weights")
    grid = integer_grid(module)
    if isinstance(grid, str):
        return written(module, want, f"{grid}: {want} re-rounded from the de-quantised weights")
    scale_note = ("" if grid.exact_scale
                  else f"{grid.layout}: float32 scale rounded to float16 in {want} (closest)")
    if want == "Q4_1" and (np.ptp(gb.blocks(grid.k), axis=-1) <= 15).all():
        data, err = gb.q4_1(grid.k, grid.d)
        note = scale_note or ("" if not (err > 0).any() else
                              f"{grid.layout}: Q4_1's minimum m rounded to float16 in some blocks (error "
                              "< 0.8 % of a step; Q5_0 is exact, so is Q4_1 after compress with gguf_exact)")
        return Encoded("Q4_1", data, not note, note)
    if want in gb.RANGES and gb.fits(grid.k, grid.d, want):
        return Encoded(want, gb.ENCODERS[want](grid.k, grid.d), not scale_note, scale_note)
    return written(module, want, f"{grid.layout} does not fit {want}: re-rounded")


def packed_modules(model: nn.Module):
    """(name, module) of every packed weight module: quantised/factorised Linears, packed embeddings."""
    from llm4all.models.packed.embedding import PackedEmbedding, TiedHead

    for name, m in model.named_modules():
        if isinstance(m, TiedHead):
            continue
        if isinstance(m, PackedEmbedding) or (hasattr(m, "dense_weight") and hasattr(m, "spec")):
            yield name, m


def gguf_mapping(model: nn.Module) -> dict:
    """The GGUF types ``export --type auto`` writes for a compressed model, and whether they are exact.

    Returns ``{"type": lower-case name of the commonest Linear type, "exact": bool,
    "tensors": {ggml type: count}, "notes": {note: count}}`` over the 2-D weights; plain float
    weights (an unquantised embedding, pruned Linears) are stored float16 in a packed checkpoint,
    hence F16 exactly. Norms (F32) are not counted.
    """
    from llm4all.models.packed.embedding import PackedEmbedding

    tensors: Counter = Counter()
    linears: Counter = Counter()
    notes: Counter = Counter()
    packed = dict(packed_modules(model))
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, m in model.named_modules():
        if getattr(m, "llm4all_resized", False):
            notes["structurally pruned: per-layer shapes a Llama GGUF cannot describe (not exportable)"] += 1
            continue
        if name in packed:
            choice = choose(m)
        elif isinstance(m, nn.Linear | nn.Embedding) and not (tied and name == "lm_head"):
            choice = Choice("F16", True, from_grid=False)  # stored float16
        else:
            continue
        tensors[choice.kind] += 1
        if not isinstance(m, PackedEmbedding | nn.Embedding) and name != "lm_head":
            linears[choice.kind] += 1
        if not choice.exact:
            notes[choice.note] += 1
    main = (linears or tensors or Counter({"F16": 1})).most_common(1)[0][0]
    asymmetric4 = any(getattr(m, "bits", 0) == 4 and not m.symmetric for m in packed.values())
    hint = ("Q5_0 holds asymmetric 4-bit codes exactly; Q4_1 (9 % smaller) is exact when the scales are "
            "rounded with the quantizer option gguf_exact: true") if main == "Q5_0" and asymmetric4 else ""
    return {"type": main.lower(), "exact": not notes, "tensors": dict(tensors), "notes": dict(notes),
            **({"hint": hint} if hint else {})}


def describe(mapping: dict) -> str:
    """One line: "q4_0, exact" or "q8_0, closest (N tensors not exact: reason)"."""
    hint = f" ({mapping['hint']})" if mapping.get("hint") else ""
    if mapping["exact"]:
        return f"{mapping['type']}, exact{hint}"
    note, count = max(mapping["notes"].items(), key=lambda kv: kv[1])
    more = f"; and {len(mapping['notes']) - 1} other reasons" if len(mapping["notes"]) > 1 else ""
    return f"{mapping['type']}, closest ({count} tensors not exact: {note}{more})"
