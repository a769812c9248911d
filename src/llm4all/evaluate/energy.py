"""Energy per token: measured from RAPL where the machine exposes it, else estimated (labelled).

**Measured.** Intel's RAPL counters (and AMD's, through the same driver) appear under
``/sys/class/powercap/intel-rapl:N`` as ``energy_uj``, a microjoule counter per package (and
sub-domains: core, uncore, dram) that wraps at ``max_energy_range_uj``. :class:`Rapl` reads the
top-level package domains (and their ``dram`` sub-domain where present) before and after a run;
joules per token = energy / tokens. It counts the whole socket — idle cores, the OS and any
other process included — so it is an upper bound on what the model used; the result says so.
Reading ``energy_uj`` needs permission (root, or the file made readable): without it, or with
no RAPL at all (most VMs, this one included), the estimate is used.

**Estimated.** Decoding one token of a dense decoder costs

- arithmetic: one multiply and one add per multiply-accumulate: the weight matrices'
  parameters (embedding lookups are not MACs; the output head is) plus attention over the
  context (QKᵀ and AV: 2 · layers · heads · head_dim · context), at the per-operation energies
  of :data:`OP_PJ`;
- memory: every weight byte read from DRAM once per decode step (shared by the batch) plus the
  KV cache read for each sequence, at Horowitz's DRAM access energy.

Per-operation energies are Horowitz 2014 ("Computing's energy problem (and what we can do
about it)", ISSCC, fig. 1.1.9: 45 nm, 0.9 V), the table BitNet (Wang et al. 2023, Table 2) and
BitNet b1.58 (Ma et al. 2024, sec. 3) use for their energy comparison, with the 7 nm column
those papers add. DRAM: 1.3–2.6 nJ per 64-bit access (Horowitz, same figure), so 163–325 pJ per
byte; the midpoint is reported with the range. A modern 7 nm chip does arithmetic 2.5–4×
cheaper than these 45 nm figures, and caches spare some DRAM traffic: read the estimate as the
order of magnitude and for comparing formats (fp32 vs int4 weights), never as a measurement.
"""

from __future__ import annotations

from pathlib import Path

POWERCAP = Path("/sys/class/powercap")

#: picojoules per operation: {compute type: {"add"/"mul": (45 nm, 7 nm)}} (Horowitz 2014;
#: BitNet, Wang et al. 2023, Table 2)
OP_PJ = {
    "fp32": {"add": (0.9, 0.38), "mul": (3.7, 1.31)},
    "fp16": {"add": (0.4, 0.16), "mul": (1.1, 0.34)},
    "int8": {"add": (0.03, 0.007), "mul": (0.2, 0.07)},
}
#: picojoules per byte read from DRAM: 1.3-2.6 nJ per 64-bit access (Horowitz 2014)
DRAM_PJ_PER_BYTE = (1300 / 8, 2600 / 8)


class Rapl:
    """Package (and DRAM) energy counters of ``root``; ``None`` from :meth:`find` without any."""

    def __init__(self, files: list[tuple[Path, int]]):
        self.files = files  # (energy_uj file, wrap-around range in µJ)

    @classmethod
    def find(cls, root: Path | None = None) -> Rapl | None:
        files = []
        for domain in sorted((root or POWERCAP).glob("intel-rapl:*")):
            if domain.name.count(":") != 1:  # sub-domains are read below their package
                continue
            for zone in [domain, *sorted(domain.glob("intel-rapl:*:*"))]:
                name = (zone / "name").read_text().strip() if (zone / "name").is_file() else ""
                if zone is domain or name == "dram":
                    try:
                        int((zone / "energy_uj").read_text())
                        wrap = int((zone / "max_energy_range_uj").read_text())
                    except (OSError, ValueError):  # not readable without root on most systems
                        return None
                    files.append((zone / "energy_uj", wrap))
        return cls(files) if files else None

    def read(self) -> list[int]:
        return [int(path.read_text()) for path, _ in self.files]

    def joules_since(self, before: list[int]) -> float:
        """Energy (J) since ``before`` (a :meth:`read`), counting one wrap-around per counter."""
        total = 0
        for (_, wrap), a, b in zip(self.files, before, self.read(), strict=True):
            total += b - a if b >= a else b + wrap - a
        return total / 1e6


def decode_macs(config, context: int) -> float:
    """Multiply-accumulates of one decode step of one sequence at ``context`` cached tokens."""
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    inter = config.intermediate_size
    attention_proj = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v
    mlp = 3 * hidden * inter  # SwiGLU: gate, up, down
    scores = 2 * heads * head_dim * context  # q·K and p·V
    return layers * (attention_proj + mlp + scores) + vocab * hidden  # + the output head


def estimate(config, *, weight_bytes: float, kv_bytes_per_token: float, context: int, batch: int = 1,
             compute: str = "fp32", node: int = 0) -> dict:
    """Estimated joules per decoded token (``node`` 0: 45 nm, 1: 7 nm), with its parts and range."""
    if compute not in OP_PJ:
        raise ValueError(f"compute type {compute!r}; known: {', '.join(OP_PJ)}")
    pj = OP_PJ[compute]
    arithmetic = decode_macs(config, context) * (pj["add"][node] + pj["mul"][node]) * 1e-12
    moved = weight_bytes / batch + kv_bytes_per_token * context  # per token of one sequence
    low, high = (moved * p * 1e-12 for p in DRAM_PJ_PER_BYTE)
    return {"joules_per_token": arithmetic + (low + high) / 2, "low": arithmetic + low,
            "high": arithmetic + high,
            "arithmetic_joules": arithmetic, "memory_joules": (low + high) / 2, "bytes_per_token": moved,
            "compute": compute, "node": ("45 nm", "7 nm")[node], "context": context, "batch": batch,
            "source": "estimate (Horowitz 2014 per-operation energies)"}


def compute_type(dtype: str) -> str:
    """The arithmetic a weight dtype runs in here: fp32; fp16 for 16-bit floats; int8 for llama.cpp's
    quantised dot products (activations quantised to 8 bits against 4-8-bit weights)."""
    return {"float32": "fp32", "bfloat16": "fp16", "float16": "fp16", "gguf": "int8"}.get(dtype, "fp32")
