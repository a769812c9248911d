"""Transformer architecture as plain numbers: presets, HF ``config.json``, GGUF metadata.

Everything the planner needs about a decoder-only (llama-family) model: widths, depths,
heads, the MLP kind, and exact parameter counts derived from them. Presets are the published
``config.json`` values of each model (Hugging Face hub model cards), copied here as data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from llm4all.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Arch:
    """A llama-family decoder: the numbers that decide parameters, FLOPs and memory."""

    hidden: int  # d_model
    layers: int  # n_layer
    heads: int  # attention (query) heads
    kv_heads: int  # key/value heads (grouped-query attention; == heads for MHA)
    intermediate: int  # MLP hidden width
    vocab: int
    tied_embeddings: bool = False  # lm_head shares the input embedding matrix
    max_position: int = 2048
    mlp: str = "swiglu"  # "swiglu" (3 matrices: gate, up, down) or "gelu" (2 matrices)
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v
    head_dim: int = 0  # 0: hidden // heads

    def __post_init__(self):
        for f in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab"):
            if int(getattr(self, f)) <= 0:
                raise UserError(f"architecture: {f} must be a positive integer, got {getattr(self, f)!r}")
        if self.heads % self.kv_heads:
            raise UserError(f"architecture: heads ({self.heads}) must be a multiple of kv_heads "
                            f"({self.kv_heads})")
        if self.mlp not in ("swiglu", "gelu"):
            raise UserError(f"architecture: mlp must be 'swiglu' or 'gelu', got {self.mlp!r}")
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    def matrices(self) -> list[tuple[str, int, int, int]]:
        """Every weight matrix as (name, rows, cols, count): what LoRA/Adafactor act on."""
        h, hd, L = self.hidden, self.head_dim, self.layers
        mats = [
            ("q_proj", self.heads * hd, h, L), ("k_proj", self.kv_heads * hd, h, L),
            ("v_proj", self.kv_heads * hd, h, L), ("o_proj", h, self.heads * hd, L),
            ("up_proj", self.intermediate, h, L), ("down_proj", h, self.intermediate, L),
        ]
        if self.mlp == "swiglu":
            mats.append(("gate_proj", self.intermediate, h, L))
        mats.append(("embed_tokens", self.vocab, h, 1))
        if not self.tied_embeddings:
            mats.append(("lm_head", self.vocab, h, 1))
        return mats

    def vectors(self) -> int:
        """Parameters outside matrices: RMSNorm gains (2 per layer + final) and q/k/v biases."""
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        return self.layers * (2 * self.hidden + bias) + self.hidden

    def n_params(self) -> int:
        """Total parameters (Chinchilla counts these, embeddings included)."""
        return sum(r * c * n for _, r, c, n in self.matrices()) + self.vectors()

    def n_embedding(self) -> int:
        """Embedding (+ untied lm_head) parameters."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def n_non_embedding(self) -> int:
        """Non-embedding parameters (the N of Kaplan et al. 2020)."""
        return self.n_params() - self.n_embedding()

    def to_dict(self) -> dict:
        return asdict(self)


#: published config.json values (Hugging Face model cards of each model)
PRESETS: dict[str, Arch] = {
    # HuggingFaceTB/SmolLM2-135M
    "smollm2-135m": Arch(576, 30, 9, 3, 1536, 49152, tied_embeddings=True, max_position=8192),
    # HuggingFaceTB/SmolLM2-360M
    "smollm2-360m": Arch(960, 32, 15, 5, 2560, 49152, tied_embeddings=True, max_position=8192),
    # Qwen/Qwen2.5-0.5B
    "qwen2.5-0.5b": Arch(896, 24, 14, 2, 4864, 151936, tied_embeddings=True, max_position=32768,
                         qkv_bias=True),
    # meta-llama/Llama-3.2-1B
    "llama-3.2-1b": Arch(2048, 16, 32, 8, 8192, 128256, tied_embeddings=True, max_position=131072,
                         head_dim=64),
    # meta-llama/Llama-3.2-3B
    "llama-3.2-3b": Arch(3072, 28, 24, 8, 8192, 128256, tied_embeddings=True, max_position=131072,
                         head_dim=128),
    # meta-llama/Llama-2-7b-hf
    "llama-2-7b": Arch(4096, 32, 32, 32, 11008, 32000, max_position=4096),
    # meta-llama/Meta-Llama-3-8B
    "llama-3-8b": Arch(4096, 32, 32, 8, 14336, 128256, max_position=8192),
    # mistralai/Mistral-7B-v0.1
    "mistral-7b": Arch(4096, 32, 32, 8, 14336, 32000, max_position=32768),
}


def from_hf_config(config: dict, where: str = "config.json") -> Arch:
    """Read a Hugging Face llama-style ``config.json`` mapping."""
    try:
        heads = int(config["num_attention_heads"])
        return Arch(
            hidden=int(config["hidden_size"]), layers=int(config["num_hidden_layers"]), heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            intermediate=int(config["intermediate_size"]), vocab=int(config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_position=int(config.get("max_position_embeddings", 2048)),
            mlp="gelu" if "gelu" in str(config.get("hidden_act", "silu")) else "swiglu",
            qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
            head_dim=int(config.get("head_dim") or 0),
        )
    except KeyError as e:
        raise UserError(f"{where}: missing key {e.args[0]!r} (need hidden_size, num_hidden_layers, "
                        "num_attention_heads, intermediate_size, vocab_size)") from None


def from_gguf(path: Path) -> Arch:
    """Read the ``{arch}.*`` metadata keys of a GGUF file (llama.cpp's format)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"{path}: not a readable GGUF file ({e})") from None

    def value(key: str, default=None):
        field = reader.fields.get(key)
        if field is None:
            if default is None:
                raise UserError(f"{path}: GGUF metadata key {key!r} is missing")
            return default
        part = field.parts[field.data[0]]
        return bytes(part).decode() if field.types and field.types[0].name == "STRING" else part[0]

    arch = value("general.architecture")
    heads = int(value(f"{arch}.attention.head_count"))
    names = [t.name for t in reader.tensors]
    vocab = value(f"{arch}.vocab_size", 0) or len(reader.fields["tokenizer.ggml.tokens"].data)
    return Arch(
        hidden=int(value(f"{arch}.embedding_length")), layers=int(value(f"{arch}.block_count")),
        heads=heads, kv_heads=int(value(f"{arch}.attention.head_count_kv", heads)),
        intermediate=int(value(f"{arch}.feed_forward_length")), vocab=int(vocab),
        tied_embeddings="output.weight" not in names,
        max_position=int(value(f"{arch}.context_length", 2048)),
    )


def resolve_arch(model: str = "", **numbers: int) -> Arch:
    """A preset name, an HF directory / config.json, a .gguf file, or explicit numbers."""
    dims = ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab")
    bad = [f"--{k.replace('_', '-')} {v}" for k, v in numbers.items()
           if k in dims and isinstance(v, int | float) and not isinstance(v, bool) and v <= 0]
    if bad:
        raise UserError(f"{', '.join(bad)}: model dimensions must be positive")
    if model:
        path = Path(model)
        if model in PRESETS:
            arch = PRESETS[model]
        elif path.is_dir() or path.name == "config.json":
            cfg = path / "config.json" if path.is_dir() else path
            if not cfg.exists():
                raise UserError(f"{model}: no config.json in this directory")
            try:
                arch = from_hf_config(json.loads(cfg.read_text()), where=str(cfg))
            except json.JSONDecodeError as e:
                raise UserError(f"{cfg}: not valid JSON ({e})") from None
        elif path.suffix == ".gguf":
            if not path.exists():
                raise UserError(f"{model}: no such file")
            arch = from_gguf(path)
        else:
            raise UserError(f"--model {model!r} is not a preset, an HF directory or a .gguf file; "
                            f"presets: {did_you_mean(model, list(PRESETS))}")
        given = {k: v for k, v in numbers.items() if v is not None and not (isinstance(v, bool) and not v)}
        return Arch(**{**asdict(arch), **given}) if given else arch
    need = ("hidden", "layers", "heads", "intermediate", "vocab")
    missing = [k for k in need if numbers.get(k) is None]
    if missing:
        raise UserError("give --model (preset, HF dir or .gguf) or all of --hidden --layers --heads "
                        f"--intermediate --vocab; missing: {', '.join('--' + m for m in missing)}")
    valid = {f.name for f in fields(Arch)}
    kw = {k: v for k, v in numbers.items() if k in valid and v is not None}
    if kw.get("kv_heads") is None:
        kw["kv_heads"] = numbers["heads"]
    return Arch(**kw)
