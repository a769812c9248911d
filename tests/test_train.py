import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from llm4all.data.shards import TokenShards
from llm4all.data.tokenize import main as tokenize
from llm4all.errors import UserError
from llm4all.train.command import main as train
from llm4all.train.sampler import WindowSampler
from llm4all.train.schedule import lr_factor
from tinymodels import build_tiny_model, tiny_texts


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = build_tiny_model(root / "model")
    docs = root / "docs.jsonl"
    with docs.open("w") as f:
        for i, text in enumerate(tiny_texts(160, words=80)):
            f.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    tokenize([docs], out=root / "shards", tokenizer=str(model), workers=1, val_fraction=0.1)
    return root / "shards", model


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


BASE = {"seq_len": 32, "micro_batch": 4, "lr": 3e-3, "warmup": 2, "precision": "fp32"}


def test_loss_decreases_and_model_is_saved(shards, tmp_path):
    data, model = shards
    result = train(data, out=tmp_path / "run", model=str(model), steps=40, **BASE)
    curve = losses(tmp_path / "run")
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.15
    assert result["val_ppl"] < 64  # below the uniform distribution over the 64-token vocabulary
    saved = json.loads((tmp_path / "run" / "model" / "llm4all.json").read_text())
    assert saved["made_by"] == "llm4all train"
    row = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])
    assert row["tokens"] == 40 * 4 * 32 and row["params"] > 0
    assert row["loss"] == pytest.approx(result["val_loss"])


def test_resume_reproduces_the_uninterrupted_run(shards, tmp_path):
    data, model = shards
    kw = {**BASE, "steps": 8, "save_every": 2, "model": str(model)}
    train(data, out=tmp_path / "straight", **kw)
    first = train(data, out=tmp_path / "killed", stop_after=5, **kw)
    assert first["step"] == 5 and not (tmp_path / "killed" / "model").exists()
    train(data, out=tmp_path / "killed", **kw)  # resumes from the step-4 checkpoint
    assert losses(tmp_path / "killed") == pytest.approx(losses(tmp_path / "straight"), abs=1e-6)
    assert len(list((tmp_path / "killed" / "checkpoints").iterdir())) == 2  # keep_last


def test_accumulation_equals_one_large_batch(shards, tmp_path):
    data, model = shards
    common = {**BASE, "steps": 4, "model": str(model)}
    train(data, out=tmp_path / "big", **{**common, "micro_batch": 8, "grad_accum": 1})
    train(data, out=tmp_path / "acc", **{**common, "micro_batch": 2, "grad_accum": 4})
    assert losses(tmp_path / "acc") == pytest.approx(losses(tmp_path / "big"), rel=1e-5)


def test_resume_with_other_arguments_is_refused(shards, tmp_path):
    data, model = shards
    train(data, out=tmp_path / "r", model=str(model), steps=4, stop_after=2, save_every=2, **BASE)
    with pytest.raises(UserError, match="different configuration"):
        train(data, out=tmp_path / "r", model=str(model), steps=4, save_every=2, **{**BASE, "lr": 1e-2})


def test_lora_trains_adapters_and_merges_exactly(shards, tmp_path):
    pytest.importorskip("peft")
    data, model = shards
    result = train(data, out=tmp_path / "lora", model=str(model), steps=6, lora_rank=4, **BASE)
    assert result["step"] == 6
    from llm4all.models.load import load

    base, _ = load(model)
    merged, _ = load(tmp_path / "lora" / "model")
    ids = torch.arange(1, 20)[None]
    assert not torch.allclose(base(ids).logits, merged(ids).logits)  # adapters learned something
    assert {k for k, _ in merged.named_parameters()} == {k for k, _ in base.named_parameters()}


@pytest.mark.slow
def test_bitnet_training_saves_a_ternary_model_that_computes_what_it_trained(shards, tmp_path):
    from llm4all.models.bitnet import BitLinear, bitnet_convert
    from llm4all.models.load import load
    from llm4all.models.packed.int8 import TernaryLinear

    data, model = shards
    train(data, out=tmp_path / "bit", model=str(model), steps=30, bitnet=True, **BASE)
    curve = losses(tmp_path / "bit")
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.1  # it learns through the ternary rounding
    ternary, _ = load(str(tmp_path / "bit" / "model"))
    latent, _ = load(str(tmp_path / "bit" / "model-latent"))
    assert any(isinstance(m, TernaryLinear) for m in ternary.modules())
    bitnet_convert(latent)
    assert any(isinstance(m, BitLinear) for m in latent.modules())
    ids = torch.randint(0, 64, (2, 24))
    with torch.no_grad():
        want, got = latent(ids).logits, ternary(ids).logits
    # the packed int8 x ternary product is the fake-quantised training forward, up to the fp16
    # storage of embeddings and norms in the packed checkpoint
    assert torch.allclose(got, want, atol=1e-2 * want.abs().max().item())
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.95
    latent_bytes = (tmp_path / "bit" / "model-latent" / "model.safetensors").stat().st_size
    assert (tmp_path / "bit" / "model" / "model.safetensors").stat().st_size < latent_bytes


def test_replay_reports_forgetting(shards, tmp_path):
    data, model = shards
    result = train(data, out=tmp_path / "cpt", model=str(model), steps=4, replay=data,
                   replay_fraction=0.25, **BASE)
    report = json.loads((tmp_path / "cpt" / "forgetting.json").read_text())
    assert set(report) >= {"old_ppl_before", "old_ppl_after", "new_ppl_before", "new_ppl_after"}
    assert result["forgetting"] == report


def test_sampler_is_a_function_of_seed_and_step(shards):
    data, _ = shards
    s = WindowSampler(TokenShards(data), seq_len=16, seed=3)
    assert torch.equal(s.windows(5, 8), s.windows(5, 8))
    assert not torch.equal(s.windows(5, 8), s.windows(6, 8))
    whole = s.windows(2, 8)
    halves = torch.cat([s.batch(2, 0, 4, 1, rank=r, world=2)[0] for r in range(2)])
    assert torch.equal(halves, whole[:, :-1])


def test_curriculum_restricts_early_steps_to_the_easy_documents(shards, tmp_path):
    data, _ = shards
    import zstandard

    rows = [json.loads(x) for x in zstandard.ZstdDecompressor().decompress(
        (data / "train-docs.jsonl.zst").read_bytes(), max_output_size=10**7).decode().splitlines()]
    ids = [r["id"] for r in rows]
    manifest = tmp_path / "curriculum.json"
    manifest.write_text(json.dumps({"kind": "curriculum", "ids": ids[::-1],
                                    "pacing": {"name": "linear", "c0": 0.05}}))
    s = WindowSampler(TokenShards(data), seq_len=8, curriculum=manifest, total_steps=100)
    easy = rows[-max(1, int(0.05 * len(rows)) + 1):]
    lo = min(r["start"] for r in easy)
    assert (s.starts(0, 64) >= lo).all()
    assert (s.starts(99, 256) < lo).any()


def _docs_of(data, starts):
    from llm4all.data.packing import doc_table
    from llm4all.data.shards import TokenShards

    ids, begin, _ = doc_table(TokenShards(data), "train")
    order = np.argsort(begin)
    return [ids[order[np.searchsorted(begin[order], p, side="right") - 1]] for p in starts]


def test_mixture_proportions_hold_and_a_curriculum_paces_each_group(shards, tmp_path):
    """A mixture draws its groups at their weights; with a curriculum too, the weights still hold at
    every step and each group offers only what the curriculum allows (its easiest document when
    the curriculum allows none of its own yet): the combination is explicit, not an override."""
    import zstandard

    data, _ = shards
    rows = [json.loads(x) for x in zstandard.ZstdDecompressor().decompress(
        (data / "train-docs.jsonl.zst").read_bytes(), max_output_size=10**7).decode().splitlines()]
    ids = [r["id"] for r in rows]
    a, b = ids[: len(ids) // 2], ids[len(ids) // 2:]
    mixture = tmp_path / "mixture.json"
    mixture.write_text(json.dumps({"kind": "mixture", "groups": {"a": {"weight": 0.8, "ids": a},
                                                                 "b": {"weight": 0.2, "ids": b}}}))
    drawn = _docs_of(data, WindowSampler(TokenShards(data), seq_len=8, mixture=mixture).starts(3, 4000))
    assert abs(sum(d in set(a) for d in drawn) / len(drawn) - 0.8) < 0.03
    curriculum = tmp_path / "curriculum.json"  # easiest first: b's documents from its end, then a's
    curriculum.write_text(json.dumps({"kind": "curriculum", "ids": ids[::-1],
                                      "pacing": {"name": "linear", "c0": 0.1}}))
    both = WindowSampler(TokenShards(data), seq_len=8, curriculum=curriculum, mixture=mixture,
                         total_steps=100)
    allowed = set(ids[::-1][: both._allowed(0)])
    assert allowed <= set(b)
    early = _docs_of(data, both.starts(0, 4000))
    assert abs(sum(d in set(a) for d in early) / len(early) - 0.8) < 0.03  # the weights hold
    assert {d for d in early if d in set(b)} <= allowed  # b: only what the curriculum allows
    assert {d for d in early if d in set(a)} == {a[-1]}  # a: nothing allowed yet, its easiest
    late = _docs_of(data, both.starts(99, 4000))
    assert len({d for d in late if d in set(a)}) > len(a) // 2  # by the end, all of a opens up


def test_schedules():
    assert lr_factor(0, 100, "cosine", warmup=10) == pytest.approx(0.1)
    assert lr_factor(10, 100, "cosine", warmup=10) == pytest.approx(1.0)
    assert lr_factor(100, 100, "cosine", warmup=10, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(50, 100, "wsd", warmup=10, decay_fraction=0.2) == 1.0
    assert lr_factor(90, 100, "wsd", warmup=10, decay_fraction=0.2, min_lr_ratio=0.0) == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs, message", [
    ({"optimizer": "adamm"}, "unknown optimizers entry 'adamm'.*did you mean 'adam"),
    ({"steps": 0}, "--steps must be an integer ≥ 1, got 0"),
    ({"lr": 0.0}, "--lr must be a positive number, got 0.0"),
    ({"lr": float("nan")}, "--lr must be a positive number, got nan"),
    ({"warmup": -1}, "--warmup must be an integer ≥ 0"),
    ({"save_every": -5}, "--save-every must be an integer ≥ 0"),
    ({"keep_last": 0}, "--keep-last must be an integer ≥ 1"),
    ({"eval_tokens": 0}, "--eval-tokens must be an integer ≥ 1"),
    ({"min_lr_ratio": 1.5}, r"--min-lr-ratio must be a number in \[0.0, 1.0\]"),
    ({"betas": [0.9, 1.0]}, r"--betas: two numbers in \[0, 1\)"),
    ({"log_to": ["wandb"]}, "unknown logger 'wandb'"),
    ({"seq_len": 100000}, "beyond the model.s 256 positions"),
    ({"seq_len": 320}, "--seq-len 320 is beyond the model's 256 positions"),
    ({"model": "no-such-preset"}, "unknown presets entry"),
])
def test_bad_configs(shards, tmp_path, kwargs, message):
    data, model = shards
    args = {"model": str(model), "steps": 2, **{k: v for k, v in BASE.items() if k not in kwargs}, **kwargs}
    with pytest.raises(UserError, match=message):
        train(data, out=tmp_path / "bad", **args)
    assert not (tmp_path / "bad" / "model").exists()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_equal_one_with_the_same_global_batch(shards, tmp_path, strategy):
    data, model = shards
    common = ["--model", str(model), "--steps", "3", "--seq-len", "32", "--lr", "3e-3", "--warmup", "1",
              "--precision", "fp32", "--strategy", strategy]
    one = subprocess.run([sys.executable, "-m", "llm4all", "train", str(data), "--out", str(tmp_path / "one"),
                          "--micro-batch", "2", "--grad-accum", "2", *common], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "-m", "llm4all", "train", str(data), "--out", str(tmp_path / "two"),
                          "--micro-batch", "2", "--grad-accum", "1", *common],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)


def test_fused_cross_entropy_matches_the_plain_loss_and_gradients(tiny_model):
    from llm4all.models.fused_ce import fused_linear_cross_entropy
    from llm4all.models.load import load
    from llm4all.train.loop import cross_entropy_loss

    model, _ = load(tiny_model)
    ids = torch.randint(0, 64, (3, 17))
    labels = torch.randint(0, 64, (3, 17))
    fused, _ = cross_entropy_loss(model, ids, labels)
    fused.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    plain = torch.nn.functional.cross_entropy(model(ids).logits.flatten(0, 1), labels.flatten())
    plain.backward()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    for n, p in model.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-6), n
    h, w = torch.randn(40, 8), torch.randn(30, 8)
    y = torch.randint(0, 30, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = fused_linear_cross_entropy(h, w, y, chunk=7)
    assert bf16.item() == pytest.approx(torch.nn.functional.cross_entropy(h @ w.t(), y).item(), rel=0.02)
    # a target whose probability underflows fp32 (logit gap ~200 nats) still gets its exact loss
    w_far = w.clone()
    w_far[y[0]] = -25.0 * h[0] / h[0].norm() ** 2 * 8
    exact = torch.nn.functional.cross_entropy(h @ w_far.t(), y)
    assert exact.item() > 2.0 and torch.isfinite(exact)
    assert fused_linear_cross_entropy(h, w_far, y, chunk=7).item() == pytest.approx(exact.item(), rel=1e-5)


def test_rerunning_a_finished_run_keeps_its_metrics(shards, tmp_path):
    """A second identical call resumes from the final checkpoint with nothing left to train: it used
    to fail with KeyError 'tokens' and drop the metrics."""
    data, model = shards
    first = train(data, out=tmp_path / "run", model=str(model), steps=4, **BASE)
    again = train(data, out=tmp_path / "run", model=str(model), steps=4, **BASE)
    assert again["tokens"] == first["tokens"] == 4 * BASE["micro_batch"] * BASE["seq_len"]
    assert again["val_ppl"] == pytest.approx(first["val_ppl"]) and again["steps_this_run"] == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


@pytest.mark.parametrize("damage", ["model.safetensors", "optimizer.pt", "state.json"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(shards, tmp_path, caplog, damage):
    data, model = shards
    args = {"model": str(model), **BASE, "save_every": 2, "keep_last": 3}
    train(data, out=tmp_path / "run", steps=6, stop_after=4, **args)  # checkpoints at steps 2 and 4
    newest = tmp_path / "run" / "checkpoints" / "step-000004" / damage
    newest.write_bytes(newest.read_bytes()[: len(newest.read_bytes()) // 3])
    with caplog.at_level("INFO", logger="llm4all"):
        result = train(data, out=tmp_path / "run", steps=6, **args)
    out = caplog.text
    assert "step-000004" in out and "is damaged" in out and "resumed from" in out and "step-000002" in out
    assert result["steps_this_run"] == 4 and result["step"] == 6


def test_threads_follow_the_free_cores(shards, tmp_path, monkeypatch, caplog):
    """On one CPU process the loop computes with the cores other processes leave free, and looks
    again every RECHECK_STEPS (issue 16 item 5); --threads fixes the count."""
    import torch

    from llm4all.train import loop

    data, model = shards
    free = iter([2, 2, 1, 1, 1, 1, 1, 1])
    monkeypatch.setattr(loop, "free_cores", lambda requested=0: requested or next(free))
    monkeypatch.setattr(loop, "RECHECK_STEPS", 2)
    before = torch.get_num_threads()
    with caplog.at_level("INFO", logger="llm4all"):
        train(data, out=tmp_path / "auto", model=str(model), steps=6, **BASE)
    rows = [json.loads(x) for x in (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()]
    assert [r["threads"] for r in rows] == [2, 2, 2, 2, 1, 1]  # the look before step 5 saw 1 free core
    assert "step 4: 1 free core(s): computing with 1 thread(s), not 2" in caplog.text
    assert torch.get_num_threads() == before  # restored after training
    train(data, out=tmp_path / "fixed", model=str(model), steps=4, threads=1, **BASE)
    rows = [json.loads(x) for x in (tmp_path / "fixed" / "metrics.jsonl").read_text().splitlines()]
    assert {r["threads"] for r in rows} == {1}


def test_llm4all_threads_sets_one_count_for_every_command(monkeypatch):
    from llm4all.threads import free_cores

    monkeypatch.setenv("LLM4ALL_THREADS", "3")
    assert free_cores() == 3 and free_cores(1) == 1
