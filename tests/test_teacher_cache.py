"""Offline top-k teacher cache: parity with torch.topk, leftover mass, resume, readers, the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from llm4all.distill.losses import KD_LOSSES, sparse_kd
from llm4all.distill.teacher_cache import LOG_REST_MIN, TeacherCache, build_cache, main
from llm4all.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

L = 16  # window length of the unit tests


@pytest.fixture(scope="module")
def shards(tiny_model, tmp_path_factory) -> Path:
    from llm4all.data.tokenize import main as tokenize
    from tinymodels import tiny_texts

    tmp = tmp_path_factory.mktemp("cache-shards")
    docs = tmp / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                            for i, t in enumerate(tiny_texts(12))))
    tokenize([docs], out=tmp / "shards", tokenizer=str(tiny_model), workers=1, val_fraction=0.0)
    return tmp / "shards"


@pytest.fixture(scope="module")
def teacher(tiny_model):
    from llm4all.models.load import load

    return load(str(tiny_model))[0]


def _window_inputs(shards: Path, indices) -> torch.Tensor:
    from llm4all.data.shards import TokenShards

    tokens = TokenShards(shards).tokens("train")
    return torch.from_numpy(np.stack([tokens[i * L:i * L + L].astype(np.int64) for i in indices]))


def test_cache_equals_topk_of_log_softmax_and_rest_is_leftover_mass(teacher, shards, tmp_path):
    index = build_cache(teacher, shards, tmp_path / "c", seq_len=L, top_k=8, batch_size=3,
                        dtype="float32", windows_per_shard=4)
    from llm4all.data.shards import TokenShards

    n_tokens = TokenShards(shards).num_tokens("train")
    assert index["n_windows"] == (n_tokens - 1) // L
    assert len(index["shard_files"]) == math.ceil(index["n_windows"] / 4)
    assert index["ids_dtype"] == "uint16" and index["complete"]
    cache = TeacherCache(tmp_path / "c")
    picks = [0, 3, 4, cache.n_windows - 1]  # shard boundaries included
    assert sorted(cache.windows.tolist()) == list(range(cache.n_windows))  # every aligned window, once
    aligned = cache.windows[picks]
    with torch.no_grad():
        logp = torch.log_softmax(teacher(_window_inputs(shards, aligned)).logits.float(), -1)  # (4, L, V)
    vals, ids = logp.topk(8, dim=-1)
    got_ids, got_logp, got_rest = cache.batch(picks)
    assert got_ids.dtype == torch.int64 and got_logp.shape == (4, L, 8) and got_rest.shape == (4, L)
    torch.testing.assert_close(got_ids, ids)
    torch.testing.assert_close(got_logp, vals, rtol=1e-3, atol=1e-3)  # float16 storage
    assert bool((got_logp[..., :-1] >= got_logp[..., 1:]).all())  # sorted descending
    exact_rest = torch.log1p(-vals.exp().sum(-1))
    torch.testing.assert_close(got_rest, exact_rest, rtol=1e-3, atol=2e-3)
    from_cached = torch.log1p(-got_logp.double().exp().sum(-1)).float()  # rest = log(1 − Σ exp(logp))
    torch.testing.assert_close(got_rest, from_cached, rtol=2e-2, atol=2e-2)
    # the window reader and the token reader agree with the aligned-window definition
    ids1, logp1, rest1 = cache.window(3)
    assert ids1.shape == (L, 8) and ids1.dtype == np.uint16 and isinstance(ids1, np.memmap)
    x, y = cache.tokens([3])
    torch.testing.assert_close(x, _window_inputs(shards, aligned[1:2]))
    assert torch.equal(x[0, 1:], y[0, :-1])
    with pytest.raises(IndexError):
        cache.window(cache.n_windows)
    # bytes per token: k·(2 + 2) + 2, the 8-byte window number per L tokens, the .npy headers
    n = index["n_windows"]
    headers = 128 * (3 * len(index["shard_files"]) + 1) / (n * L)
    assert index["bytes_per_token"] == pytest.approx(8 * 4 + 2 + 8 / L + headers, abs=1e-3)


def test_resume_skips_finished_shards_and_recomputes_a_partial_one(teacher, shards, tmp_path):
    out = tmp_path / "c"
    kw = dict(seq_len=L, top_k=4, batch_size=2, dtype="float32", windows_per_shard=3, max_windows=7)
    first = build_cache(teacher, shards, out, **kw)
    assert first["computed_tokens"] == 7 * L and first["reused_shards"] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    again = build_cache(teacher, shards, out, **kw)
    assert again["computed_tokens"] == 0 and again["reused_shards"] == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")} == before
    (out / "rest-00001.npy").unlink()  # as if killed between the files of shard 1
    third = build_cache(teacher, shards, out, **kw)
    assert third["computed_tokens"] == 3 * L and third["reused_shards"] == 2
    assert (out / "rest-00001.npy").stat().st_mtime_ns != before["rest-00001.npy"]
    # growing max_windows extends the same sample: full shards reused, the short last one recomputed
    seven = TeacherCache(out).windows
    grown = build_cache(teacher, shards, out, **{**kw, "max_windows": 9})
    assert grown["computed_tokens"] == 3 * L and grown["n_windows"] == 9
    assert np.array_equal(TeacherCache(out).windows[:7], seven)
    with pytest.raises(UserError, match="top_k=4"):
        build_cache(teacher, shards, out, **{**kw, "top_k": 5})


def test_a_partial_cache_samples_the_whole_split_not_its_head(teacher, shards, tmp_path):
    from llm4all.data.shards import TokenShards
    from llm4all.distill.teacher_cache import n_windows_of, window_order

    n_aligned = n_windows_of(TokenShards(shards).num_tokens("train"), L)
    index = build_cache(teacher, shards, tmp_path / "c", seq_len=L, top_k=4, dtype="float32", max_windows=6)
    assert index["aligned_windows"] == n_aligned > 12 and index["seed"] == 0
    rows = TeacherCache(tmp_path / "c").windows
    assert rows.tolist() == window_order(n_aligned, 0)[:6].tolist() and len(set(rows.tolist())) == 6
    assert rows.max() >= 6  # not the first six windows
    other = build_cache(teacher, shards, tmp_path / "d", seq_len=L, top_k=4, dtype="float32", max_windows=6,
                        seed=1)
    assert other["seed"] == 1 and TeacherCache(tmp_path / "d").windows.tolist() != rows.tolist()
    with pytest.raises(UserError, match="seed=0"):  # another sample cannot resume this one
        build_cache(teacher, shards, tmp_path / "c", seq_len=L, top_k=4, dtype="float32", max_windows=6,
                    seed=1)


def test_k_equal_vocab_sparse_loss_equals_dense(teacher, shards, tmp_path):
    from transformers import LlamaForCausalLM

    from tinymodels import build_tiny_model

    V = teacher.config.vocab_size
    build_cache(teacher, shards, tmp_path / "c", seq_len=L, top_k=V, dtype="float32", max_windows=4)
    cache = TeacherCache(tmp_path / "c")
    student = LlamaForCausalLM.from_pretrained(build_tiny_model(tmp_path / "s", seed=1)).eval()
    x, labels = cache.tokens(range(4))
    with torch.no_grad():
        s_logits, t_logits = student(x).logits, teacher(x).logits
    ids, logp, rest = cache.batch(range(4))
    assert bool((rest == LOG_REST_MIN).all())  # nothing left over at k = V
    for div in ("forward_kl", "reverse_kl", "jsd"):
        dense = KD_LOSSES.get(div)(s_logits, t_logits, labels=labels).item()
        for mode in ("renormalize", "bucket"):
            got = sparse_kd(s_logits, ids, logp, rest_logp=rest, mode=mode, divergence=div, labels=labels)
            assert got.item() == pytest.approx(dense, rel=2e-3, abs=1e-4), (div, mode)


def test_bf16_autocast_agrees_with_fp32_on_the_top_token(teacher, shards, tmp_path):
    build_cache(teacher, shards, tmp_path / "a", seq_len=L, top_k=4, dtype="float32", max_windows=4)
    build_cache(teacher, shards, tmp_path / "b", seq_len=L, top_k=4, dtype="bfloat16", max_windows=4)
    a, b = TeacherCache(tmp_path / "a").batch(range(4)), TeacherCache(tmp_path / "b").batch(range(4))
    assert (a[0][..., 0] == b[0][..., 0]).float().mean() > 0.9
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0.1)


def test_command_writes_done_and_checks_the_vocabulary(tiny_model, shards, tmp_path):
    index = main(str(tiny_model), shards, out=tmp_path / "c", seq_len=L, top_k=4, dtype="float32",
                 max_windows=5)
    assert index["n_windows"] == 5 and (tmp_path / "c" / "DONE").exists()
    assert (tmp_path / "c" / "config.yaml").exists() and TeacherCache(tmp_path / "c").n_windows == 5
    other = tmp_path / "other"
    other.mkdir()
    for f in shards.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    meta = json.loads((other / "index.json").read_text())
    meta["vocab_size"] = 49152
    (other / "index.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="re-tokenize with"):
        main(str(tiny_model), other, out=tmp_path / "bad", seq_len=L, top_k=4, dtype="float32")
    assert not (tmp_path / "bad").exists()  # nothing written
    with pytest.raises(UserError, match="exceeds the teacher's vocabulary"):
        main(str(tiny_model), shards, out=tmp_path / "bad", seq_len=L, top_k=1000, dtype="float32")
    with pytest.raises(UserError, match="fewer than one window"):
        main(str(tiny_model), shards, out=tmp_path / "bad", seq_len=10**7, top_k=4, dtype="float32")
    with pytest.raises(UserError, match="not a teacher cache"):
        TeacherCache(tmp_path / "nothing")


@pytest.mark.slow
def test_real_teacher_on_demo_windows_reports_bytes_per_token(tmp_path):
    from itertools import islice

    from llm4all.data.demo import iter_demo
    from llm4all.data.tokenize import main as tokenize

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n"
                            for d in islice(iter_demo("en"), 40)))
    tokenize([docs], out=tmp_path / "shards", tokenizer="smollm2-135m", workers=1, val_fraction=0.0)
    index = main("smollm2-135m", tmp_path / "shards", out=tmp_path / "cache", seq_len=128, top_k=64,
                 batch_size=8, max_windows=8)
    print(f"\nbytes/token {index['bytes_per_token']}, {index['tokens_per_second']} tokens/s (bf16)")
    assert index["ids_dtype"] == "uint16" and index["vocab_size"] == 49152
    assert index["bytes_per_token"] == pytest.approx(64 * 4 + 2 + 8 / 128 + 4 * 128 / (8 * 128), abs=1e-3)
    cache = TeacherCache(tmp_path / "cache")
    ids, logp, rest = cache.batch(range(8))
    mass = logp.exp().sum(-1) + rest.exp()
    torch.testing.assert_close(mass, torch.ones_like(mass), rtol=0, atol=0.02)
    x, labels = cache.tokens(range(8))
    hit = (ids == labels[..., None]).any(-1).float().mean().item()
    assert hit > 0.6  # the next token is usually among the teacher's top 64 (English text)
