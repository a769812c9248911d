"""An editable hardware table: peak dense 16-bit FLOP/s, memory and price per hour.

FLOP/s are the vendors' dense (no sparsity) bf16/fp16 tensor-core peaks from their datasheets.
Memory is the nominal device memory read as GiB (an "80GB" A100 has 81,920 MiB of HBM), of which
``reserve_gib`` is kept back for the CUDA context and allocator fragmentation.
Prices are indicative on-demand cloud prices in USD per GPU-hour (late 2025, varying by
provider by ±50%): override them with ``--hardware-file my.yaml``::

    a100-80gb: {price_per_hour: 1.29}
    my-gpu: {flops: 1.2e14, memory_gib: 24, price_per_hour: 0.4, reserve_gib: 1.0}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from llm4all.catalog import HARDWARE
from llm4all.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Hardware:
    """One accelerator (or CPU) type."""

    flops: float  # peak dense bf16/fp16 FLOP/s (fp32 for CPUs)
    memory_gib: float  # device memory, GiB (2^30 bytes)
    price_per_hour: float  # USD per device-hour
    reserve_gib: float = 1.0  # CUDA context + allocator fragmentation kept free (GiB)
    note: str = ""

    @property
    def usable_bytes(self) -> float:
        return (self.memory_gib - self.reserve_gib) * 2**30


def _entry(name: str, hw: Hardware, doc: str) -> None:
    def make() -> Hardware:
        return hw

    make.__doc__ = doc
    HARDWARE.register(name)(make)


# NVIDIA datasheets (dense tensor-core bf16/fp16 peak, without 2:4 sparsity)
_entry("a100-40gb", Hardware(312e12, 40, 1.10), "NVIDIA A100 40GB SXM: 312 TFLOP/s bf16 dense, 40 GB")
_entry("a100-80gb", Hardware(312e12, 80, 1.60), "NVIDIA A100 80GB SXM: 312 TFLOP/s bf16 dense, 80 GB")
_entry("h100-80gb", Hardware(989e12, 80, 2.50), "NVIDIA H100 80GB SXM: 989 TFLOP/s bf16 dense, 80 GB")
_entry("l4", Hardware(121e12, 24, 0.70), "NVIDIA L4: 121 TFLOP/s bf16 dense, 24 GB")
_entry("t4", Hardware(65e12, 16, 0.35),
       "NVIDIA T4: 65 TFLOP/s fp16 dense (no bf16), 16 GB")
_entry("rtx-3090", Hardware(71e12, 24, 0.25),
       "NVIDIA RTX 3090: 71 TFLOP/s fp16 dense (fp32 accumulate: 35.6), 24 GB")
_entry("rtx-4090", Hardware(165e12, 24, 0.40),
       "NVIDIA RTX 4090: 165 TFLOP/s fp16 dense (fp32 accumulate: 82.6), 24 GB")
# This machine: 2 cores with AVX-512/AMX; the FLOP/s figure is a rough fp32 matmul rate
# (~1e11) to make CPU times indicative; measure yours with `llm4all plan memory --measure`.
_entry("cpu-2core-24gb", Hardware(1e11, 24, 0.10, reserve_gib=2.0),
       "2-core x86 CPU with 24 GiB RAM (this machine); ~100 GFLOP/s fp32, indicative")


def load_hardware(name: str, hardware_file: Path | None = None) -> tuple[str, Hardware]:
    """Look up ``name`` in the table after applying a user YAML file's additions/overrides."""
    table = hardware_table(hardware_file)
    if name not in table:
        raise UserError(f"unknown hardware {name!r}; {did_you_mean(name, list(table))}")
    return name, table[name]


def hardware_table(hardware_file: Path | None = None) -> dict[str, Hardware]:
    table = {n: HARDWARE.get(n)() for n in HARDWARE.names()}
    if hardware_file is None:
        return table
    path = Path(hardware_file)
    if not path.exists():
        raise UserError(f"--hardware-file {path}: no such file")
    try:
        user = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"--hardware-file {path}: not valid YAML ({e})") from None
    if not isinstance(user, dict):
        raise UserError(f"--hardware-file {path}: expected a mapping name -> {{flops, memory_gib, "
                        "price_per_hour}}")
    valid = [f.name for f in fields(Hardware)]
    for name, spec in user.items():
        if not isinstance(spec, dict):
            raise UserError(f"--hardware-file {path}: entry {name!r} must be a mapping")
        for key in spec:
            if key not in valid:
                raise UserError(f"--hardware-file {path}: {name}.{key} is not a hardware field; "
                                f"{did_you_mean(key, valid)}")
        base = asdict(table[name]) if name in table else {}
        merged = {**base, **spec}
        missing = [k for k in ("flops", "memory_gib", "price_per_hour") if k not in merged]
        if missing:
            raise UserError(f"--hardware-file {path}: new entry {name!r} needs {', '.join(missing)}")
        try:
            table[str(name)] = Hardware(**{k: (str(v) if k == "note" else float(v))
                                           for k, v in merged.items()})
        except (TypeError, ValueError) as e:
            raise UserError(f"--hardware-file {path}: entry {name!r}: {e}") from None
    return table
