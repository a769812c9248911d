"""eval perplexity / eval speed of a GGUF in llama.cpp: the same windows, what a user of the file gets."""

from __future__ import annotations

import json

import pytest

from llm4all.errors import UserError
from llm4all.evaluate.perplexity import main as perplexity
from llm4all.evaluate.speed import main as speed
from llm4all.export.gguf import export_gguf
from tinybpe import build_bpe_llama
from tinymodels import tiny_texts


@pytest.fixture(scope="module")
def model_and_shards(tmp_path_factory):
    from llm4all.data.tokenize import main as tokenize

    root = tmp_path_factory.mktemp("llamacpp-eval")
    model = build_bpe_llama(root / "m")
    docs = root / "docs.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(tiny_texts(80))]
    docs.write_text("\n".join(lines) + "\n")
    tokenize([docs], out=root / "shards", tokenizer=str(model), workers=1, val_fraction=0.3)
    gguf = export_gguf(model, root / "m-f32.gguf", type="f32")["out"]
    return model, root / "shards", gguf


def test_llama_cpp_perplexity_of_an_f32_export_equals_torch(model_and_shards, tmp_path):
    model, shards, gguf = model_and_shards
    torch_result = perplexity(str(model), shards, context=64, stride=64, max_tokens=2000)
    ours = perplexity(gguf, shards, context=64, stride=64, max_tokens=2000, out=tmp_path / "p")  # auto
    assert ours["runtime"] == "llama.cpp" and torch_result["runtime"] == "torch"
    assert ours["tokens"] == torch_result["tokens"]
    assert ours["ppl"] == pytest.approx(torch_result["ppl"], rel=0.01)  # llama.cpp's own kernels, f32 weights
    manifest = json.loads((tmp_path / "p" / "llm4all.json").read_text())
    assert manifest["metrics"]["runtime"] == "llama.cpp" and manifest["inputs"]["model"] == gguf


def test_llama_cpp_speed_reports_batch_one_latency_and_memory(model_and_shards, tmp_path):
    _, _, gguf = model_and_shards
    result = speed(gguf, prompt_lengths=[16], new_tokens=8, repeats=1, out=tmp_path / "s")
    r = result["dtypes"]["gguf"]
    assert result["runtime"] == "llama.cpp" and r["decode"][0]["batch"] == 1
    assert r["decode"][0]["latency_ms"]["p50"] > 0 and r["prefill"][0]["prompt_tokens"] == 16
    assert r["memory"]["peak_rss_mib"] >= r["memory"]["rss_after_load_mib"] > 0
    headline = json.loads((tmp_path / "s" / "llm4all.json").read_text())["metrics"]
    assert headline["runtime"] == "llama.cpp"
    assert headline["decode_ms_per_token"] == r["decode"][0]["latency_ms"]["p50"]


def test_llama_cpp_engine_needs_a_gguf_and_token_shards(model_and_shards, tmp_path):
    model, shards, gguf = model_and_shards
    with pytest.raises(UserError, match="--engine llama.cpp runs a .gguf file"):
        perplexity(str(model), shards, engine="llama.cpp")
    docs = tmp_path / "d.jsonl"
    docs.write_text('{"id": "a", "text": "hello"}\n')
    with pytest.raises(UserError, match="scores token shards"):
        perplexity(gguf, docs)
