"""Fitting your own law, the commands, the hardware file, and no torch at import time."""

import json
import subprocess
import sys

import numpy as np
import pytest

from llm4all.cli import main
from llm4all.errors import UserError
from llm4all.plan import commands
from llm4all.plan.fit import fit_law, read_runs
from llm4all.plan.scaling import get_law


def synthetic_runs(noise=0.0, seed=1):
    law = get_law("besiroglu")
    n = np.repeat(np.geomspace(1e7, 1e9, 5), 5)
    d = np.tile(np.geomspace(1e8, 3e10, 5), 5)
    loss = law.loss(n, d) * np.exp(np.random.default_rng(seed).normal(0, noise, n.size))
    return np.c_[n, d, loss]


def test_fit_recovers_noiseless_law():
    f = fit_law(synthetic_runs(), n_starts=4, n_boot=0)
    true = get_law("besiroglu")
    n, d = 3e9, 1e11  # extrapolation beyond the runs
    assert float(f.law.loss(n, d)) == pytest.approx(float(true.loss(n, d)), rel=2e-3)
    assert f.law.alpha == pytest.approx(true.alpha, abs=0.03)


def test_bootstrap_interval_covers_truth():
    f = fit_law(synthetic_runs(noise=0.003), n_starts=4, n_boot=12)
    point, lo, hi = f.interval(lambda law: float(law.loss(2e9, 5e10)))
    assert lo <= point <= hi
    truth = float(get_law("besiroglu").loss(2e9, 5e10))
    assert lo - 0.02 <= truth <= hi + 0.02


def test_runs_file_formats_and_errors(tmp_path):
    runs = synthetic_runs()
    csv = tmp_path / "runs.csv"
    csv.write_text("params,tokens,loss\n" + "\n".join(",".join(map(str, r)) for r in runs))
    jsonl = tmp_path / "runs.jsonl"
    keys = ("params", "tokens", "loss")
    jsonl.write_text("\n".join(json.dumps(dict(zip(keys, r, strict=True))) for r in runs))
    assert np.allclose(read_runs(csv), runs) and np.allclose(read_runs(jsonl), runs)
    bad = tmp_path / "bad.csv"
    bad.write_text("params,tokens,loss\n1e8,1e9,3.0\n1e8,oops,3.0\n")
    with pytest.raises(UserError, match=r"bad.csv:3"):
        read_runs(bad)
    missing = tmp_path / "m.jsonl"
    missing.write_text('{"params": 1e8, "loss": 3}\n')
    with pytest.raises(UserError, match="missing column 'tokens'"):
        read_runs(missing)
    (tmp_path / "few.csv").write_text("params,tokens,loss\n1e8,1e9,3\n")
    with pytest.raises(UserError, match="at least 5"):
        read_runs(tmp_path / "few.csv")
    with pytest.raises(UserError, match="no such runs file"):
        read_runs(tmp_path / "absent.csv")


def test_fit_command_with_plot_and_out(tmp_path, capsys):
    csv = tmp_path / "runs.csv"
    csv.write_text("params,tokens,loss\n" + "\n".join(",".join(map(str, r)) for r in synthetic_runs(0.002)))
    out, png = tmp_path / "fit.json", tmp_path / "fit.png"
    r = commands.fit(csv, n_boot=5, flops=1e21, params=1e9, tokens=2e10, plot=png, out=out)
    assert png.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(out.read_text())
    assert saved["params"][0] == pytest.approx(r["params"][0])
    assert saved["predicted_loss"][1] <= saved["predicted_loss"][0] <= saved["predicted_loss"][2]


def test_cli_json_and_recipe_fields(tmp_path, capsys):
    assert main(["plan", "chinchilla", "--flops", "1e21", "--json", "--out", str(tmp_path / "p.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    plan = json.loads((tmp_path / "p.json").read_text())
    assert plan["params"] == pytest.approx(printed["params"])
    assert 6 * plan["params"] * plan["tokens"] == pytest.approx(1e21)


def test_cli_memory_and_errors(capsys):
    assert main(["plan", "memory", "--model", "smollm2-135m", "--hardware", "t4", "--batch", "16",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["total_bytes"] == pytest.approx(sum(r["components_bytes"].values()))
    assert r["verdict"]["fits"] is False and r["verdict"]["fixes"]
    assert main(["plan", "memory", "--model", "smollm2-135m", "--hardware", "a100"]) == 2
    assert "a100-40gb" in capsys.readouterr().err
    assert main(["plan", "cost", "--params", "1e9"]) == 2


def test_hardware_file_overrides_and_adds(tmp_path):
    f = tmp_path / "hw.yaml"
    f.write_text("a100-80gb: {price_per_hour: 0.5}\n"
                 "my-gpu: {flops: 1.0e14, memory_gib: 12, price_per_hour: 0.2}\n")
    table = commands.hardware(hardware_file=f, json=True)
    assert table["a100-80gb"]["price_per_hour"] == 0.5 and table["a100-80gb"]["flops"] == 312e12
    assert table["my-gpu"]["memory_gib"] == 12
    r = commands.cost(flops=3.6e17, hardware="my-gpu", mfu=1.0, hardware_file=f, json=True)
    assert r["gpu_hours"] == pytest.approx(1.0) and r["dollars"] == pytest.approx(0.2)
    f.write_text("my-gpu: {flops: 1e14, memory: 12}\n")
    with pytest.raises(UserError, match="memory_gib"):
        commands.hardware(hardware_file=f, json=True)


def test_plan_imports_no_torch():
    code = ("import sys; import llm4all.plan.commands, llm4all.plan.fit, llm4all.plan.measure; "
            "from llm4all.cli import main; main(['plan','chinchilla','--flops','1e20','--json']); "
            "main(['plan','memory','--model','smollm2-135m','--json']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
