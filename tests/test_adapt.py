"""llm4all adapt: continued training of a model on a domain, with forgetting measured outside it."""

from __future__ import annotations

import json

import pytest

from llm4all.distill.adapt import main as adapt
from llm4all.errors import UserError
from tinymodels import tiny_teacher_and_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"seq_len": 32, "micro_batch": 4, "precision": "fp32", "eval_tokens": 512, "warmup": 1}


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """A tiny model and two token-shard sets: the domain, and text it should not forget."""
    import random

    from llm4all.data.tokenize import main as tokenize
    from tinymodels import WORDS

    root = tmp_path_factory.mktemp("adapt")
    model = tiny_teacher_and_shards(root, layers=2)
    rng = random.Random(7)
    domain = WORDS[:8]  # a narrow "domain": eight words only
    docs = root / "domain.jsonl"
    with docs.open("w") as f:
        for i in range(120):
            text = " ".join(rng.choice(domain) for _ in range(60))
            f.write(json.dumps({"id": f"x{i}", "text": text}) + "\n")
    tokenize([docs], out=root / "domain", tokenizer=str(model), workers=1, val_fraction=0.1)
    return root, model


@pytest.mark.slow
@pytest.mark.parametrize("method, extra, ratio", [
    ("full", {}, 0.8),
    ("lora", {"lora_rank": 4}, 0.9),  # measured 0.875: adapters leave the tied embedding/head as they are
    ("full", {"self_distill": 0.5}, 0.8),
])
def test_adapting_lowers_domain_perplexity_and_measures_forgetting(domains, tmp_path, method, extra, ratio):
    root, model = domains
    out = tmp_path / method
    result = adapt(root / "domain", out=out, model=str(model), method=method, forgetting=root / "shards",
                   steps=12, **{"lr": 1e-2, **TINY, **extra})
    assert result["after"]["val_ppl"] < ratio * result["before"]["val_ppl"]  # the domain was learnt
    assert result["forgetting"] == pytest.approx(result["after"]["outside_ppl"] /
                                                 result["before"]["outside_ppl"] - 1)
    manifest = json.loads((out / "llm4all.json").read_text())
    assert manifest["command"] == "adapt" and manifest["models"][0]["role"] == "adapted"
    assert manifest["models"][1] == {"path": str(model), "role": "teacher"}  # the report's reference
    from llm4all.report import collect

    kinds = {v["name"]: v["kind"] for v in collect.variants(collect.stages(tmp_path))[0]}
    assert kinds[method] == "adapted" and kinds[model.name] == "teacher"
    from llm4all.models.load import load

    adapted, _ = load(out / "model")  # a plain HF model: LoRA merged
    assert not any("lora" in name for name, _ in adapted.named_parameters())


def test_bad_inputs(domains, tmp_path):
    root, model = domains
    with pytest.raises(UserError, match=r"--self-distill must be in \[0, 1\)"):
        adapt(root / "domain", out=tmp_path / "x", model=str(model), self_distill=1.0)
    with pytest.raises(UserError, match="--lora-rank needs --method lora"):
        adapt(root / "domain", out=tmp_path / "x", model=str(model), method="full", lora_rank=4)
    assert not (tmp_path / "x").exists()


def test_replay_measurably_reduces_forgetting_and_its_report_adds_up(domains, tmp_path):
    """Continued training on a narrow domain forgets the model's first text; replaying half of each
    batch from that text forgets less. --replay-fraction 0 measures forgetting without replay.
    The report's numbers are checked against independent evaluations, not just its keys."""
    from llm4all.data.shards import TokenShards
    from llm4all.models.load import load
    from llm4all.train.command import main as train
    from llm4all.train.loop import validation_fn

    root, model = domains
    runs = {}
    for fraction in (0.0, 0.5):
        runs[fraction] = train(root / "domain", out=tmp_path / f"r{fraction}", model=str(model), steps=12,
                               replay=root / "shards", replay_fraction=fraction, lr=1e-2, **TINY)
    lost = {f: r["forgetting"]["forgetting"] for f, r in runs.items()}
    assert lost[0.0] > 0.2 and lost[0.5] < 0.5 * lost[0.0]  # replay halves (at least) what is forgotten
    report = json.loads((tmp_path / "r0.0" / "forgetting.json").read_text())
    old = validation_fn(TokenShards(root / "shards").tokens("validation", TINY["eval_tokens"]),
                        TINY["seq_len"], TINY["precision"])
    new = validation_fn(TokenShards(root / "domain").tokens("validation", TINY["eval_tokens"]),
                        TINY["seq_len"], TINY["precision"])
    start, _ = load(model)
    after, _ = load(tmp_path / "r0.0" / "model")
    assert report["old_ppl_before"] == pytest.approx(old(start)["val_ppl"], rel=1e-4)
    assert report["new_ppl_before"] == pytest.approx(new(start)["val_ppl"], rel=1e-4)
    assert report["old_ppl_after"] == pytest.approx(old(after)["val_ppl"], rel=1e-3)
    assert report["new_ppl_after"] == pytest.approx(new(after)["val_ppl"], rel=1e-3)
    assert report["forgetting"] == pytest.approx(report["old_ppl_after"] / report["old_ppl_before"] - 1)
    assert report["adaptation"] == pytest.approx(1 - report["new_ppl_after"] / report["new_ppl_before"])
