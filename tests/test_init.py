"""Student initialisation: layer subsets, PCA-narrowed widths, head/channel choice, vocab check."""

import json
import math

import pytest
import torch

from llm4all.errors import UserError
from llm4all.models.init import check_shared_vocabulary, pca_basis, select_layers, student_from_teacher
from llm4all.models.presets import build_model, llama_config


def teacher(layers=4, tied=True, bias=False, vocab=100, seed=1):
    """A random llama with non-trivial RMSNorm gains (so folding them is really tested)."""
    c = llama_config(64, layers, 4, 2, 128, head_dim=16, vocab_size=vocab, tie_word_embeddings=tied)
    c.attention_bias = c.mlp_bias = bias
    model = build_model(c, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


IDS = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def logits(model, ids=IDS):
    return model(ids).logits


def test_select_layers():
    assert select_layers(30, every=None) == list(range(0, 30, 2))  # DistilBERT: one out of two
    assert select_layers(12, layers=[0, 2, 4, 7, 9, 11]) == [0, 2, 4, 7, 9, 11]
    assert select_layers(5, every=1) == [0, 1, 2, 3, 4]
    for kw, msg in (({"layers": [0, 5]}, r"indices in 0\.\.4"), ({"layers": [2, 1]}, "increasing"),
                    ({"every": 0}, "at least 1"), ({"every": 2, "layers": [0]}, "not both")):
        with pytest.raises(UserError, match=msg):
            select_layers(5, **kw)


@pytest.mark.parametrize("tied", [True, False])
def test_all_layers_reproduce_the_teacher_exactly(tied):
    t = teacher(tied=tied)
    s = student_from_teacher(t, every=1)
    assert torch.equal(logits(s), logits(t))
    assert s.config.tie_word_embeddings == tied and s is not t


def test_layer_subset_has_fewer_layers_and_runs():
    t = teacher(layers=4)
    s = student_from_teacher(t)  # every=2: layers 0 and 2
    assert s.config.num_hidden_layers == 2
    assert torch.equal(s.model.layers[1].mlp.up_proj.weight, t.model.layers[2].mlp.up_proj.weight)
    assert logits(s).shape == (2, 24, 100)
    assert student_from_teacher(t, layers=[1, 3]).config.num_hidden_layers == 2


def test_identity_projection_equals_the_teacher():
    t = teacher(bias=True)
    s = student_from_teacher(t, every=1, projection=torch.eye(64))
    torch.testing.assert_close(logits(s), logits(t), atol=1e-5, rtol=1e-5)


def test_full_rank_rotation_is_an_invariance_of_an_untied_model():
    """SliceGPT's computational invariance: an orthogonal Q changes weights, not the function."""
    t = teacher(tied=False, bias=True)
    Q, _ = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(3)))
    s = student_from_teacher(t, every=1, projection=Q)
    assert not torch.allclose(s.model.embed_tokens.weight, t.model.embed_tokens.weight)
    torch.testing.assert_close(logits(s), logits(t), atol=1e-4, rtol=1e-4)


def test_pca_basis_is_orthonormal_and_spans_a_low_rank_embedding():
    t = teacher()
    with torch.no_grad():  # embedding rows in a 5-dim subspace: 5 PCA directions hold them all
        basis = torch.linalg.qr(torch.randn(64, 5))[0]
        t.model.embed_tokens.weight.copy_(torch.randn(100, 5) @ basis.T)
    P = pca_basis(t, 8)
    torch.testing.assert_close(P.T @ P, torch.eye(8), atol=1e-5, rtol=0)
    E = t.model.embed_tokens.weight
    torch.testing.assert_close(E @ P @ P.T, E, atol=1e-4, rtol=0)
    Pc = pca_basis(t, 8, calibration_ids=IDS)
    torch.testing.assert_close(Pc.T @ Pc, torch.eye(8), atol=1e-5, rtol=0)


def test_dead_heads_and_channels_are_the_ones_dropped():
    """Zero the output of KV group 0 and of half the MLP channels: dropping them is exact."""
    t = teacher(layers=2)
    with torch.no_grad():
        for layer in t.model.layers:
            layer.self_attn.o_proj.weight[:, :32] = 0  # query heads 0, 1 = KV group 0
            layer.mlp.down_proj.weight[:, ::2] = 0  # even channels write nothing
    s = student_from_teacher(t, every=1, num_attention_heads=2, num_key_value_heads=1,
                             intermediate_size=64)
    c = s.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size) == (2, 1, 64)
    k_student = s.model.layers[0].self_attn.k_proj.weight
    assert torch.equal(k_student, t.model.layers[0].self_attn.k_proj.weight[16:])  # KV head 1 kept
    torch.testing.assert_close(logits(s), logits(t), atol=1e-5, rtol=1e-5)


def test_narrow_student_shape_defaults_keep_the_teachers_ratios():
    s = student_from_teacher(teacher(), every=1, hidden_size=32)
    c = s.config
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.head_dim) == \
        (32, 2, 1, 64, 16)
    assert torch.isfinite(logits(s)).all()


def test_bad_student_shapes_are_user_errors():
    t = teacher()
    with pytest.raises(UserError, match=r"--hidden-size must be in 1\.\.64"):
        student_from_teacher(t, hidden_size=128)
    with pytest.raises(UserError, match="cannot keep 3 query heads"):
        student_from_teacher(t, num_attention_heads=3)
    with pytest.raises(UserError, match="intermediate-size"):
        student_from_teacher(t, intermediate_size=1000)
    t.config.model_type = "gpt2"
    with pytest.raises(UserError, match="supports llama"):
        student_from_teacher(t)


@pytest.fixture(scope="module")
def trained_teacher():
    """A 2-layer llama trained for 60 steps on arithmetic progressions mod 32 (~3 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = build_model(llama_config(64, 2, 4, 2, 128, head_dim=16, vocab_size=32), seed=0).train()
        opt = torch.optim.AdamW(t.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(0)
        for _ in range(60):
            x = progressions(g)
            loss = t(x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return t.eval()


def progressions(g, n=16, length=24, vocab=32):
    start, step = torch.randint(0, vocab, (n, 1), generator=g), torch.randint(1, 4, (n, 1), generator=g)
    return (start + step * torch.arange(length)) % vocab


@pytest.mark.parametrize("kw", [{"every": 2}, {"every": 1, "hidden_size": 32},
                                {"every": 1, "hidden_size": 32, "use_calibration": True}])
def test_students_of_a_trained_teacher_beat_random_init(trained_teacher, kw):
    x = progressions(torch.Generator().manual_seed(1), n=64)
    kw = dict(kw)
    if kw.pop("use_calibration", False):
        kw["calibration_ids"] = progressions(torch.Generator().manual_seed(2), n=8)
    with torch.no_grad():
        teacher_loss = trained_teacher(x, labels=x).loss.item()
        student = student_from_teacher(trained_teacher, **kw)
        student_loss = student(x, labels=x).loss.item()
        random_loss = build_model(student.config, seed=0)(x, labels=x).loss.item()
    assert teacher_loss < 1.5 < math.log(32) - 0.5 < random_loss  # the teacher learned something
    assert student_loss < random_loss - 1.0, (teacher_loss, student_loss, random_loss)


def test_check_shared_vocabulary(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    check_shared_vocabulary(tok, AutoTokenizer.from_pretrained(tiny_model))
    other = AutoTokenizer.from_pretrained(tiny_model)
    other.add_tokens(["llm4all"])
    with pytest.raises(UserError, match=r"differ in size \(44 vs 45 tokens\).*teacher's tokenizer"):
        check_shared_vocabulary(tok, other)

    class Swapped:
        def get_vocab(self):
            v = tok.get_vocab()
            v["the"], v["of"] = v["of"], v["the"]
            return v

    with pytest.raises(UserError, match="map 2 tokens differently"):
        check_shared_vocabulary(tok, Swapped())


def test_init_student_command_writes_a_loadable_directory(tiny_model, tmp_path, docs_jsonl):
    from llm4all.cli import main
    from llm4all.models.load import load

    out = tmp_path / "student"
    assert main(["models", "init-student", str(tiny_model), "--out", str(out), "--every", "1",
                 "--hidden-size", "16", "--calibration", str(docs_jsonl), "--calibration-tokens", "512"]) == 0
    meta = json.loads((out / "llm4all.json").read_text())["init_student"]
    assert meta["layers"] == [0, 1] and meta["basis"] == "calibration PCA"
    student, tok = load(out)
    assert student.config.hidden_size == 16 and tok.eos_token_id == 2
    assert main(["models", "init-student", str(tiny_model), "--out", str(tmp_path / "bad"),
                 "--layers", "0", "7"]) == 2
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_real_teacher_students_perplexity_on_demo_text(capsys):
    """SmolLM2-135M: every-other-layer and hidden-384 students vs the teacher and random init."""
    import itertools

    import numpy as np

    from llm4all.data.readers import read_documents
    from llm4all.evaluate.perplexity import perplexity
    from llm4all.models.load import load

    t, tok = load("smollm2-135m")
    docs = [d.text for d in itertools.islice(read_documents("data/demo/en/kjv.jsonl.zst"), 8)]
    tokens = np.array(tok(docs[0][:2000])["input_ids"])  # ~500 tokens of the KJV demo text
    cal = torch.tensor(tok(" ".join(docs[4:]))["input_ids"][:1024]).reshape(4, 256)  # other books
    rows = {"teacher": (sum(p.numel() for p in t.parameters()), perplexity(t, tokens, context=512)["ppl"])}
    for name, kw in (("every-2 (15 layers)", {"every": 2}),
                     ("hidden 384, embedding PCA", {"every": 1, "hidden_size": 384}),
                     ("hidden 384, calibration PCA",
                      {"every": 1, "hidden_size": 384, "calibration_ids": cal})):
        s = student_from_teacher(t, **kw)
        rows[name] = (sum(p.numel() for p in s.parameters()), perplexity(s, tokens, context=512)["ppl"])
        if "calibration" not in name:  # same shape as the embedding-PCA student
            r = build_model(s.config, seed=0)
            rows[name + ", random init"] = (rows[name][0], perplexity(r, tokens, context=512)["ppl"])
    with capsys.disabled():
        for name, (n, ppl) in rows.items():
            print(f"{name:<45} {n / 1e6:6.1f}M params  ppl {ppl:,.1f}")
    assert rows["teacher"][1] < 20
    assert all(math.isfinite(ppl) for _, ppl in rows.values())
    for name in ("every-2 (15 layers)", "hidden 384, embedding PCA"):
        assert 20_000 < rows[name + ", random init"][1] < 100_000  # ~ uniform over 49,152 tokens
    # Measured 2026-11-23 (docs/models.md): right after init every student here is *worse* than
    # random init (confidently wrong logits), so no "student < random" assertion is made.
