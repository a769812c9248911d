"""``--device``: every command that runs a model takes it, and it reaches every model it loads.

A CPU-only machine cannot place a model on a GPU, so the plumbing is checked with a device
only the argument can produce: ``resolve_device`` is wrapped to turn the CPU into ``cpu:0``
(a real torch device, the same memory), and every ``models.load.load`` call must receive
``cpu:0``. A command that dropped the argument anywhere would load with the default ``cpu``
(or ``auto``) and fail the test. On a machine with a GPU the last tests run the real thing.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from llm4all.cli import COMMANDS, _command_parser, main, resolve
from llm4all.errors import UserError
from llm4all.models import device as devices
from tinymodels import tiny_teacher_and_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: every command that runs a model (the others plan, read, write or report)
MODEL_COMMANDS = [("curate",), ("train",), ("distill",), ("adapt",), ("compress",), ("teacher-cache",),
                  ("diversity",), ("generate",), ("chat",), ("models", "init-student"),
                  ("eval", "perplexity"), ("eval", "tasks"), ("eval", "harness"), ("eval", "speed"),
                  ("eval", "speculative"), ("eval", "sinks"), ("plan", "memory")]
NO_GPU = not torch.cuda.is_available()


@pytest.mark.parametrize("path", MODEL_COMMANDS, ids=" ".join)
def test_every_model_command_takes_device(path):
    target = COMMANDS
    for name in path:
        target = target[name]
    parser = _command_parser("llm4all " + " ".join(path), resolve(target))
    options = {o for action in parser._actions for o in action.option_strings}
    assert "--device" in options


def test_resolve_device(monkeypatch):
    monkeypatch.delenv(devices.DEVICE_ENV, raising=False)
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device("auto") == torch.device("cuda" if not NO_GPU else "cpu")
    with pytest.raises(UserError, match="--device 'tpu0' is not a torch device; valid: auto, cpu"):
        devices.resolve_device("tpu0")
    with pytest.raises(UserError, match="--device meta: llm4all runs models on auto, cpu, cuda"):
        devices.resolve_device("meta")
    monkeypatch.setenv(devices.DEVICE_ENV, "cpu")
    assert devices.resolve_device("auto") == torch.device("cpu")
    assert devices.default_dtype(torch.device("cpu")) == "float32"


@pytest.mark.skipif(not NO_GPU, reason="checks the error a machine without a GPU gives")
def test_a_gpu_this_machine_lacks_is_a_one_line_error(monkeypatch, tiny_model, capsys):
    with pytest.raises(UserError, match="--device cuda: torch sees no CUDA GPU here; use --device cpu"):
        devices.resolve_device("cuda")
    monkeypatch.setenv(devices.DEVICE_ENV, "cuda:1")
    with pytest.raises(UserError, match="LLM4ALL_DEVICE=cuda:1: --device cuda:1: torch sees no CUDA"):
        devices.resolve_device("auto")
    monkeypatch.delenv(devices.DEVICE_ENV)
    # the CLI: exit 2, one line naming the option, before any model is loaded
    for argv in (["eval", "perplexity", str(tiny_model), "nowhere", "--device", "cuda"],
                 ["train", "nowhere", "--out", "x", "--device", "cuda"],
                 ["compress", str(tiny_model), "--out", "x", "--method", "{name: rtn}",
                  "--device", "cuda:0"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "--device cuda" in err and "no CUDA GPU" in err


def test_device_env_sets_and_restores(monkeypatch):
    monkeypatch.setenv(devices.DEVICE_ENV, "auto")
    with devices.device_env("cpu"):
        assert devices.DEVICE_ENV in __import__("os").environ
        assert __import__("os").environ[devices.DEVICE_ENV] == "cpu"
    assert __import__("os").environ[devices.DEVICE_ENV] == "auto"
    with devices.device_env("auto"):  # auto leaves it alone
        assert __import__("os").environ[devices.DEVICE_ENV] == "auto"
    with pytest.raises(UserError, match="not a torch device"), devices.device_env("gpu"):
        pass


# ---- plumbing: the argument reaches every model ---------------------------------------------

@pytest.fixture()
def traced(monkeypatch):
    """``cpu`` resolves to ``cpu:0``; returns the devices every ``load`` call received."""
    import importlib

    from llm4all.serve import backends
    from llm4all.train import loop

    loading = importlib.import_module("llm4all.models.load")  # (llm4all.models.load is also the function)
    real_resolve, real_load, seen = devices.resolve_device, loading.load, []

    def resolve_device(device="auto"):
        resolved = real_resolve(device)
        return torch.device("cpu", 0) if resolved.type == "cpu" else resolved

    def load(model, dtype="float32", device="cpu"):
        seen.append(str(device))
        return real_load(model, dtype=dtype, device=device)

    for module in (devices, loop, backends):
        monkeypatch.setattr(module, "resolve_device", resolve_device)
    monkeypatch.setattr(loading, "load", load)
    monkeypatch.delenv(devices.DEVICE_ENV, raising=False)
    return seen


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    tiny_teacher_and_shards(root, layers=4)
    return root


TRAIN = {"steps": 2, "seq_len": 16, "micro_batch": 2, "precision": "fp32", "warmup": 0, "eval_tokens": 64}


def _commands(root, out):
    """(name, call) of each model-running command on the tiny teacher, all with device="cpu"."""
    from llm4all.compress.command import main as compress
    from llm4all.curate.diversity import main as diversity
    from llm4all.curate.pipeline import main as curate
    from llm4all.distill.adapt import main as adapt
    from llm4all.distill.command import main as distill
    from llm4all.distill.student import init_student
    from llm4all.distill.teacher_cache import main as teacher_cache
    from llm4all.evaluate.perplexity import main as perplexity
    from llm4all.evaluate.sinks import main as sinks
    from llm4all.evaluate.speculative import main as speculative
    from llm4all.evaluate.speed import main as speed
    from llm4all.evaluate.tasks import main as tasks
    from llm4all.serve.generate import main as generate

    teacher, shards, docs = str(root / "teacher"), root / "shards", root / "docs.jsonl"
    prompts = out / "prompts.txt"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("alpha beta gamma\n")
    task = out / "task.yaml"
    task.write_text("name: tiny\ndata: items.jsonl\ntemplate: '{q}'\nchoices: choices\nanswer: label\n")
    (out / "items.jsonl").write_text("".join(json.dumps({"q": q, "choices": [" c", " d"], "label": i}) + "\n"
                                             for i, q in enumerate(["a b", "c d"])))
    return [
        ("eval perplexity", lambda: perplexity(teacher, shards, context=16, max_tokens=64, device="cpu")),
        ("eval tasks", lambda: tasks(teacher, tasks=[str(task)], device="cpu")),
        ("eval speed", lambda: speed(teacher, dtypes=["float32"], prompt_lengths=[8], new_tokens=2,
                                     batch_sizes=[1], repeats=1, memory=False, device="cpu")),
        ("eval speculative", lambda: speculative(teacher, ["layers:1", teacher], prompts=str(prompts),
                                                 max_new_tokens=4, device="cpu")),
        ("eval sinks", lambda: sinks(teacher, data=docs, window=8, sinks=2, max_tokens=24, chunk=4,
                                     device="cpu")),
        ("generate", lambda: generate(teacher, "alpha beta", max_new_tokens=2, engine="torch",
                                      device="cpu")),
        ("teacher-cache", lambda: teacher_cache(teacher, shards, out=out / "cache", seq_len=16, top_k=4,
                                                max_windows=4, dtype="float32", device="cpu")),
        ("compress", lambda: compress(teacher, out=out / "gptq", method={"name": "gptq", "bits": 4,
                                                                         "group_size": 16},
                                      calib=shards, calib_tokens=64, seq_len=16, device="cpu")),
        ("models init-student", lambda: init_student(teacher, out=out / "student", every=2, device="cpu")),
        ("train", lambda: train_command(shards, out / "train", teacher)),
        ("distill", lambda: distill(shards, out=out / "distill", teacher=teacher, mode="online", **TRAIN,
                                    device="cpu")),
        ("adapt", lambda: adapt(shards, out=out / "adapt", model=teacher, **TRAIN, device="cpu")),
        ("curate", lambda: curate([docs], out=out / "curated", signals=[{"name": "perplexity",
                                                                        "model": teacher}],
                                  steps=[], workers=1, device="cpu")),
        ("diversity", lambda: diversity([docs], probe=teacher, num_batches=2, batch_size=2, max_tokens=16,
                                        device="cpu")),
    ]


def train_command(shards, out, teacher):
    from llm4all.train.command import main as train

    return train(shards, out=out, model=teacher, **TRAIN, device="cpu")


def test_device_reaches_every_model_a_command_loads(root, tmp_path, traced):
    for name, call in _commands(root, tmp_path):
        traced.clear()
        call()
        assert traced, f"{name}: loaded no model"
        assert set(traced) == {"cpu:0"}, f"{name}: a model was loaded on {traced}, not the --device"


# ---- packed layers away from the CPU kernels ------------------------------------------------

def _qlinear(bits=4, rows=64, cols=128, group=32):
    from llm4all.models.packed.qlinear import QuantLinear

    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2**bits, (rows, cols), generator=g)
    scales = torch.rand(rows, cols // group, generator=g).half() / 10
    zeros = torch.randint(0, 2**bits, (rows, cols // group), generator=g).to(torch.uint8)
    return QuantLinear.from_codes(codes, scales, zeros, bits, group)


def test_packed_layer_without_a_gpu_kernel_falls_back_exactly_with_one_warning(caplog):
    """The CUDA int4 path is built and checked once per layer; where it cannot run (here: no
    CUDA), the layer de-quantises, gives the exact product, and one line says so."""
    from llm4all.models.packed import kernels

    kernels._WARNED.clear()
    layer, x = _qlinear(), torch.randn(3, 128)
    exact = x @ layer.dense_weight().T
    with caplog.at_level(logging.WARNING, logger="llm4all.models.packed"):
        assert layer._cuda_kernel(x) is False and _qlinear()._cuda_kernel(x) is False
        assert _qlinear(bits=8)._cuda_kernel(x) is False
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # one per reason, not one per layer
    assert "cannot run here" in lines[0] and "de-quantised on every call on cpu" in lines[0]
    assert "has more than 4 bits" in lines[1]
    torch.testing.assert_close(layer._exact_weight(x) @ torch.eye(128), layer.dense_weight(), rtol=0, atol=0)
    torch.testing.assert_close(torch.nn.functional.linear(x, layer._exact_weight(x)), exact)


def test_int8_product_pads_short_inputs_for_the_gpu_kernel():
    from llm4all.models.packed.int8 import CUDA_MIN_ROWS, _int8_matmul

    g = torch.Generator().manual_seed(0)
    x = torch.randint(-127, 128, (3, 64), generator=g, dtype=torch.int8)
    w = torch.randint(-127, 128, (64, 32), generator=g, dtype=torch.int8)
    exact = x.int() @ w.int()
    padded = _int8_matmul(x, w, min_rows=CUDA_MIN_ROWS)
    assert padded.shape == (3, 32) and torch.equal(padded, exact)
    assert torch.equal(_int8_matmul(x, w), exact)


def test_scratch_buffers_are_per_device():
    from llm4all.models.packed.kernels import scratch

    a = scratch((4, 4), torch.float32, "cpu")
    assert scratch((4, 4), torch.float32, "cpu") is a and a.device.type == "cpu"


# ---- on a real GPU ---------------------------------------------------------------------------

@pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU (none on this machine)")
def test_packed_int4_on_cuda_matches_cpu():
    layer = _qlinear(rows=128, cols=256, group=64)
    x = torch.randn(5, 256)
    reference = layer(x)
    y = layer.cuda()(x.cuda()).cpu()
    assert layer._cuda not in (None, False), "the CUDA int4 kernel did not run"
    assert (y - reference).norm() / reference.norm() < 2e-2


@pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU (none on this machine)")
def test_perplexity_on_cuda_matches_cpu(root):
    from llm4all.evaluate.perplexity import main as perplexity

    kw = {"context": 16, "max_tokens": 128, "dtype": "float32"}
    cpu = perplexity(str(root / "teacher"), root / "shards", device="cpu", **kw)
    gpu = perplexity(str(root / "teacher"), root / "shards", device="cuda", **kw)
    assert gpu["device"].startswith("cuda") and abs(gpu["ppl"] / cpu["ppl"] - 1) < 1e-3
    assert json.dumps(gpu)  # serialisable
