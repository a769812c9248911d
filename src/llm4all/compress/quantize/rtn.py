"""The ``rtn`` and ``int8`` methods: round-to-nearest integer weights, per channel or per group.

Per-channel int8 absmax and zero-point quantisation follow Dettmers et al. 2022
("LLM.int8()", section 2); group-wise int4 round-to-nearest is the RTN baseline of Frantar
et al. 2023 ("GPTQ", section 5). The quantiser itself (codes, scales, zero points, the
``gguf_exact`` scale rounding) is the packed format's, ``models/packed/rtn.py``.
"""

from __future__ import annotations

from torch import nn

from llm4all.catalog import QUANTIZERS
from llm4all.compress.method import InputStats, Method
from llm4all.errors import UserError
from llm4all.models.packed.rtn import (  # noqa: F401  (the quantiser's names, used from here too)
    GGUF_SCALE_BITS,
    Quantized,
    check_bits_group,
    gguf_scale,
    quant_params,
    quantize_codes,
    rtn_quantize,
    to_module,
)


def check_gguf_exact(bits: int, symmetric: bool, gguf_exact: bool, where: str) -> None:
    """``gguf_exact`` changes asymmetric 4-bit scales; asymmetric 8-bit has no exact ggml type at all."""
    if gguf_exact and bits == 8 and not symmetric:
        raise UserError(f"{where}: gguf_exact with asymmetric 8-bit codes: no ggml type holds them exactly "
                        "(code − zero needs 9 bits); use symmetric: true (Q8_0)")


@QUANTIZERS.register("rtn")
def rtn(bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
        gguf_exact: bool = False) -> Method:
    """Round-to-nearest b-bit weights per group (absmax or zero-point; Frantar et al. 2023 baseline)."""
    check_bits_group(bits, None, 1, "rtn")
    check_gguf_exact(bits, symmetric, gguf_exact, "rtn")

    def compress(name: str, linear: nn.Linear, stats: InputStats | None) -> nn.Module:
        check_bits_group(bits, group_size, linear.in_features, name)
        return to_module(rtn_quantize(linear.weight, bits, group_size, symmetric, gguf_exact), linear)

    options = {"bits": bits, "group_size": group_size, "symmetric": symmetric, "gguf_exact": gguf_exact}
    return Method("rtn", options, compress)


@QUANTIZERS.register("int8")
def int8(symmetric: bool = True) -> Method:
    """Per-channel int8 weights, absmax (symmetric) or zero-point (Dettmers et al. 2022, section 2)."""
    method = rtn(bits=8, group_size=None, symmetric=symmetric)
    method.name = "int8"
    return method
