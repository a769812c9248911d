"""ggml's 32-weight blocks written from integer codes and float16 scales, without re-rounding.

A packed llm4all weight is an integer grid: W[o, i] = k[o, i] · s[o, g] with k = code − zero
an integer and s a float16 scale per group of input columns (``models/packed/formats.py``).
When the groups are whole multiples of 32 columns, every 32-weight ggml block has one scale,
and a block type whose integer range holds k stores the weight exactly with d = s. Layouts
from ggml's ``ggml-common.h`` (``block_q4_0``, ``block_q4_1``, ``block_q5_0``, ``block_q8_0``;
fields little-endian, in this order):

| type | bytes | fields | weight j (0 ≤ j < 32) | exact for |
|---|---|---|---|---|
| Q4_0 | 18 | d fp16, qs[16] | (q_j − 8)·d | k ∈ [−8, 7] (symmetric ≤ 4-bit, any ≤ 3-bit) |
| Q4_1 | 20 | d fp16, m fp16, qs[16] | q_j·d + m | k spanning ≤ 16 values, m = −off·d exact in fp16 |
| Q5_0 | 22 | d fp16, qh u32, qs[16] | (q_j − 16)·d, q_j = nibble + 16·(bit j of qh) | k ∈ [−16, 15] |
| Q8_0 | 34 | d fp16, qs int8[32] | q_j·d | k ∈ [−128, 127] (symmetric 8-bit) |

In ``qs`` byte j (0 ≤ j < 16) holds weight j in its low nibble and weight j + 16 in its high
nibble (``dequantize_row_q4_0``: ``x0 = (qs[j] & 0x0F) − 8`` → y[j], ``x1 = (qs[j] >> 4) − 8`` →
y[j + 16]); llm4all packs even/odd columns instead, so codes are unpacked and re-nibbled.

Why the values are bitwise equal: |k| ≤ 2^8 and d has an 11-bit significand, so k·d is exact
in float32, as is llm4all's (code − zero)·scale. For Q4_1, q·d (≤ 15 significant bits) and m
are exact, so q·d + m = (q − off)·d rounds to itself whenever m = −off·d is a float16 number.
"""

from __future__ import annotations

import numpy as np

QK = 32  # weights per block (QK4_0 = QK4_1 = QK5_0 = QK8_0 = 32 in ggml-common.h)
#: integer range k of (q − offset) that each offset block type stores with d = scale
RANGES = {"Q4_0": (-8, 7), "Q5_0": (-16, 15), "Q8_0": (-128, 127)}
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q8_0": 34}


def fp16_bytes(x: np.ndarray) -> np.ndarray:
    """float values (…) → their little-endian float16 bytes (…, 2)."""
    return np.ascontiguousarray(x, dtype="<f2").view(np.uint8).reshape(*x.shape, 2)


def nibbles(q: np.ndarray) -> np.ndarray:
    """(…, 32) values whose low 4 bits are stored → (…, 16) bytes: weight j low, weight j + 16 high."""
    q = q.astype(np.uint8)
    return (q[..., :16] & 15) | ((q[..., 16:] & 15) << 4)


def blocks(k: np.ndarray) -> np.ndarray:
    """(rows, n) → (rows, n / 32, 32): the 32-weight blocks of each row."""
    rows, n = k.shape
    if n % QK:
        raise ValueError(f"rows of {n} weights do not split into {QK}-weight blocks")
    return k.reshape(rows, n // QK, QK)


def check_range(k: np.ndarray, kind: str) -> None:
    lo, hi = RANGES[kind]
    if k.size and (k.min() < lo or k.max() > hi):
        raise ValueError(f"{kind} holds integers in [{lo}, {hi}], got [{k.min()}, {k.max()}]")


def q4_0(k: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Q4_0 rows for W = k·d: k int (rows, n) in [−8, 7], d (rows, n/32) float16 → uint8 (rows, n/32·18)."""
    check_range(k, "Q4_0")
    kb = blocks(k)
    out = np.concatenate([fp16_bytes(d), nibbles(kb + 8)], axis=-1)  # (rows, n/32, 18)
    return out.reshape(k.shape[0], -1)


def q5_0(k: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Q5_0 rows for W = k·d: k in [−16, 15] → uint8 (rows, n/32·22); bit 4 of q_j is bit j of qh."""
    check_range(k, "Q5_0")
    q = (blocks(k) + 16).astype(np.uint32)  # (rows, nb, 32) in [0, 31]
    qh = ((q >> 4) << np.arange(QK, dtype=np.uint32)).sum(-1, dtype=np.uint32)  # (rows, nb)
    qh_bytes = np.ascontiguousarray(qh, dtype="<u4").view(np.uint8).reshape(*qh.shape, 4)
    out = np.concatenate([fp16_bytes(d), qh_bytes, nibbles(q)], axis=-1)
    return out.reshape(k.shape[0], -1)


def q8_0(k: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Q8_0 rows for W = k·d: k in [−128, 127] → uint8 (rows, n/32·34)."""
    check_range(k, "Q8_0")
    qs = blocks(k).astype(np.int8).view(np.uint8)
    return np.concatenate([fp16_bytes(d), qs], axis=-1).reshape(k.shape[0], -1)


def q4_1_offsets(k: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-block offset ``off`` for Q4_1 (q = k + off ∈ [0, 15], m = −off·d) and |m16 − m|.

    Any off in [−min k, 15 − max k] stores the block; off = zero (q = the code) always
    works for llm4all's asymmetric 4-bit codes. Among the valid ones this picks the offset
    whose m is closest to a float16 number (0 error: the block is exact; powers of two always
    are). Returns off int (rows, nb) and the absolute error of m in float16 (rows, nb), float64;
    a block spanning more than 16 integers gets error inf.
    """
    kb = blocks(k).astype(np.int32)
    lo, hi = -kb.min(-1), 15 - kb.max(-1)  # (rows, nb) valid offsets: lo ≤ off ≤ hi
    cand = np.arange(-15, 16)  # (31,) every offset a 4-bit q can need
    m = -cand * d.astype(np.float64)[..., None]  # (rows, nb, 31), exact (≤ 15 significant bits)
    err = np.abs(m.astype(np.float16).astype(np.float64) - m)
    valid = (cand >= lo[..., None]) & (cand <= hi[..., None])
    err = np.where(valid, err, np.inf)
    # among equal errors prefer the smallest |off| (argmin takes the first of candidates sorted by |off|)
    order = np.argsort(np.abs(cand), kind="stable")
    best = np.argmin(err[..., order], axis=-1)
    pick = order[best]
    return cand[pick], np.take_along_axis(err, pick[..., None], -1)[..., 0]


def q4_1(k: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_1 rows for W = k·d → (uint8 (rows, n/32·20), |m error| per block (rows, n/32)).

    Exact where the error is 0; elsewhere each weight of the block is off by the float16
    rounding of m = −off·d: at most 2^−11·|m| ≤ 15·2^−11·d < 0.8 % of the step d.
    """
    off, err = q4_1_offsets(k, d)
    if np.isinf(err).any():
        raise ValueError("Q4_1 holds 16 consecutive integers per block; a block spans more")
    q = blocks(k) + off[..., None]  # (rows, nb, 32) in [0, 15]
    m = -off * d.astype(np.float64)
    out = np.concatenate([fp16_bytes(d), fp16_bytes(m), nibbles(q)], axis=-1)
    return out.reshape(k.shape[0], -1), err


def fits(k: np.ndarray, d: np.ndarray, kind: str) -> bool:
    """Whether ``kind`` stores W = k·d (d float16 per 32-block) exactly."""
    if kind == "Q4_1":
        kb = blocks(k)
        if (kb.max(-1) - kb.min(-1) > 15).any():
            return False
        return bool((q4_1_offsets(k, d)[1] == 0).all())
    lo, hi = RANGES[kind]
    return not k.size or (lo <= k.min() and k.max() <= hi)


ENCODERS = {"Q4_0": q4_0, "Q5_0": q5_0, "Q8_0": q8_0, "Q4_1": lambda k, d: q4_1(k, d)[0]}
