"""Compression ratio: UTF-8 bytes / compressed bytes (higher = more redundant text).

A cheap information-density proxy used for data selection and filtering (e.g. the gzip-based
compressor distances of Jiang et al. 2023, "'Low-Resource' Text Classification: A
Parameter-Free Classification Method with Compressors"). Ratios use raw DEFLATE (zlib level 9,
no header/trailer) and zstd at its default level 3 with no checksum or content size in the
frame, so the fixed container overhead stays small on short texts. Empty text: 0.
The module-level zstd compressor is not thread-safe: use processes, not threads.
"""

from __future__ import annotations

import zlib

import zstandard

from llm4all.curate.signals.compute import signal
from llm4all.curate.signals.text import Doc

ZLIB_LEVEL = 9  # zlib's maximum (best compression)
ZSTD_LEVEL = 3  # zstd's default level (RFC 8878 reference implementation)
_ZSTD = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False, write_content_size=False)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def zlib_ratio(data: bytes) -> float:
    """len(data) / len(raw DEFLATE of data); 0 for empty data."""
    if not data:
        return 0.0
    c = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, -15)  # wbits < 0: raw stream, no header
    return len(data) / len(c.compress(data) + c.flush())


def zstd_ratio(data: bytes) -> float:
    """len(data) / len(zstd frame of data); 0 for empty data."""
    if not data:
        return 0.0
    return len(data) / len(_ZSTD.compress(data))


@signal("zlib_ratio", ("zlib_ratio",))
def zlib_signal(doc: Doc) -> dict[str, float]:
    """UTF-8 bytes / raw-DEFLATE bytes at level 9 (RFC 1951; Jiang et al. 2023 use gzip)."""
    return {"zlib_ratio": zlib_ratio(_utf8(doc.text))}


@signal("zstd_ratio", ("zstd_ratio",))
def zstd_signal(doc: Doc) -> dict[str, float]:
    """UTF-8 bytes / zstd bytes at level 3 (RFC 8878 Zstandard frame, no checksum)."""
    return {"zstd_ratio": zstd_ratio(_utf8(doc.text))}
