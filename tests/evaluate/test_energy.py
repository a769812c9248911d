"""Energy per token: RAPL counters (a fake powercap tree), the estimate's arithmetic, eval speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm4all.evaluate import energy
from llm4all.evaluate.energy import OP_PJ, Rapl, decode_macs, estimate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def powercap(root: Path, packages: dict[str, tuple[int, int]], dram: bool = True) -> Path:
    """A /sys/class/powercap look-alike: {name: (energy_uj, max_energy_range_uj)} per package."""
    for i, (name, (uj, wrap)) in enumerate(packages.items()):
        zone = root / f"intel-rapl:{i}"
        zone.mkdir(parents=True)
        (zone / "name").write_text(name + "\n")
        (zone / "energy_uj").write_text(f"{uj}\n")
        (zone / "max_energy_range_uj").write_text(f"{wrap}\n")
        if dram:
            sub = zone / f"intel-rapl:{i}:0"
            sub.mkdir()
            (sub / "name").write_text("dram\n")
            (sub / "energy_uj").write_text("1000\n")
            (sub / "max_energy_range_uj").write_text("65532610987\n")
            core = zone / f"intel-rapl:{i}:1"  # a core sub-domain: inside the package, not added
            core.mkdir()
            (core / "name").write_text("core\n")
            (core / "energy_uj").write_text("5\n")
            (core / "max_energy_range_uj").write_text("65532610987\n")
    return root


def test_rapl_sums_packages_and_dram_and_handles_the_wrap(tmp_path):
    wrap = 262_143_328_850
    root = powercap(tmp_path, {"package-0": (1_000_000, wrap), "package-1": (262_143_000_000, wrap)})
    rapl = Rapl.find(root)
    assert rapl is not None and len(rapl.files) == 4  # two packages + their dram, not the cores
    before = rapl.read()
    (root / "intel-rapl:0" / "energy_uj").write_text("3000000\n")  # +2 J
    (root / "intel-rapl:1" / "energy_uj").write_text("671150\n")  # wrapped: +328850 + 671150 µJ = 1 J
    (root / "intel-rapl:0" / "intel-rapl:0:0" / "energy_uj").write_text("501000\n")  # +0.5 J of DRAM
    assert rapl.joules_since(before) == pytest.approx(3.5)


def test_no_rapl_or_unreadable_counters_mean_none(tmp_path):
    assert Rapl.find(tmp_path / "absent") is None
    root = powercap(tmp_path / "p", {"package-0": (1, 10)}, dram=False)
    (root / "intel-rapl:0" / "energy_uj").write_text("not a number")
    assert Rapl.find(root) is None


def test_decode_macs_count_the_models_matmuls(tiny_model):
    from llm4all.models.load import load

    model, _ = load(str(tiny_model))
    cfg = model.config
    linear = sum(m.weight.numel() for m in model.modules() if type(m).__name__ == "Linear")
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    attention = cfg.num_hidden_layers * 2 * cfg.num_attention_heads * head_dim * 100
    assert decode_macs(cfg, 100) == linear + attention


def test_estimate_is_arithmetic_plus_dram_at_horowitz_energies(tiny_model):
    from llm4all.models.load import load

    cfg = load(str(tiny_model))[0].config
    e = estimate(cfg, weight_bytes=1e6, kv_bytes_per_token=100, context=50, batch=2, compute="fp32")
    macs = decode_macs(cfg, 50)
    assert e["arithmetic_joules"] == pytest.approx(macs * (0.9 + 3.7) * 1e-12)
    moved = 1e6 / 2 + 100 * 50
    assert e["low"] == pytest.approx(e["arithmetic_joules"] + moved * 162.5e-12)
    assert e["high"] == pytest.approx(e["arithmetic_joules"] + moved * 325e-12)
    assert e["low"] < e["joules_per_token"] < e["high"] and "estimate" in e["source"]
    int8 = estimate(cfg, weight_bytes=1e6, kv_bytes_per_token=100, context=50, compute="int8", node=1)
    assert int8["arithmetic_joules"] == pytest.approx(macs * (0.007 + 0.07) * 1e-12)
    assert int8["node"] == "7 nm"
    assert OP_PJ["fp16"]["mul"][0] == 1.1  # Horowitz 2014, 45 nm


def test_eval_speed_reports_energy_estimated_here_and_measured_with_rapl(tiny_model, tmp_path, monkeypatch):
    from llm4all.evaluate.speed import decode_energy, headline, main
    from llm4all.models.load import load

    result = main(str(tiny_model), dtypes=["float32"], prompt_lengths=[16], new_tokens=4, batch_sizes=[1],
                  repeats=1, memory=False, device="cpu")
    e = result["dtypes"]["float32"]["energy"]
    assert e["source"].startswith("estimate") and e["joules_per_token"] > 0
    assert headline(result)["joules_per_token"] == e["joules_per_token"]
    root = powercap(tmp_path / "rapl", {"package-0": (0, 10**12)})
    monkeypatch.setattr(energy, "POWERCAP", root)
    model, _ = load(str(tiny_model))
    reads = iter(range(0, 10**9, 250_000))  # the counter advances 0.25 J per read

    monkeypatch.setattr(Rapl, "read", lambda self: [next(reads)] * len(self.files))
    measured = decode_energy(model, "float32", new_tokens=5)
    assert measured["source"].startswith("RAPL")
    assert measured["joules_per_token"] == pytest.approx(2 * 0.25 / 5)
