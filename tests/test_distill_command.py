import json

import pytest

from llm4all.distill.command import main as distill
from llm4all.errors import UserError
from tinymodels import build_tiny_model, tiny_teacher_and_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teacher = tiny_teacher_and_shards(root, layers=4)
    return root, teacher


COMMON = {"steps": 4, "seq_len": 32, "micro_batch": 4, "precision": "fp32", "top_k": 8, "max_windows": 24,
          "prompt_tokens": 8, "warmup": 1}


@pytest.mark.parametrize("mode, extra", [
    ("offline", {}),
    ("offline", {"sparse_mode": "bucket", "divergence": "reverse_kl"}),
    ("online", {"divergence": "jsd", "kd_options": {"beta": 0.5}, "feature_weight": 0.5,
                "relation_weight": 0.5, "relation_heads": 2}),
    ("self", {}),
    ("on_policy", {"divergence": "jsd", "on_policy_fraction": 1.0}),
    ("sequence", {}),
])
def test_every_mode_trains_a_half_depth_student(setup, tmp_path, mode, extra):
    root, teacher = setup
    result = distill(root / "shards", out=tmp_path / mode, teacher=str(teacher), mode=mode, **COMMON, **extra)
    assert result["step"] == 4 and result["val_ppl"] > 1
    config = json.loads((tmp_path / mode / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2  # every 2nd of the teacher's 4 layers
    losses = [json.loads(x) for x in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(x["loss"] >= 0 for x in losses)
    if mode != "sequence":
        assert "kd" in losses[0]


def test_offline_cache_is_built_once_and_reused(setup, tmp_path):
    root, teacher = setup
    distill(root / "shards", out=tmp_path / "a", teacher=str(teacher), **COMMON)
    cache = tmp_path / "a" / "teacher_cache"
    index = json.loads((cache / "index.json").read_text())
    assert index["complete"] and index["top_k"] == 8
    stamp = (cache / "index.json").stat().st_mtime_ns
    distill(root / "shards", out=tmp_path / "b", teacher=str(teacher), cache=cache, **COMMON)
    assert (cache / "index.json").stat().st_mtime_ns == stamp
    assert not (tmp_path / "b" / "teacher_cache").exists()


def test_kd_with_alpha_one_moves_the_student_towards_the_teacher(setup, tmp_path):
    root, teacher = setup
    distill(root / "shards", out=tmp_path / "kd", teacher=str(teacher), alpha=1.0,
            **{**COMMON, "steps": 20, "lr": 3e-3})
    kd = [json.loads(x)["kd"] for x in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    assert sum(kd[-4:]) < sum(kd[:4])


def test_bad_inputs(setup, tmp_path):
    root, teacher = setup
    with pytest.raises(UserError, match="--alpha must be in"):
        distill(root / "shards", out=tmp_path / "x", teacher=str(teacher), alpha=1.5, **COMMON)
    with pytest.raises(UserError, match="--sparse-mode bucket needs --temperature 1"):
        distill(root / "shards", out=tmp_path / "x", teacher=str(teacher), temperature=2.0, **COMMON)
    assert not (tmp_path / "x").exists()  # refused before the cache is built
    with pytest.raises(UserError, match="unknown KD divergence 'kl'; valid: forward_kl"):
        distill(root / "shards", out=tmp_path / "x", teacher=str(teacher), divergence="kl", **COMMON)
    with pytest.raises(UserError, match="kd loss 'jsd': unknown option 'bta'.*did you mean 'beta'"):
        distill(root / "shards", out=tmp_path / "x", teacher=str(teacher), divergence="jsd",
                kd_options={"bta": 0.5}, **COMMON)
    with pytest.raises(UserError, match="--feature-weight and --relation-weight need"):
        distill(root / "shards", out=tmp_path / "x", teacher=str(teacher), feature_weight=1.0, **COMMON)
    with pytest.raises(UserError, match=r"--prompt-tokens must be in \(0, --seq-len 32\)"):
        distill(root / "shards", out=tmp_path / "x", teacher=str(teacher), mode="sequence",
                **{**COMMON, "prompt_tokens": 32})
    assert not (tmp_path / "x").exists()  # every option refused before any work
    other = build_tiny_model(tmp_path / "other")
    (other / "tokenizer.json").write_text((other / "tokenizer.json").read_text().replace('"the"', '"thee"'))
    with pytest.raises(UserError, match="vocabularies map .* differently"):
        distill(root / "shards", out=tmp_path / "x", teacher=str(other), **COMMON)
    assert not (tmp_path / "x" / "model").exists()


def test_cache_sampler_uses_every_cached_window_once_per_epoch():
    import numpy as np

    from llm4all.distill.step import CacheSampler

    class Rows:  # a stand-in cache: returns the row numbers it is asked for
        n_windows, seq_len = 10, 4

        def tokens(self, idx):
            return np.asarray(idx), None

        def batch(self, idx):
            return None, None, None

    sampler = CacheSampler(Rows(), seed=3)
    drawn = np.concatenate([sampler.batch(step, 0, 4, 1)[0] for step in range(5)])  # 20 draws = 2 epochs
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:]) == list(range(10))
    assert list(drawn[:10]) != list(drawn[10:])  # a new order each epoch
    again = CacheSampler(Rows(), seed=3)
    assert np.array_equal(again.batch(3, 0, 4, 1)[0], drawn[12:16])  # a pure function of (seed, step)
    # two processes x two micro-batches split one step's draws without overlap
    parts = [again.batch(1, m, 2, 2, rank=r, world=2)[0] for r in range(2) for m in range(2)]
    assert np.array_equal(np.concatenate(parts), again.rows(1, 8))
