"""KV caches that run: full precision in a chosen dtype, or quantised to int8 / int4 the KIVI way.

KIVI (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML,
sec. 3 and Algorithm 1) observes that keys have outlier *channels* while values do not, and so
quantises

- **keys per channel**: the min and max of each channel over a group of ``group_size`` tokens
  set that channel's scale and zero point (fig. 2: per-token key quantisation loses the most);
- **values per token**: each token's channels, in groups of ``group_size``, get their own scale
  and zero point;
- asymmetrically (``x ≈ scale · q + min``, q in 0 … 2^bits − 1, round to nearest), with the
  ``residual`` most recent tokens kept in full precision: per-channel groups need
  ``group_size`` tokens before they can be formed, and the recent tokens matter most. Once the
  full-precision part reaches ``residual`` tokens, its oldest ``residual`` tokens (a multiple of
  ``group_size``) are quantised and appended to the quantised part; it is never re-quantised (a
  round trip through the codes would add error each time — transformers' ``QuantizedLayer``
  re-quantises the whole cache at every flush).

The paper's defaults are 2 bits, G = 32, R = 128; llm4all offers 8 and 4 bits (``int8``,
``int4``) with the same G and R. The forward pass that produced a token always attends to its
exact keys and values (the residual); later ones read the dequantised codes. Codes are stored as
uint8 (two int4 codes per byte), scales and minima as float16, so a cached value costs
``bits / 8 + 2 · 2 / group_size`` bytes (:func:`bytes_per_value`: 0.625 for int4, 1.125 for int8
at G = 32, against 2 for fp16 and 4 for fp32), plus the residual's full-precision tokens.

``kv_cache(model, "int4")`` returns a transformers ``Cache`` for ``model(..., cache=...)`` and
``generate``; ``cache_bytes(cache)`` counts the bytes it holds, measured from its tensors.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from llm4all.errors import UserError

#: ``--kv-dtype`` values: "" or auto = the model's dtype
KV_DTYPES = ("auto", "fp32", "fp16", "bf16", "int8", "int4")
FLOAT_KV = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
QUANT_BITS = {"int8": 8, "int4": 4}
GROUP_SIZE = 32  # KIVI's G
RESIDUAL = 128  # KIVI's R


def bytes_per_value(kv_dtype: str, group_size: int = GROUP_SIZE) -> float:
    """Bytes one cached key or value element costs in ``kv_dtype``: codes plus an fp16 scale and
    an fp16 minimum per ``group_size`` values (``plan.memory.kv_bytes_per_value``, tested equal)."""
    if kv_dtype in FLOAT_KV:
        return float(torch.finfo(FLOAT_KV[kv_dtype]).bits // 8)
    if kv_dtype in QUANT_BITS:
        return QUANT_BITS[kv_dtype] / 8 + 2 * 2 / group_size
    raise UserError(f"--kv-dtype {kv_dtype!r}; valid: {', '.join(KV_DTYPES)}")


def quantize(x: torch.Tensor, bits: int, dim: int, group_size: int):
    """Asymmetric min-max quantisation of ``x`` in groups of ``group_size`` along ``dim``.

    Returns (codes, scale, minimum) with ``dim`` moved last: codes uint8 (two 4-bit codes per
    byte when bits = 4), scale and minimum float16 of shape (..., groups, 1).
    """
    x = x.float().movedim(dim, -1)
    g = x.reshape(*x.shape[:-1], -1, group_size)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-8).half()
    lo = lo.half()
    codes = ((g - lo.float()) / scale.float()).round_().clamp_(0, 2**bits - 1).to(torch.uint8).flatten(-2)
    if bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return codes, scale, lo


def dequantize(codes: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, bits: int, dim: int,
               dtype: torch.dtype) -> torch.Tensor:
    """The inverse of :func:`quantize` (up to rounding), in ``dtype``, ``dim`` back in place."""
    if bits == 4:
        codes = torch.stack([codes & 15, codes >> 4], dim=-1).flatten(-2)
    g = codes.reshape(*codes.shape[:-1], scale.shape[-2], -1).float()
    return (g * scale.float() + lo.float()).flatten(-2).to(dtype).movedim(-1, dim)


class FloatKVLayer(DynamicLayer):
    """A dynamic cache layer that stores keys and values in ``dtype`` (returned in the model's)."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.store_dtype = dtype

    def update(self, key_states, value_states, *args, **kwargs):
        compute = key_states.dtype
        keys, values = super().update(key_states.to(self.store_dtype), value_states.to(self.store_dtype))
        return keys.to(compute), values.to(compute)


class KiviLayer(DynamicLayer):
    """One layer's KIVI cache: keys per channel, values per token, a full-precision residual."""

    is_croppable = True

    def __init__(self, bits: int, group_size: int = GROUP_SIZE, residual: int = RESIDUAL):
        super().__init__()
        if residual < group_size or residual % group_size:
            raise UserError(f"KV residual {residual} must be a positive multiple of the group size "
                            f"{group_size}")
        self.bits, self.group_size, self.residual = bits, group_size, residual
        self.quantized: list[tuple[torch.Tensor, ...]] = []  # (k codes, k scale, k min, v codes, ...)
        self.n_quantized = 0

    def _check(self, key_states) -> None:
        if key_states.shape[-1] % self.group_size:
            raise UserError(f"head dim {key_states.shape[-1]} is not a multiple of the KV group size "
                            f"{self.group_size}")

    def update(self, key_states, value_states, *args, **kwargs):
        """Return every cached key and value (dequantised + exact residual + new); then flush."""
        if not self.is_initialized:
            self._check(key_states)
            self.lazy_initialization(key_states, value_states)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        old_k, old_v = self._dequantized(key_states.dtype)
        keys = self.keys if old_k is None else torch.cat([old_k, self.keys], dim=-2)
        values = self.values if old_v is None else torch.cat([old_v, self.values], dim=-2)
        self._flush()
        return keys, values

    def _flush(self) -> None:
        """Quantise the full-precision part, ``residual`` tokens at a time, while it holds that many."""
        r = self.residual
        while self.keys.shape[-2] >= r:  # Algorithm 1: a full residual is quantised and emptied
            k, v = self.keys[..., :r, :], self.values[..., :r, :]
            kq = quantize(k, self.bits, dim=-2, group_size=self.group_size)  # per channel over G tokens
            vq = quantize(v, self.bits, dim=-1, group_size=self.group_size)  # per token over G channels
            self.quantized.append((*kq, *vq))
            self.n_quantized += r
            self.keys, self.values = self.keys[..., r:, :], self.values[..., r:, :]

    def _dequantized(self, dtype):
        if not self.quantized:
            return None, None
        ks = [dequantize(*q[:3], self.bits, -2, dtype) for q in self.quantized]
        vs = [dequantize(*q[3:], self.bits, -1, dtype) for q in self.quantized]
        return torch.cat(ks, dim=-2), torch.cat(vs, dim=-2)

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return self.n_quantized + self.keys.shape[-2]

    def keep_first(self, n: int) -> None:
        """Forget every token after the first ``n``. Whole quantised blocks before ``n`` stay as
        they are; the first tokens of the block ``n`` falls in are de-quantised into the residual
        (fewer than ``residual``), to be quantised again when it fills: the one place a value is
        rounded twice (a chat whose template rewrote an already quantised turn)."""
        if not self.is_initialized or n >= self.get_seq_length():
            return
        if n >= self.n_quantized:
            m = n - self.n_quantized
            self.keys, self.values = self.keys[..., :m, :], self.values[..., :m, :]
            return
        whole, part = divmod(n, self.residual)
        dtype = self.keys.dtype
        block = self.quantized[whole]
        keys = dequantize(*block[:3], self.bits, -2, dtype)[..., :part, :]
        values = dequantize(*block[3:], self.bits, -1, dtype)[..., :part, :]
        self.quantized, self.n_quantized = self.quantized[:whole], whole * self.residual
        self.keys, self.values = keys, values

    def crop(self, tokens_to_remove: int) -> None:
        n = self.get_seq_length()
        self.keep_first(n + tokens_to_remove if tokens_to_remove < 0 else tokens_to_remove)

    def reset(self) -> None:
        super().reset()
        self.quantized, self.n_quantized = [], 0


def kv_cache(model, kv_dtype: str = "auto", *, group_size: int = GROUP_SIZE, residual: int = RESIDUAL):
    """A ``Cache`` for ``model`` storing keys and values in ``kv_dtype`` (auto: a transformers
    ``DynamicCache``, bounded by the model's sliding window if it has one)."""
    from transformers import DynamicCache

    from llm4all.models.window import windowed_cache

    if kv_dtype in ("", "auto"):
        sinks = windowed_cache(model)  # StreamingLLM's cache for a model with attention sinks
        return sinks if sinks is not None else DynamicCache(config=model.config)
    if kv_dtype not in KV_DTYPES:
        raise UserError(f"--kv-dtype {kv_dtype!r}; valid: {', '.join(KV_DTYPES)}")
    if getattr(model.config, "sliding_window", None):
        raise UserError(f"--kv-dtype {kv_dtype}: a sliding-window model keeps its own bounded cache; "
                        "use --kv-dtype auto with it")
    n = model.config.num_hidden_layers
    if kv_dtype in FLOAT_KV:
        return Cache(layers=[FloatKVLayer(FLOAT_KV[kv_dtype]) for _ in range(n)])
    return Cache(layers=[KiviLayer(QUANT_BITS[kv_dtype], group_size, residual) for _ in range(n)])


def keep_first(cache, n: int) -> None:
    """Forget every cached token after the first ``n``, layer by layer (see ``TorchLM.crop``).

    A sliding-window or sink cache that has already dropped tokens can only be emptied (n = 0):
    its first n entries are no longer the text's first n tokens (``dropped`` tells).
    """
    for layer in cache.layers:
        if hasattr(layer, "keep_first"):  # KIVI and sink layers
            layer.keep_first(n)
        elif n == 0:
            if layer.is_initialized:
                layer.reset()
        elif getattr(layer, "keys", None) is not None and layer.keys.numel():
            if getattr(layer, "is_sliding", False):
                if layer.cumulative_length >= layer.sliding_window and n < layer.cumulative_length:
                    raise RuntimeError("cannot cut a sliding-window cache back once it has dropped tokens")
                layer.cumulative_length = min(n, layer.cumulative_length)
            layer.keys, layer.values = layer.keys[..., :n, :], layer.values[..., :n, :]


def dropped(cache) -> bool:
    """Whether a bounded cache (sliding window, attention sinks) has forgotten any token."""
    for layer in cache.layers:
        if getattr(layer, "evicted", 0):
            return True
        if getattr(layer, "is_sliding", False) and layer.cumulative_length >= layer.sliding_window:
            return True
    return False


def cache_bytes(cache) -> int:
    """Bytes of the tensors ``cache`` holds (codes, scales, minima and full-precision tokens)."""
    total = 0
    for layer in cache.layers:  # a sink layer keeps its keys un-rotated, as ``raw``
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None), getattr(layer, "raw", None)):
            total += t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0
        for block in getattr(layer, "quantized", []):
            total += sum(t.numel() * t.element_size() for t in block)
    return total
