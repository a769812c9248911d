"""Diversity coefficient (Lee et al. 2023): Task2Vec distance, CI, probe Fisher, command."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from llm4all.cli import COMMANDS
from llm4all.curate.diversity import (
    coefficient_with_ci,
    diversity_coefficient,
    document_fisher,
    main,
    pairwise_distances,
    probe_parameters,
    reservoir,
    task2vec_distance,
)
from llm4all.curate.signals.model import cached_model
from llm4all.errors import UserError
from tinymodels import tiny_texts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_task2vec_distance_hand_values():
    assert task2vec_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert task2vec_distance(np.array([2.0, 5.0]), np.array([2.0, 5.0])) == pytest.approx(0.0)
    # a = (1/4, 1/2), b = (3/4, 1/2): cos = (7/16) / sqrt(5/16 * 13/16) = 7 / sqrt(65)
    fa, fb = np.array([1.0, 1.0]), np.array([3.0, 1.0])
    assert task2vec_distance(fa, fb) == pytest.approx(1 - 7 / math.sqrt(65))
    assert task2vec_distance(1e-9 * fa, 1e-9 * fb) == pytest.approx(1 - 7 / math.sqrt(65))
    assert task2vec_distance(np.zeros(2), np.zeros(2)) == 0.0  # defined, not NaN


def test_coefficient_and_t_interval():
    d = pairwise_distances(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    assert d[0, 1] == pytest.approx(1.0) and d[0, 2] == d[2, 0] and np.all(np.diag(d) == 0)
    m = np.array([[0, 0.1, 0.2], [0.1, 0, 0.3], [0.2, 0.3, 0]])
    got = coefficient_with_ci(m)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(pairs)
    assert got["diversity_coefficient"] == pytest.approx(0.2)
    assert got["ci95"] == pytest.approx([0.2 - half, 0.2 + half])
    lo, hi = got["ci95_bootstrap"]
    assert 0.1 <= lo <= 0.2 <= hi <= 0.3 and got["pairs"] == 3


def test_probe_parameters_are_last_block_and_final_norm(tiny_model):
    net, _ = cached_model(str(tiny_model), "float32")
    names = {id(p): n for n, p in net.named_parameters()}
    got = sorted(names[id(p)] for p in probe_parameters(net))
    assert got == sorted(n for n in names.values()
                         if n.startswith("model.layers.1.") or n == "model.norm.weight")


def test_document_fisher_equals_full_backward(tiny_model):
    """Freezing all but the probed block gives the same gradients as a full backward."""
    net, tok = cached_model(str(tiny_model), "float32")
    params = probe_parameters(net)
    ids = torch.tensor(tok(tiny_texts(1)[0], add_special_tokens=False)["input_ids"][:20])
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    got = document_fisher(net, ids, params, torch.Generator().manual_seed(3))
    for p in net.parameters():
        p.requires_grad_(True)
    logits = net(input_ids=ids[None]).logits[0, :-1]
    y = torch.multinomial(logits.detach().softmax(-1), 1,
                          generator=torch.Generator().manual_seed(3))[:, 0]
    net.zero_grad()
    torch.nn.functional.cross_entropy(logits, y).backward()
    want = np.concatenate([p.grad.double().pow(2).reshape(p.shape[0], -1).mean(1).numpy()
                           for p in params])
    net.zero_grad()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-14)
    assert got.shape == (sum(p.shape[0] for p in params),) and (got >= 0).all()


def test_identical_documents_less_diverse_than_mixed(tiny_model):
    mixed = tiny_texts(40, seed=1, words=30) + [" ".join(["the of"] * 12) + "."] * 10
    same = [tiny_texts(1, seed=2, words=30)[0]] * 40
    kwargs = {"probe": str(tiny_model), "num_batches": 5, "batch_size": 4, "max_tokens": 24}
    a = diversity_coefficient(same, **kwargs)
    b = diversity_coefficient(mixed, **kwargs)
    assert 0 <= a["diversity_coefficient"] < b["diversity_coefficient"] <= 1
    assert b == {**diversity_coefficient(mixed, **kwargs), "seconds": b["seconds"]}
    # filters of the last block and final norm (hidden 32, 2 kv heads of 8, MLP 64):
    # q 32 + k 16 + v 16 + o 32 + gate 64 + up 64 + down 32 + 2 norms 64 + final norm 32
    assert a["disjoint_batches"] and a["pairs"] == 10 and a["embedding_dim"] == 352
    lo, hi = b["ci95"]
    assert lo <= b["diversity_coefficient"] <= hi


def test_bad_input(tiny_model):
    with pytest.raises(UserError, match="num_batches >= 2"):
        diversity_coefficient(["the of"] * 8, probe=str(tiny_model), num_batches=1)
    with pytest.raises(UserError, match="1 documents with at least 2 tokens"):
        diversity_coefficient(["the of", "the", ""], probe=str(tiny_model), batch_size=2)


def test_reservoir_is_uniform_and_ordered():
    assert reservoir(iter(range(5)), 10, seed=0) == list(range(5))
    counts = np.zeros(20)
    for seed in range(400):
        picked = reservoir(iter(range(20)), 5, seed)
        assert picked == sorted(picked) and len(set(picked)) == 5
        counts[picked] += 1
    assert counts.min() > 60 and counts.max() < 140  # expected 100 each


def test_main_writes_json_and_is_a_command(tiny_model, tmp_path):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                            for i, t in enumerate(tiny_texts(12, words=20))))
    got = main([data], probe=str(tiny_model), num_batches=3, batch_size=2, max_tokens=16,
               out=tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "diversity.json").read_text())
    assert saved["diversity_coefficient"] == got["diversity_coefficient"]
    assert saved["documents"] == 6 and saved["data"] == [str(data)]  # reservoir of 3 x 2
    assert COMMANDS["diversity"] == "llm4all.curate.diversity:main"
    with pytest.raises(UserError, match="no such file"):
        main([tmp_path / "missing.jsonl"], probe=str(tiny_model), out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_main_writes_its_manifest_and_never_another_stages(tiny_model, tmp_path):
    from llm4all.runs import read_manifest, write_manifest

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                            for i, t in enumerate(tiny_texts(8, words=20))))
    kwargs = {"probe": str(tiny_model), "num_batches": 2, "batch_size": 2, "max_tokens": 16}
    got = main([data], out=tmp_path / "out", **kwargs)
    manifest = read_manifest(tmp_path / "out")
    assert manifest["command"] == "diversity" and manifest["files"] == {"result": "diversity.json"}
    assert manifest["inputs"] == {"data": [str(data)], "probe": str(tiny_model)}
    assert manifest["metrics"]["diversity_coefficient"] == got["diversity_coefficient"]
    assert manifest["metrics"]["documents"] == 4
    write_manifest(tmp_path / "curate", "curate", metrics={"kept": 1})
    with pytest.raises(UserError, match="belongs to another stage"):
        main([data], out=tmp_path / "curate", **kwargs)
    assert read_manifest(tmp_path / "curate")["command"] == "curate"
    assert not (tmp_path / "curate" / "diversity.json").exists()


DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


@pytest.mark.slow
def test_real_teacher_kjv_less_diverse_than_mixed_corpus():
    from llm4all.data.readers import read_documents

    def first(name: str, n: int) -> list[str]:
        return [d.text for d in itertools.islice(read_documents(DEMO / name), n)]

    kjv = first("en/kjv.jsonl.zst", 9)
    mixed = kjv[:3] + first("en/pydoc.jsonl.zst", 3) + first("fr/debref-fr.jsonl.zst", 3)
    kwargs = {"num_batches": 3, "batch_size": 3, "max_tokens": 48, "seed": 0}
    a = diversity_coefficient(kjv, **kwargs)["diversity_coefficient"]
    b = diversity_coefficient(mixed, **kwargs)["diversity_coefficient"]
    assert 0 < a < b < 1
